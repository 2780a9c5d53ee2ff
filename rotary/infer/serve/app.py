"""The HTTP side of ``rotary serve``: a FastAPI app with the OpenAI API's endpoints.

Handlers run in the event loop and never touch the engine: they validate, tokenize, queue rows
on the :class:`~rotary.infer.serve.scheduler.Scheduler` and turn its events into OpenAI's JSON or
server-sent events. A client that goes away (mid-stream or while waiting for a whole answer)
cancels its rows, which frees their slots at the scheduler's next turn.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from rotary.errors import RotaryError
from rotary.infer.engine import Engine, Event
from rotary.infer.scoring import prompt_logprobs
from rotary.infer.serve import protocol as p
from rotary.infer.serve.body import MAX_BODY, read_json
from rotary.infer.serve.scheduler import EngineFailed, QueueFull, Scheduler, Ticket
from rotary.infer.serve.tokenizer_api import add_tokenizer_routes

log = logging.getLogger("rotary.infer.serve")

def default_model_name(path: Path) -> str:
    """A run's directory name, also when ``path`` is its ``best/`` or ``checkpoints/step-N/``."""
    path = Path(path)
    if path.name.startswith("step-") and path.parent.name == "checkpoints":
        return path.parent.parent.name
    return path.parent.name if path.name in ("best", "latest") else path.name


