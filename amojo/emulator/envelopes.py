"""The answers' shapes: amojo's error envelope, REST's problem+json and HAL, and the admin surface's errors."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from starlette.responses import JSONResponse, Response

from .inputs import ApiError

Render = Callable[[ApiError], Response]  # an ApiError in one API's envelope


def amojo_error(status: int, error_type: str, description: str, code: int | None = None) -> JSONResponse:
    """The amojo envelope (§5.1), used for every amojo error (Q7)."""
    body = {"status": 0, "error_code": code or status, "error_type": error_type, "error_description": description}
    return JSONResponse(body, status_code=status)


def rest_problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"title": title, "type": f"https://httpstatus.es/{status}", "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def status_title(status: int) -> str:
    """The reason phrase a problem+json title carries for `status`."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def hal(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type="application/hal+json")


def amojo_render(exc: ApiError) -> Response:
    return amojo_error(exc.status, exc.error_type or "INVALID_REQUEST", exc.description, exc.code)


def rest_render(exc: ApiError) -> Response:
    return rest_problem(exc.status, status_title(exc.status), exc.description, **exc.extra)


def admin_render(exc: ApiError, label: str = "invalid request") -> Response:
    """The admin surface's own envelope: `{"error": <what was refused>, "detail": <why>}`."""
    return JSONResponse({"error": label, "detail": exc.description}, status_code=exc.status)
