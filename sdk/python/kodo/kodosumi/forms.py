"""Kodosumi's form elements (`kodosumi.service.inputs.forms`), as kodo's
stand-in: each element's `to_dict()` is the schema a client renders, and
its `parse_value()` turns a submitted value into the flow's input (a
checkbox is true only for "on", as in Kodosumi)."""


class Element:
    """A form element: `type` and the fields `to_dict()` lists."""

    type = None
    fields = ("text",)

    def __init__(self, text=None):
        self.text = text

    def to_dict(self):
        return {"type": self.type, **{f: getattr(self, f, None) for f in self.fields}}

    def render(self):
        return ""

    def parse_value(self, value):
        return value


class HTML(Element):
    type = "html"


class Break(HTML):
    type = "break"

    def __init__(self, *args, **kwargs):
        super().__init__('<div class="space"></div>')


class HR(HTML):
    type = "hr"

    def __init__(self, *args, **kwargs):
        super().__init__('<hr class="medium"/>')


class Markdown(Element):
    type = "markdown"

    def __init__(self, text=""):
        super().__init__(text or "")


class FormElement(Element):
    """An element with a `name`: its value is part of the inputs."""

    fields = ("name", "label", "value", "required")

    def __init__(self, name=None, label=None, value=None, required=False, text=None,
                 error=None, **extra):
        super().__init__(text)
        self.name = name
        self.label = label
        self.value = value
        self.required = required
        self.error = error
        for key, val in extra.items():
            setattr(self, key, val)


class Errors(FormElement):
    type = "errors"
    fields = ()

    def __init__(self, error=None):
        super().__init__("_global_", error=error)


def _input(type_name, *extra_fields):
    """An input element class of `type_name` with optional `extra_fields`."""

    class Input(FormElement):
        type = type_name
        fields = FormElement.fields + extra_fields

        def __init__(self, name, label=None, value=None, required=False, *args, **kwargs):
            # Kodosumi's order: name, label, value, required, the extras, error.
            named = dict(zip(extra_fields + ("error",), args))
            for key, val in kwargs.items():
                if key not in extra_fields + ("error",) or key in named:
                    raise TypeError(f"{type(self).__name__}: unexpected argument {key}")
                named[key] = val
            error = named.pop("error", None)
            super().__init__(name, label, value, required, error=error,
                             **{f: named.get(f) for f in extra_fields})

    return Input


class InputText(_input("text", "placeholder", "size", "pattern")):
    pass


class InputNumber(_input("number", "placeholder", "size", "pattern", "min_value",
                         "max_value", "step")):
    pass


class InputPassword(_input("password", "placeholder", "size", "pattern", "min_length",
                           "max_length")):
    pass


class InputDate(_input("date", "placeholder", "min_date", "max_date")):
    pass


class InputTime(_input("time", "placeholder", "min_time", "max_time", "step")):
    pass


class InputDateTime(_input("datetime-local", "placeholder", "min_datetime",
                           "max_datetime", "step")):
    pass


class InputArea(_input("textarea", "placeholder", "rows", "cols", "max_length")):
    pass


class InputFiles(_input("file", "multiple", "directory")):
    pass


class Checkbox(FormElement):
    type = "boolean"
    fields = ("name", "label", "value", "option")

    def __init__(self, name, option=None, label=None, value=False, error=None):
        super().__init__(name, label, value, False, text=option or "on", error=error)

    @property
    def option(self):
        return self.text

    def parse_value(self, value):
        return value == "on"


class InputOption(FormElement):
    type = "option"
    fields = ("name", "label", "value")

    def __init__(self, name=None, label=None, value=False, error=None):
        super().__init__(name, label, value, error=error)


class Select(FormElement):
    type = "select"
    fields = ("name", "label", "value", "option", "error")

    def __init__(self, name, option, label=None, value=None, error=None):
        super().__init__(name, label, value, False, error=error)
        self.options = []
        for opt in option:
            if not isinstance(opt, InputOption):
                opt = InputOption(**{k: v for k, v in opt.items() if k != "type"})
            opt.value = bool(value) and opt.name == value
            self.options.append(opt)

    @property
    def option(self):
        return [opt.to_dict() for opt in self.options]

    def parse_value(self, value):
        for opt in self.options:
            opt.value = opt.name == value
        return value


class ActionElement(FormElement):
    fields = ("text",)

    def __init__(self, text, error=None):
        super().__init__(text=text, error=error)


class Submit(ActionElement):
    type = "submit"


class Cancel(ActionElement):
    type = "cancel"


class Action(FormElement):
    type = "action"
    fields = ("name", "value", "text")

    def __init__(self, name=None, value=None, required=False, text=None, error=None):
        super().__init__(name, None, value, False, text=text, error=error)


class Model:
    """A form: its elements in order."""

    def __init__(self, *children):
        self.children = children

    def get_model(self):
        return [child.to_dict() for child in self.children]

    def render(self):
        return "\n".join(child.render() for child in self.children)

    def parse(self, submitted, only_fields=False):
        """The inputs a submission gives, as Kodosumi's ServeAPI makes them:
        each named element's value parsed (a missing checkbox is false, any
        other missing field None); with the rest of the submitted object
        unless `only_fields` (a launch keeps only the form's fields, a
        lock's answer all of it)."""
        submitted = submitted or {}
        data = {} if only_fields else dict(submitted)
        for child in self.children:
            name = getattr(child, "name", None)
            if name is None or isinstance(child, Errors):
                continue
            if name in submitted:
                value = submitted[name]
            elif isinstance(child, Checkbox):
                value = False
            else:
                value = None
            data[name] = child.parse_value(value)
        return data

    def set_data(self, data):
        for child in self.children:
            name = getattr(child, "name", None)
            if isinstance(child, Checkbox):
                child.value = child.parse_value((data or {}).get(name, "off"))
            elif name is not None and data and name in data:
                child.value = child.parse_value(data[name])


__all__ = [
    "Model", "Break", "HR", "InputText", "InputNumber", "InputPassword", "Checkbox",
    "InputOption", "Select", "Action", "Submit", "Cancel", "Markdown", "HTML", "Errors",
    "InputArea", "InputDate", "InputTime", "InputDateTime", "InputFiles",
]
