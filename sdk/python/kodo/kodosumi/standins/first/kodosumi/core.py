"""`kodosumi.core`, as kodo's stand-in."""
from kodo.kodosumi import response
from kodo.kodosumi import forms
from kodo.kodosumi.app import Launch, ServeAPI
from kodo.kodosumi.errors import InputsError, KodosumiError
from kodo.kodosumi.tracer import Tracer


class Templates:
    """Jinja templates are not served under kodo: constructing them works,
    rendering says so."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def TemplateResponse(self, *args, **kwargs):
        raise NotImplementedError("kodo does not serve a Kodosumi app's HTML templates")


__all__ = ["ServeAPI", "Launch", "Tracer", "InputsError", "KodosumiError", "forms",
           "response", "Templates"]
