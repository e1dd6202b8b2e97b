"""kodo's stand-in for `ray.serve`: the deployment decorators Kodosumi apps
apply at module level do nothing (kodo calls the app's routes itself)."""

__kodo_standin__ = True


class _Deployment:
    def __init__(self, cls):
        self._cls = cls

    def bind(self, *args, **kwargs):
        return self

    def options(self, **_options):
        return self


def deployment(*args, **_options):
    """`@serve.deployment` or `@serve.deployment(...)`."""
    if len(args) == 1 and callable(args[0]):
        return _Deployment(args[0])
    return lambda cls: _Deployment(cls)


def ingress(_app):
    """`@serve.ingress(app)`."""
    return lambda cls: cls


def run(*_args, **_kwargs):
    return None
