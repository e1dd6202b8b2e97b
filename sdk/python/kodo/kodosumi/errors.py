"""Kodosumi's `InputsError` and `KodosumiError`, as kodo's stand-in."""


class KodosumiError(Exception):
    """An error a flow raises on purpose."""


class InputsError(KodosumiError):
    """Input that a form rejects: messages per field, and `_global_` ones
    (`flash()`, and the exception's own arguments when raised). False while
    it holds no message, so `if err: raise err` works."""

    def __init__(self, *args, **field_errors):
        super().__init__(*args)
        self.errors = {}
        for field, message in field_errors.items():
            self.add(**{field: message})

    def add(self, **field_errors):
        for field, message in field_errors.items():
            messages = message if isinstance(message, list) else [message]
            self.errors.setdefault(field, []).extend(str(m) for m in messages)

    def flash(self, *messages):
        self.errors.setdefault("_global_", []).extend(str(m) for m in messages)

    def has_errors(self):
        return bool(self.errors)

    def __bool__(self):
        return self.has_errors()

    def all_errors(self):
        """The errors, the exception's arguments under `_global_`."""
        errors = {k: list(v) for k, v in self.errors.items()}
        if self.args:
            errors.setdefault("_global_", []).extend(str(a) for a in self.args)
        return errors
