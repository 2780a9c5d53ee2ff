"""``rotary serve``: an HTTP server with the OpenAI API's shape over the decode engine.

Needs the ``serve`` extra (FastAPI and uvicorn), imported only here: ``import rotary`` and the
other verbs never need it. ``create_app`` is loaded on first use for the same reason.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from rotary.infer.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'rotary.infer.serve' has no attribute {name!r}")
