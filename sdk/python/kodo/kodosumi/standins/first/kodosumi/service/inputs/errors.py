"""`kodosumi.service.inputs.errors`, as kodo's stand-in."""
from kodo.kodosumi.errors import InputsError  # noqa: F401
