"""The API's one error body, and the handlers that give it to every 4xx and 5xx.

Every error answers `{"detail": "<a sentence>", "errors": [...]}` (`errors` lists the bad
parameters of a 422, else is empty). Values a client sent are quoted by a short prefix only.
"""

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobstream.events import quote

log = logging.getLogger("jobstream.api")

RETRY_AFTER_S = 5


class FieldError(BaseModel):
    model_config = ConfigDict(frozen=True)

    location: str
    message: str


class ErrorBody(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(frozen=True)

    detail: str
    errors: list[FieldError] = []


def error_response(
    status_code: int,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(detail=detail, errors=errors or [])
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


def bad_query(name: str, value: object, message: str) -> RequestValidationError:
    """A 422 for query parameter `name`, raised where a value passes its type but not a rule."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", name), "msg": message, "input": value}]
    )


def _field_error(error: Mapping[str, Any]) -> FieldError:
    loc = [str(part) for part in error.get("loc", ())]
    where = {"query": "query parameter", "path": "path parameter"}.get(loc[0] if loc else "", "")
    name = ".".join(loc[1:]) if where else ".".join(loc)
    message = str(error.get("msg", "invalid"))
    if "input" in error:
        message += f" (got {quote(error['input'])})"
    return FieldError(location=f"{where} {name!r}".strip(), message=message)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [_field_error(error) for error in exc.errors()]
    detail = "; ".join(f"{e.location}: {e.message}" for e in errors) or "invalid request"
    return error_response(422, detail, errors)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail), headers=exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path[:200], exc_info=exc)
    return error_response(500, "internal error; the API log has the details")


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
