"""Errors as HTTP answers: `{"error": {"type", "message"}}`, one status code per error type."""
from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..core.errors import (
    ConfigError,
    Gone,
    InputTooLarge,
    InvalidInput,
    ModelNotFound,
    OverCeiling,
    OverQuota,
    RayDemucsError,
    ServiceUnavailable,
    StorageUnavailable,
    TaskConflict,
    TaskNotFound,
    Unauthenticated,
)


class CrossOrigin(RayDemucsError):
    """Raised when a browser sends a request from another site's page (HTTP 403)."""


class MisdirectedRequest(RayDemucsError):
    """Raised when a request names a `Host` this service does not answer for (HTTP 421)."""


STATUS = [  # most specific first
    (InputTooLarge, 413), (TaskConflict, 409), (InvalidInput, 422), (ConfigError, 422),
    (ModelNotFound, 422), (TaskNotFound, 404), (Unauthenticated, 401), (OverQuota, 429), (OverCeiling, 403),
    (ServiceUnavailable, 503), (StorageUnavailable, 503), (Gone, 410),
    (CrossOrigin, 403), (MisdirectedRequest, 421),
]
RETRY_AFTER_S = {429: 10, 503: 5}


class RangeNotSatisfiable(InvalidInput):
    """Raised when a `Range` header asks for bytes past a stem's end (HTTP 416)."""

    def __init__(self, message: str, size: int = 0):
        super().__init__(message)
        self.size = size


def status_of(error: RayDemucsError) -> int:
    if isinstance(error, RangeNotSatisfiable):
        return 416
    return next((code for kind, code in STATUS if isinstance(error, kind)), 500)


def error_response(error: RayDemucsError) -> JSONResponse:
    status = status_of(error)
    headers = {}
    if status in RETRY_AFTER_S:
        headers["Retry-After"] = str(RETRY_AFTER_S[status])
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{error.size}"
    body = {"error": {"type": type(error).__name__, "message": " ".join(str(error).split())}}
    return JSONResponse(body, status_code=status, headers=headers)


def install(app) -> None:
    """Answer our errors, FastAPI's validation errors and Starlette's own (404, 405) in one shape."""
    @app.exception_handler(RayDemucsError)
    async def ours(_request: Request, error: RayDemucsError):
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return error_response(InvalidInput(f"{where or 'request'}: {first.get('msg', 'invalid')}"))

    @app.exception_handler(HTTPException)
    async def http(_request: Request, error: HTTPException):
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(error.status_code, "HTTPError")
        return JSONResponse({"error": {"type": kind, "message": str(error.detail)}},
                            status_code=error.status_code, headers=error.headers)
