"""Kodosumi's `ServeAPI` and `Launch`, as kodo's stand-in: enough of a
FastAPI app for a Kodosumi module to import and register its routes, which
kodo then calls itself (no server, no port).

An `@app.enter(path, model=...)` route is a kodo flow: its model is the
flow's form, its handler turns a submission into a `Launch` (or raises
`InputsError`), and `@app.lock(name)` / `@app.lease(name)` give the form
and the check of a lock's answer."""
import asyncio
import functools
import inspect

from .errors import InputsError

KODOSUMI_LAUNCH = "kodosumi_launch"


class Request:
    """What a handler gets as `request` (the submission is already parsed)."""

    def __init__(self, app=None, body=None, user="_annon_"):
        self.app = app
        self._body = body or {}
        self.headers = {}
        self.cookies = {}
        self.state = type("State", (), {"user": user, "prefix": ""})()

    async def json(self):
        return self._body


class Launched:
    """What `Launch()` returns: the entry point and inputs to run."""

    def __init__(self, entry_point, inputs, summary=None, description=None):
        self.entry_point = entry_point
        self.inputs = inputs
        self.summary = summary
        self.description = description
        self.headers = {KODOSUMI_LAUNCH: "pending"}


def Launch(request, entry_point, inputs=None, reference=None, summary=None, description=None):
    """Decides what runs: `entry_point` ("pkg.mod:fn", "pkg.mod.fn" or a
    function) with `inputs`."""
    return Launched(entry_point, inputs, summary, description)


class Entry:
    """One `@app.enter` route: its form, handler and metadata."""

    def __init__(self, path, model, handler, meta):
        self.path = path
        self.model = model
        self.handler = handler
        self.meta = meta

    async def submit(self, submitted, user="_annon_", app=None):
        """The `Launched` a submission gives; raises InputsError."""
        if not isinstance(submitted, dict):
            raise InputsError("expected an object of the form's fields")
        inputs = self.model.parse(submitted, only_fields=True)
        result = await call_bound(self.handler, inputs=inputs,
                             request=Request(app, submitted, user))
        if not isinstance(result, Launched):
            raise TypeError("a kodosumi endpoint must return Launch(...) or raise InputsError")
        return result


async def call_bound(fn, in_thread=False, **available):
    """Calls `fn` with the arguments it names among `available` (as
    Kodosumi binds them, by name), awaited when async; a plain function
    runs in a thread `in_thread`, else inline."""
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in available.items() if k in params}
    if in_thread and not inspect.iscoroutinefunction(fn):
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, functools.partial(fn, **kwargs))
    else:
        result = fn(**kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


class ServeAPI:
    """Routes by method and path, `@app.enter` forms, lock and lease handlers."""

    def __init__(self, *args, **kwargs):
        self.routes = {}
        self.entries = {}
        self.locks = {}
        self.leases = {}
        self.state = type("State", (), {})()

    def _route(self, method, path, **_kwargs):
        def register(fn):
            self.routes[(method, path)] = fn
            fn._kodosumi_ = True
            return fn
        return register

    def get(self, path, *args, **kwargs):
        return self._route("get", path, **kwargs)

    def post(self, path, *args, **kwargs):
        return self._route("post", path, **kwargs)

    def put(self, path, *args, **kwargs):
        return self._route("put", path, **kwargs)

    def delete(self, path, *args, **kwargs):
        return self._route("delete", path, **kwargs)

    def patch(self, path, *args, **kwargs):
        return self._route("patch", path, **kwargs)

    def options(self, path, *args, **kwargs):
        return self._route("options", path, **kwargs)

    def head(self, path, *args, **kwargs):
        return self._route("head", path, **kwargs)

    def enter(self, path, model, *args, **meta):
        """`@app.enter(path, model=Model(...), summary=..., ...)`."""
        def register(fn):
            self.entries[path] = Entry(path, model, fn, meta)
            fn._kodosumi_ = True
            return fn
        return register

    def lock(self, name, **_kwargs):
        def register(fn):
            self.locks[name] = fn
            return fn
        return register

    def lease(self, name, **_kwargs):
        def register(fn):
            self.leases[name] = fn
            return fn
        return register

    def middleware(self, *_args, **_kwargs):
        return lambda fn: fn

    def exception_handler(self, *_args, **_kwargs):
        return lambda fn: fn

    def on_event(self, *_args, **_kwargs):
        return lambda fn: fn

    def add_api_route(self, path, endpoint, methods=("GET",), **_kwargs):
        for method in methods:
            self.routes[(method.lower(), path)] = endpoint

    def include_router(self, *_args, **_kwargs):
        return None

    def mount(self, *_args, **_kwargs):
        return None

    def entry(self, path):
        """The `@app.enter` route at `path` (KeyError names those there are)."""
        try:
            return self.entries[path]
        except KeyError:
            there = ", ".join(sorted(self.entries)) or "none"
            raise KeyError(f"no @app.enter route at {path!r} (routes: {there})") from None

    async def lock_form(self, name, data):
        """The form of lock `name` (None: no `@app.lock` handler)."""
        handler = self.locks.get(name)
        if handler is None:
            return None
        return await call_bound(handler, data=data, request=Request(self))

    async def lease_answer(self, name, data, submitted):
        """The result of an answer to lock `name`: parsed by its form,
        checked by its `@app.lease` handler (raises InputsError)."""
        form = await self.lock_form(name, data)
        if form is not None and not isinstance(submitted, dict):
            raise InputsError("expected an object of the form's fields")
        inputs = form.parse(submitted) if form is not None else submitted
        handler = self.leases.get(name)
        if handler is None:
            return inputs
        return await call_bound(handler, inputs=inputs, data=data,
                                request=Request(self, submitted))


__all__ = ["ServeAPI", "Launch", "Launched", "Request", "InputsError"]
