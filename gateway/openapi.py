"""The OpenAPI document of the local JSON API, served at ``GET /api/openapi.json``."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (``gateway/data/openapi.json``), parsed once."""
    text = resources.files("gateway").joinpath("data/openapi.json").read_text(encoding="utf-8")
    parsed: dict[str, Any] = json.loads(text)
    return parsed


async def openapi(request: web.Request) -> web.Response:
    """The API's OpenAPI document."""
    return web.json_response(document())


def add_routes(app: web.Application) -> None:
    """``GET /api/openapi.json``."""
    app.router.add_get("/api/openapi.json", openapi)
