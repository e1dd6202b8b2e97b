"""`kodosumi.service.inputs.forms`, as kodo's stand-in."""
from kodo.kodosumi.forms import *  # noqa: F401,F403
from kodo.kodosumi.forms import __all__  # noqa: F401
