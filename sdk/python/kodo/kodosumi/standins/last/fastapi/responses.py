"""`fastapi.responses`, as kodo's stand-in."""


class _Response:
    def __init__(self, content=None, status_code=200, headers=None, **_kwargs):
        self.content = content
        self.status_code = status_code
        self.headers = headers or {}


class JSONResponse(_Response):
    pass


class HTMLResponse(_Response):
    pass


class PlainTextResponse(_Response):
    pass


class RedirectResponse(_Response):
    pass
