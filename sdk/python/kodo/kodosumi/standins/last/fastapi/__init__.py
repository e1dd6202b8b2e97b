"""kodo's stand-in for `fastapi` (when FastAPI is not installed): the names
a Kodosumi flow module imports at module level."""
from kodo.kodosumi.app import Request, ServeAPI as FastAPI  # noqa: F401

__kodo_standin__ = True


class HTTPException(Exception):
    def __init__(self, status_code, detail=None, headers=None):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