def create_app(pre: Any, *, slots: int = 16, max_queue: int = 64, api_key: str | None = None,
               model_name: str | None = None, compile: bool = False, max_len: int | None = None,
               max_body: int = MAX_BODY) -> FastAPI:
    """The server of the causal LM ``pre`` (a :class:`~rotary.infer.pretrained.Pretrained`): ``slots``
    rows decode together, at most ``max_queue`` rows wait for a slot (then 503), each row holds
    ``max_len`` positions (default: the model's ``max_seq_len``). With ``api_key`` every ``/v1/``
    request needs ``Authorization: Bearer <api_key>``; ``/health`` and ``/metrics`` stay open, as
    in vLLM, so that load balancers and scrapers need no secret."""
    engine = Engine(pre.model, slots=slots, max_len=pre.model.config.max_seq_len if max_len is None else max_len,
                    tokenizer=pre.tokenizer, compile=compile)
    server = _Server(pre, engine, Scheduler(engine, max_queue=max_queue, warmup=compile),
                     model_name or default_model_name(pre.path), max_body)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.scheduler.start()
        yield
        server.scheduler.stop()

    async def authorize(request: Request) -> None:
        # HTTP auth schemes are case-insensitive (RFC 9110 11.1): "bearer", "Bearer", "BEARER".
        scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise p.APIError(401, "missing or incorrect API key: send the header 'Authorization: Bearer <key>'",
                             code="invalid_api_key")

    app = FastAPI(title="rotary", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    guarded = [Depends(authorize)] if api_key else []
    app.state.server = server
    app.state.scheduler = server.scheduler
    app.state.engine = engine

    @app.exception_handler(p.APIError)
    async def api_error(request: Request, err: p.APIError) -> JSONResponse:
        headers = {"Retry-After": "1"} if err.status == 503 else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(p.APIError(err.status_code, str(err.detail)).body(), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def bug(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error")
        body = p.APIError(500, f"internal server error: {type(err).__name__}", type="server_error").body()
        return JSONResponse(body, status_code=500)

    app.get("/health")(server.health)
    app.get("/metrics")(server.metrics)
    add_tokenizer_routes(app, server, guarded)
    app.get("/v1/models", dependencies=guarded)(server.models)
    app.get("/v1/models/{model_id}", dependencies=guarded)(server.model)
    app.post("/v1/completions", dependencies=guarded)(server.completions)
    app.post("/v1/chat/completions", dependencies=guarded)(server.chat)
    return app


class _Server:
    def __init__(self, pre: Any, engine: Engine, scheduler: Scheduler, name: str, max_body: int) -> None:
        self.tokenizer = pre.tokenizer
        self.lm = pre.model  # not "model": that is the /v1/models/{id} handler
        self.vocab_size = pre.model.config.vocab_size
        self.engine = engine
        self.scheduler = scheduler
        self.name = name
        self.max_body = max_body
        self.created = p.now()
        # A run trained on conversations answers in its own template and stops at its end of turn;
        # any other gets the plain "role: content" prompt (said once, at start).
        self.template = self.tokenizer.chat_template
        self.stop_ids = (self.tokenizer.end_of_turn_id,) if self.template is not None else ()
        if self.template is None:
            log.warning("this run has no chat template: chat completions use a plain 'role: content' prompt "
                        "(fine-tune with task sft for a model that chats)")

    # -- small endpoints ----------------------------------------------------------------------
    async def health(self) -> JSONResponse:
        ok = self.scheduler.alive
        return JSONResponse({"status": "ok" if ok else "engine thread stopped"}, status_code=200 if ok else 503)

    async def metrics(self) -> dict[str, Any]:
        return self.scheduler.metrics()

    def _card(self) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "rotary",
                "max_model_len": self.engine.max_len}

    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._card()]}

    async def model(self, model_id: str) -> dict[str, Any]:
        self.check_model(model_id)
        return self._card()

    def check_model(self, name: str) -> None:
        if name != self.name:
            raise p.APIError(404, f"the model '{name}' does not exist: this server serves '{self.name}'",
                             param="model", code="model_not_found")

    # -- generation ---------------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        body = p.parse(p.CompletionBody, await read_json(request, self.max_body))
        self.check_model(body.model)
        p.check_completion(body)
        prompts = self._encode_prompts(body.prompt)
        logprobs = body.logprobs is not None
        echoes = await self._echoes(body, prompts) if body.echo else None
        if body.echo and body.max_tokens == 0:  # scoring only: the prompts and their logprobs, no engine row
            choices = [p.Choice(i, len(prompts[i // body.n]), echoes[i // body.n])
                       for i in range(len(prompts) * body.n)]
            for c in choices:
                c.finish_reason = "length"
            return JSONResponse(p.completion_response(p.new_id("cmpl"), self.name, choices,
                                                      sum(map(len, prompts)), logprobs))
        rows = p.build_rows(prompts, body, max_tokens=body.max_tokens, max_len=self.engine.max_len,
                            eos_id=self.tokenizer.eos_id, logprobs=logprobs)
        return await self._answer("completion", request, body, prompts, rows, logprobs, echoes)

    async def _echoes(self, body: Any, prompts: list[list[int]]) -> list[p.Echo]:
        """Each prompt as ``echo`` returns it; with ``logprobs``, scored by one full forward pass
        (in a worker thread: the event loop keeps serving)."""
        texts = ([body.prompt] if isinstance(body.prompt, str) else body.prompt
                 if body.prompt and isinstance(body.prompt[0], str) else None)
        out = []
        for k, ids in enumerate(prompts):
            if len(ids) > self.engine.max_len:
                raise p.APIError(400, f"this model's maximum context length is {self.engine.max_len} tokens, and "
                                      f"the prompt has {len(ids)}", param="prompt", code="context_length_exceeded")
            text = texts[k] if texts is not None else self.tokenizer.decode(ids)
            tokens = [self.tokenizer.decode([t]) for t in ids]
            # a byte-level token may hold part of a character: then offsets come from prefix decodes
            offsets = None if "".join(tokens) == text else [len(self.tokenizer.decode(ids[:i]))
                                                             for i in range(len(ids))]
            if body.logprobs is None:
                out.append(p.Echo(text, tokens, [], [], offsets))
                continue
            lps, tops = await asyncio.to_thread(prompt_logprobs, self.lm, ids, max(body.logprobs, 1))
            top: list[dict[str, float] | None] = [None]
            for row in tops[1:]:  # best first; two ids that decode alike keep the better one
                alternatives: dict[str, float] = {}
                for t, lp in row:
                    alternatives.setdefault(self.tokenizer.decode([t]), lp)
                top.append(alternatives)
            out.append(p.Echo(text, tokens, lps, top, offsets))
        return out

    async def chat(self, request: Request) -> Response:
        body = p.parse(p.ChatBody, await read_json(request, self.max_body))
        self.check_model(body.model)
        p.check_chat(body)
        if self.template is not None:
            from rotary.chat.template import render

            messages = [{"role": m.role, "content": p.message_text(m)} for m in body.messages]
            try:
                text = render(self.template, messages, add_generation_prompt=True,
                              special_tokens=self.tokenizer.hf_special_tokens()).text
            except RotaryError as err:
                raise p.APIError(400, str(err), param="messages") from None
            prompts, extra = [self.tokenizer.encode(text)], ()
        else:
            prompts, extra = [self.tokenizer.encode(p.chat_prompt(body.messages))], p.ROLE_STOPS
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        rows = p.build_rows(prompts, body, max_tokens=max_tokens, max_len=self.engine.max_len,
                            eos_id=self.tokenizer.eos_id, logprobs=body.logprobs, extra_stop=extra,
                            prompt_param="messages", stop_ids=self.stop_ids)
        return await self._answer("chat", request, body, prompts, rows, body.logprobs)

    async def _answer(self, kind: Literal["completion", "chat"], request: Request, body: Any,
                      prompts: list[list[int]], rows: list, logprobs: bool,
                      echoes: list[p.Echo] | None = None) -> Response:
        if len(rows) > self.scheduler.max_queue:
            raise p.APIError(400, f"{len(rows)} completions in one request (prompts x n), more than this server "
                                  f"queues ({self.scheduler.max_queue})", param="n")
        try:
            ticket = self.scheduler.submit(rows)
        except QueueFull as err:
            raise p.APIError(503, f"the server is busy: {err}", type="server_error", code="queue_full") from None
        except RotaryError as err:  # what the engine refuses that the checks above did not catch
            raise p.APIError(400, str(err)) from None
        choices = [p.Choice(i, len(prompts[i // body.n]), echoes[i // body.n] if echoes else None)
                   for i in range(len(rows))]
        prompt_tokens = sum(len(ids) for ids in prompts)
        rid = p.new_id("cmpl" if kind == "completion" else "chatcmpl")

        async def cancel() -> None:
            self.scheduler.cancel(ticket)

        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            events = self._stream(kind, ticket, choices, rid, prompt_tokens, logprobs, usage)
            # the background task runs after a disconnect too, even if the stream never started
            return StreamingResponse(events, media_type="text/event-stream", background=BackgroundTask(cancel),
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            if not await self._collect(request, ticket, choices, logprobs):
                return Response(status_code=499)  # nobody is there to read it
        except EngineFailed as err:
            raise p.APIError(500, str(err), type="server_error") from None
        finally:
            self.scheduler.cancel(ticket)
        build = p.completion_response if kind == "completion" else p.chat_response
        return JSONResponse(build(rid, self.name, choices, prompt_tokens, logprobs))

    def _record(self, choices: list[p.Choice], ev: Event, logprobs: bool) -> tuple[p.Choice, bool]:
        """Add ``ev`` to its choice; True if it added a token's logprob (EOS has none to show)."""
        c = choices[ev.tag[1]]
        eos = ev.finish_reason == "stop" and (ev.token == self.tokenizer.eos_id or ev.token in self.stop_ids)
        token = self.tokenizer.decode([ev.token]) if logprobs and not eos else None
        return c, c.add(ev.text, token, ev.logprob, ev.index, ev.finish_reason)

    async def _collect(self, request: Request, ticket: Ticket, choices: list[p.Choice], logprobs: bool) -> bool:
        """Gather every row's events; False if the client disconnected first."""
        async def consume() -> None:
            async for ev in ticket.events():
                self._record(choices, ev, logprobs)

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        work, watch = asyncio.ensure_future(consume()), asyncio.ensure_future(disconnected())
        left = True  # until the work is done: the client left first, or this handler was cancelled
        try:
            done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            left = work not in done
        finally:
            watch.cancel()
            if left:
                work.cancel()
        if left:
            return False
        work.result()  # re-raises what the engine delivered
        return True

    async def _stream(self, kind: Literal["completion", "chat"], ticket: Ticket, choices: list[p.Choice], rid: str,
                      prompt_tokens: int, logprobs: bool, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events as OpenAI sends them: a chunk per piece of text, the finish reason,
        optionally a usage chunk, then ``[DONE]``."""
        created = p.now()

        def sse(choice: dict[str, Any] | None, usage: dict[str, int] | None = None) -> str:
            return "data: " + json.dumps(p.chunk(kind, rid, self.name, created, choice, usage, include_usage)) + "\n\n"

        try:
            if kind == "chat":
                for c in choices:
                    yield sse({"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                               "finish_reason": None})
            async for ev in ticket.events():
                c, added = self._record(choices, ev, logprobs)
                lp = _last_logprobs(kind, c) if added else None  # this token's logprob, in the chunk with its text
                if kind == "completion":
                    if ev.text or ev.finish_reason or lp:
                        yield sse({"index": c.index, "text": ev.text, "logprobs": lp,
                                   "finish_reason": ev.finish_reason})
                    continue
                if ev.text or lp:
                    yield sse({"index": c.index, "delta": {"content": ev.text}, "logprobs": lp, "finish_reason": None})
                if ev.finish_reason:
                    yield sse({"index": c.index, "delta": {}, "logprobs": None, "finish_reason": ev.finish_reason})
            if include_usage:
                yield sse(None, p.usage(choices, prompt_tokens))
            yield "data: [DONE]\n\n"
        except EngineFailed as err:
            yield "data: " + json.dumps(p.APIError(500, str(err), type="server_error").body()) + "\n\n"
        finally:
            self.scheduler.cancel(ticket)

    # -- input --------------------------------------------------------------------------------
    def _encode_prompts(self, prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
        """Text or token ids, one prompt or a list of them. An empty text starts from the end-of-text
        token, as OpenAI's models do, since a row needs at least one token."""
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            prompt = [prompt]  # type: ignore[list-item]
        if not prompt:
            raise p.APIError(400, "prompt must not be an empty list", param="prompt")
        out = []
        for item in prompt:
            ids = self.tokenizer.encode(item) if isinstance(item, str) else list(item)
            if not ids and isinstance(item, str):
                ids = [self.tokenizer.eos_id]
            if not ids or any(not 0 <= t < self.vocab_size for t in ids):
                raise p.APIError(400, f"token-id prompts need 1 or more ids in [0, {self.vocab_size})", param="prompt")
            out.append(ids)
        return out


def _last_logprobs(kind: str, c: p.Choice) -> dict[str, Any]:
    if kind == "completion":
        return p.completion_logprobs(c.tokens[-1:], c.logprobs[-1:], c.offsets[-1:])
    return p.chat_logprobs(c.tokens[-1:], c.logprobs[-1:])

