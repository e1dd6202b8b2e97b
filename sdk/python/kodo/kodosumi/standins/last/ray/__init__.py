"""kodo's stand-in for `ray` (when Ray is not installed): Kodosumi apps
import it at module level. `remote` functions run in-process; `get` and
`wait` take their results."""
import functools
import inspect

__kodo_standin__ = True


class ObjectRef:
    """A finished call's result."""

    def __init__(self, value):
        self._value = value


class _Remote:
    def __init__(self, fn):
        self._fn = fn
        functools.update_wrapper(self, fn)

    def remote(self, *args, **kwargs):
        value = self._fn(*args, **kwargs)
        if inspect.isclass(self._fn):
            return _Actor(value)
        return ObjectRef(value)

    def options(self, **_options):
        return self

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)


class _Actor:
    def __init__(self, instance):
        self._instance = instance

    def __getattr__(self, name):
        return _Remote(getattr(self._instance, name))


def remote(*args, **_options):
    """`@ray.remote` or `@ray.remote(num_cpus=...)`: runs in-process."""
    if len(args) == 1 and callable(args[0]):
        return _Remote(args[0])
    return lambda fn: _Remote(fn)


def _value(ref):
    value = ref._value if isinstance(ref, ObjectRef) else ref
    if inspect.isawaitable(value):
        raise TypeError("ray.get of an async remote function: await it instead")
    return value


def get(refs, timeout=None):
    """The results of finished calls."""
    if isinstance(refs, list):
        return [_value(r) for r in refs]
    return _value(refs)


def wait(refs, num_returns=1, timeout=None):
    """All calls are finished: (ready, not ready)."""
    return list(refs), []


def put(value):
    return ObjectRef(value)


def init(*_args, **_kwargs):
    return None


def is_initialized():
    return True
