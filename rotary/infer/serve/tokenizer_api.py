"""vLLM's tokenizer endpoints beside ``/v1``: ``GET /tokenizer_info``, ``POST /tokenize``,
``POST /detokenize``, in the shapes lm-evaluation-harness's remote tokenizer reads."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request

from rotary.infer.serve import protocol as p
from rotary.infer.serve.body import read_json


def add_tokenizer_routes(app: FastAPI, server: Any, dependencies: list) -> None:
    """Register the three endpoints for ``server`` (the app's ``_Server``), behind ``dependencies``."""
    tokenizer = server.tokenizer

    def token(token_id: int | None) -> str | None:
        return None if token_id is None else tokenizer.id_to_token(token_id)

    async def tokenizer_info() -> dict[str, Any]:
        return {"tokenizer_class": f"rotary-{tokenizer.kind}", "eos_token": token(tokenizer.eos_id),
                "bos_token": None, "pad_token": token(tokenizer.pad_id), "unk_token": token(tokenizer.unk_id),
                "model_max_length": server.engine.max_len, "vocab_size": server.vocab_size,
                "chat_template": server.tokenizer.chat_template}

    async def tokenize(request: Request) -> dict[str, Any]:
        """The ids a completions prompt of this text gets (a causal prompt carries no special
        tokens, so ``add_special_tokens`` changes nothing; special-token text maps to its id)."""
        body = p.parse(p.TokenizeBody, await read_json(request, server.max_body))
        if body.model is not None:
            server.check_model(body.model)
        ids = tokenizer.encode(body.prompt)
        return {"count": len(ids), "max_model_len": server.engine.max_len, "tokens": ids}

    async def detokenize(request: Request) -> dict[str, Any]:
        body = p.parse(p.DetokenizeBody, await read_json(request, server.max_body))
        if body.model is not None:
            server.check_model(body.model)
        if any(not 0 <= t < server.vocab_size for t in body.tokens):
            raise p.APIError(400, f"token ids must be in [0, {server.vocab_size})", param="tokens")
        return {"prompt": tokenizer.decode(body.tokens)}

    app.get("/tokenizer_info", dependencies=dependencies)(tokenizer_info)
    app.post("/tokenize", dependencies=dependencies)(tokenize)
    app.post("/detokenize", dependencies=dependencies)(detokenize)
