"""`kodosumi.service`, as kodo's stand-in (its inputs only)."""
