"""`kodosumi.service.inputs`, as kodo's stand-in."""
