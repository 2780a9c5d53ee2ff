"""A request's JSON body, read within a size limit (413 past it, with or without a Content-Length)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from rotary.infer.serve import protocol as p

MAX_BODY = 1 << 20  # 1 MiB: far more than any prompt that fits a context, far less than a memory problem


async def read_json(request: Request, max_body: int = MAX_BODY) -> Any:
    """The body as JSON; 413 past ``max_body`` bytes, also when no Content-Length says so."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > max_body:
        raise _too_large(max_body)
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > max_body:
            raise _too_large(max_body)
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise p.APIError(400, "the request body is not valid JSON") from None


def _too_large(limit: int) -> p.APIError:
    return p.APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
