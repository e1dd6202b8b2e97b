"""Kodosumi's `InputsError` and `KodosumiError`, as kodo's stand-in."""


class InputsError(Exception):
    """Input that a form rejects: messages per field, and `_global_` ones
    (the exception's own arguments)."""

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
        return bool(self.errors) or bool(self.args)

    def all_errors(self):
        """The errors, the exception's arguments under `_global_`."""
        errors = {k: list(v) for k, v in self.errors.items()}
        if self.args:
            errors.setdefault("_global_", []).extend(str(a) for a in self.args)
        return errors


class KodosumiError(Exception):
    """An error a flow raises on purpose."""
