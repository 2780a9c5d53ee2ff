"""``rotary serve``: the OpenAI API over the decode engine, checked with the official client.

A tiny causal LM is trained once (200 steps on the sonnet corpus, a few seconds). It memorises
the lines, so its greedy choices win by wide margins: a row's logits computed in a batch of 16
(or with another prefill shape) differ from the offline ones by float rounding only (~1e-6),
far below the gap between its first and second choices, so the greedy tokens, and the texts,
must match exactly. Servers run on loopback, in a thread, on a free port.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from rotary import cli  # noqa: E402
from rotary.infer.engine import Engine, Request  # noqa: E402
from rotary.infer.sampling import SamplingParams  # noqa: E402
from rotary.infer.serve import create_app  # noqa: E402
from rotary.infer.serve.protocol import ROLE_STOPS, Message, chat_prompt  # noqa: E402
from tests.train_support import LINES, free_port, make_recipe, write_corpus  # noqa: E402

MODEL = "tiny-sonnets"
CONTEXT = 64


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rotary.train.loop import train

    root = tmp_path_factory.mktemp("serve")
    cfg = make_recipe(root / "run", write_corpus(root / "corpus", 30), max_steps=200, eval_interval=200,
                      checkpoint_interval=200, tensorboard=False, seq_len=CONTEXT, batch_size=8,
                      model={"preset": "tiny", "max_seq_len": CONTEXT})
    train(cfg)
    return cfg.run_dir


@pytest.fixture(scope="module")
def pre(run_dir: Path):
    from rotary.infer.pretrained import load

    return load(run_dir, device="cpu")


@contextmanager
def live(app) -> Iterator[SimpleNamespace]:
    """``app`` served by uvicorn on 127.0.0.1 in a background thread."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", port=port, engine=app.state.engine,
                              scheduler=app.state.scheduler)
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def server(pre) -> Iterator[SimpleNamespace]:
    with live(create_app(pre, slots=16, max_queue=64, model_name=MODEL)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def offline(pre):
    """Greedy text of a prompt, decoded alone by an engine of one slot (not the server's)."""
    engine = Engine(pre.model, slots=1, max_len=CONTEXT, tokenizer=pre.tokenizer)
    cache: dict = {}

    def greedy(prompt: str, max_new: int, stop: tuple[str, ...] = ()) -> tuple[str, str]:
        key = (prompt, max_new, stop)
        if key not in cache:
            req = Request(pre.tokenizer.encode(prompt), max_new, SamplingParams(temperature=0, stop=stop),
                          pre.tokenizer.eos_id)
            events = engine.start([req])
            while engine.active:
                events += engine.step()
            cache[key] = ("".join(e.text for e in events), events[-1].finish_reason)
        return cache[key]

    return greedy


@contextmanager
def slow_steps(engine: Engine, seconds: float) -> Iterator[None]:
    """Each decode step takes ``seconds`` longer: time for a test to act while a request decodes."""
    real = engine.step

    def step():
        time.sleep(seconds)
        return real()

    engine.step = step
    try:
        yield
    finally:
        del engine.step


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def post_with_headers(port: int, path: str, body: bytes | dict,
                      headers: dict | None = None) -> tuple[int, dict, http.client.HTTPMessage]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read() or b"null"), resp.headers
    conn.close()
    return out


def post(port: int, path: str, body: bytes | dict, headers: dict | None = None) -> tuple[int, dict]:
    return post_with_headers(port, path, body, headers)[:2]


def model_logprobs(pre, prompt: list[int], tokens: list[int]) -> list[float]:
    """The model's own log-probability of each of ``tokens`` after ``prompt``: log_softmax of one
    full forward's logits, untouched by temperature or filters."""
    with torch.no_grad():
        logp = pre.model(torch.tensor([prompt + tokens]))[0].double().log_softmax(-1)
    return [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(tokens)]


def batch_steps(server, size: int) -> int:
    return server.scheduler.metrics()["batch_size_histogram"].get(str(size), 0)


# -- answers equal offline generation -------------------------------------------------------------
def test_completion_equals_offline_greedy_whole_and_streamed(client, pre, offline):
    want, finish = offline("Shall I", 40)
    assert want == pre.generate("Shall I", 40, temperature=0)  # the engine agrees with generate() too
    out = client.completions.create(model=MODEL, prompt="Shall I", max_tokens=40, temperature=0)
    assert out.object == "text_completion" and out.model == MODEL
    assert out.choices[0].text == want and out.choices[0].finish_reason == finish == "length"
    n_prompt = len(pre.tokenizer.encode("Shall I"))
    usage = out.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (n_prompt, 40, n_prompt + 40)

    chunks = list(client.completions.create(model=MODEL, prompt="Shall I", max_tokens=40, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 40


def test_stream_is_openais_server_sent_events(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/completions", body=json.dumps(
        {"model": MODEL, "prompt": "But thy", "max_tokens": 8, "temperature": 0, "stream": True}),
        headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
    raw = resp.read().decode()
    conn.close()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: {") for e in events[:-2])
    assert {c["object"] for c in chunks} == {"text_completion"} and len({c["id"] for c in chunks}) == 1
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["length"]


def test_chat_is_the_role_template_continued_until_the_next_turn(client, offline):
    messages = [{"role": "system", "content": "Verse."}, {"role": "user", "content": "Shall I"}]
    prompt = chat_prompt([Message(**m) for m in messages])
    assert prompt == "system: Verse.\nuser: Shall I\nassistant:"
    want, finish = offline(prompt, 20, ROLE_STOPS)
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
    assert out.object == "chat.completion" and out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == want and out.choices[0].finish_reason == finish
    assert out.usage.completion_tokens > 0

    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0,
                                                 stream=True))
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == finish and chunks[-1].choices[0].delta.content is None


def test_stop_strings_cut_the_text(client, offline):
    full, _ = offline("Shall I", 40)
    out = client.completions.create(model=MODEL, prompt="Shall I", max_tokens=40, temperature=0, stop="summer")
    assert out.choices[0].text == full[:full.index("summer")] and out.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=MODEL, prompt="Shall I", max_tokens=40, temperature=0,
                                         stop=["day", "summer"], stream=True)
    assert "".join(c.choices[0].text for c in streamed) == full[:full.index("summer")]


def test_n_samples_are_seeded_seed_plus_j(client, pre):
    prompts = ["Sonnet", "Rough"]
    sample = dict(model=MODEL, max_tokens=12, temperature=1.5, extra_body={"top_k": 50})
    many = client.completions.create(prompt=prompts, n=3, seed=7, **sample)
    assert [c.index for c in many.choices] == list(range(6))  # choice p * n + j: sample j of prompt p
    singles = [client.completions.create(prompt=prompt, seed=7 + j, **sample) for prompt in prompts for j in range(3)]
    assert [c.text for c in many.choices] == [one.choices[0].text for one in singles]
    assert many.usage.prompt_tokens == sum(len(pre.tokenizer.encode(p)) for p in prompts)  # each prompt once
    assert many.usage.completion_tokens == sum(one.usage.completion_tokens for one in singles)


def test_logprobs_are_the_models_raw_log_probabilities_of_the_chosen_tokens(client, pre):
    """Each logprob is the model's log_softmax at the chosen token (README: "the model's
    log-probability"), also when the token was drawn at temperature 0.5 from the top 5: the same
    seed and settings offline give the ids, and one full forward the values."""
    prompt = "So long as"
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=10, temperature=0.5, seed=3,
                                    logprobs=0, extra_body={"top_k": 5})
    lp = out.choices[0].logprobs
    (offline,) = pre.complete(prompt, 10, temperature=0.5, top_k=5, seed=3)
    ids = offline.token_ids
    assert out.choices[0].text == offline.text and "".join(lp.tokens) == out.choices[0].text
    assert lp.tokens == [pre.tokenizer.decode([t]) for t in ids] and lp.text_offset[0] == 0
    assert lp.token_logprobs == pytest.approx(model_logprobs(pre, pre.tokenizer.encode(prompt), ids), abs=1e-4)

    messages = [{"role": "user", "content": prompt}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5, temperature=0, logprobs=True)
    content = chat.choices[0].logprobs.content
    assert "".join(t.token for t in content) == chat.choices[0].message.content
    text = chat_prompt([Message(**m) for m in messages])
    (offline,) = pre.complete(text, 5, temperature=0, stop=ROLE_STOPS)
    assert [t.token for t in content] == [pre.tokenizer.decode([t]) for t in offline.token_ids]
    want = model_logprobs(pre, pre.tokenizer.encode(text), offline.token_ids)
    assert [t.logprob for t in content] == pytest.approx(want, abs=1e-4)


def test_models_health_and_metrics(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for path in ("/health", "/metrics"):
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200, path
        body = json.loads(resp.read())
    conn.close()
    assert body["slots"] == 16 and body["active"] == 0 and "batch_size_histogram" in body


# -- batching ---------------------------------------------------------------------------------------
PROMPTS = [" ".join(line.split()[:k]) for line in LINES for k in (1, 2, 3)][:16]


def test_16_concurrent_clients_each_get_their_offline_text(client, server, offline):
    want = [offline(p, 24 + i) for i, p in enumerate(PROMPTS)]  # different lengths: rows end at different steps
    before = server.scheduler.steps

    def ask(i: int) -> str:
        if i % 2:  # half of them stream
            chunks = client.completions.create(model=MODEL, prompt=PROMPTS[i], max_tokens=24 + i, temperature=0,
                                               stream=True)
            return "".join(c.choices[0].text for c in chunks)
        out = client.completions.create(model=MODEL, prompt=PROMPTS[i], max_tokens=24 + i, temperature=0)
        return out.choices[0].text

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(ask, range(16)))
    assert got == [text for text, _ in want]
    assert server.scheduler.steps > before
    assert max(list(server.scheduler.recent_batch_sizes)[-(server.scheduler.steps - before):]) > 1


def test_a_second_request_joins_a_running_one_and_gets_tokens_before_it_ends(client, server):
    twos = batch_steps(server, 2)
    times: dict[str, float] = {}
    first_chunk = threading.Event()

    def long() -> str | None:
        stream = client.completions.create(model=MODEL, prompt="Shall I", max_tokens=CONTEXT - 8, temperature=0,
                                           stream=True)
        finish = None
        for c in stream:
            first_chunk.set()
            finish = c.choices[0].finish_reason or finish
        times["long_end"] = time.monotonic()
        return finish

    with slow_steps(server.engine, 0.02), ThreadPoolExecutor(1) as pool:
        running = pool.submit(long)
        assert first_chunk.wait(10)
        for _ in client.completions.create(model=MODEL, prompt="Rough winds", max_tokens=4, temperature=0,
                                           stream=True):
            times.setdefault("short_first", time.monotonic())
        assert running.result() == "length"  # the long one ran its whole length...
    assert times["short_first"] < times["long_end"]  # ...and the short one got its tokens meanwhile
    assert batch_steps(server, 2) > twos  # decoded together


# -- errors ---------------------------------------------------------------------------------------
OK = {"model": MODEL, "prompt": "Shall I", "max_tokens": 4}


@pytest.mark.parametrize("path, body, status, param", [
    ("/v1/completions", {"model": MODEL}, 400, "prompt"),
    ("/v1/completions", {"prompt": "Shall I"}, 400, "model"),
    ("/v1/completions", {**OK, "max_tokens": "4"}, 400, "max_tokens"),
    ("/v1/completions", {**OK, "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {**OK, "stream": 1}, 400, "stream"),
    ("/v1/completions", {**OK, "max_tokens": CONTEXT}, 400, "max_tokens"),
    ("/v1/completions", {**OK, "prompt": "summer " * 100}, 400, "prompt"),
    ("/v1/completions", {**OK, "model": "gpt-4"}, 404, "model"),
    ("/v1/completions", {**OK, "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {**OK, "n": 0}, 400, "n"),
    ("/v1/completions", {**OK, "n": 65}, 400, "n"),
    ("/v1/completions", {**OK, "stop": [""]}, 400, "stop"),
    ("/v1/completions", {**OK, "prompt": [10**9]}, 400, "prompt"),
    ("/v1/completions", {**OK, "logprobs": 9}, 400, "logprobs"),
    ("/v1/completions", {**OK, "frequency_penalty": 0.5}, 400, "frequency_penalty"),
    ("/v1/completions", {**OK, "seed": 99999999999999999999999}, 400, "seed"),  # was a 500 (int64 overflow)
    ("/v1/completions", {**OK, "seed": -1}, 400, "seed"),
    ("/v1/completions", {**OK, "seed": 2**63 - 1, "n": 2}, 400, "seed"),  # sample 1 would use 2**63
    ("/v1/completions", [OK], 400, None),
    ("/v1/completions", b"{not json", 400, None),
    ("/v1/completions", b'{"model": "' + b"x" * (1 << 20) + b'"}', 413, None),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"content": "hi"}]}, 400, "messages.0.role"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400,
     "messages.0.role"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"},
                                                           {"role": "tool", "content": "42"}]}, 400, "messages.1.role"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": None}]}, 400,
     "messages.0.content"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user"}]}, 400, "messages.0.content"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi " * 80}]}, 400,
     "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [{}]},
     400, "tools"),
    ("/v1/nothing", OK, 404, None),
])
def test_bad_requests_get_openai_error_json_and_the_server_lives_on(server, path, body, status, param):
    got, out = post(server.port, path, body)
    assert got == status, out
    assert set(out) == {"error"} and set(out["error"]) == {"message", "type", "param", "code"}
    assert out["error"]["message"] and out["error"]["param"] == param
    assert post(server.port, "/v1/completions", OK)[0] == 200


# Token-id prompts of exact lengths around the context (64): a row holds prompt + max_tokens
# positions, so 63 + 1 fits and 63 + 2 does not; a prompt of 64 leaves no room for any token.
@pytest.mark.parametrize("n_prompt, max_tokens, param", [
    (CONTEXT - 1, 1, None),
    (CONTEXT - 2, 2, None),
    (CONTEXT - 1, 2, "max_tokens"),
    (CONTEXT, 1, "prompt"),
    (CONTEXT + 1, 1, "prompt"),
    (CONTEXT - 1, None, None),          # null: the rest of the context, one token here
    (CONTEXT, None, "prompt"),
    (CONTEXT - 16, "default", None),    # left out: completions' default of 16
    (CONTEXT - 15, "default", "max_tokens"),
])
def test_the_context_bound_is_prompt_plus_max_tokens_at_most_the_context(server, pre, n_prompt, max_tokens, param):
    ids = (pre.tokenizer.encode(" ".join(LINES)) * 4)[:n_prompt]
    assert len(ids) == n_prompt and pre.tokenizer.eos_id not in ids
    body = {"model": MODEL, "prompt": ids, "temperature": 0}
    if max_tokens != "default":
        body["max_tokens"] = max_tokens
    status, out = post(server.port, "/v1/completions", body)
    if param is None:
        want = {None: CONTEXT - n_prompt, "default": 16}.get(max_tokens, max_tokens)
        assert status == 200, out
        usage = out["usage"]
        assert usage["prompt_tokens"] == n_prompt and 1 <= usage["completion_tokens"] <= want
        assert out["choices"][0]["finish_reason"] == ("length" if usage["completion_tokens"] == want else "stop")
    else:
        assert status == 400, out
        assert (out["error"]["param"], out["error"]["code"]) == (param, "context_length_exceeded"), out


def test_the_client_raises_openais_exceptions(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x")
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="x", max_tokens=1000)
    assert err.value.code == "context_length_exceeded"


def test_api_key(pre):
    from fastapi.testclient import TestClient

    with TestClient(create_app(pre, slots=1, max_queue=1, api_key="sekret", model_name=MODEL)) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekret"}):
            r = c.post("/v1/completions", json=OK, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert c.get("/v1/models").status_code == 401
        assert c.post("/v1/completions", json=OK, headers={"Authorization": "Bearer sekret"}).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "Bearer sekret"}).status_code == 200
        # The scheme is case-insensitive (RFC 9110); health probes and scrapers carry no secret.
        for scheme in ("bearer", "BEARER"):
            assert c.get("/v1/models", headers={"Authorization": f"{scheme} sekret"}).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "Basic sekret"}).status_code == 401
        assert c.get("/health").status_code == 200 and c.get("/health").json() == {"status": "ok"}
        assert c.get("/tokenizer_info").status_code == 401  # the tokenizer is the model's: guarded
        assert c.post("/tokenize", json={"prompt": "x"}, headers={"Authorization": "Bearer sekret"}).status_code == 200
        assert c.get("/metrics").status_code == 200


def test_a_full_queue_answers_503(pre):
    with live(create_app(pre, slots=1, max_queue=1, model_name=MODEL)) as s, slow_steps(s.engine, 0.02), \
            ThreadPoolExecutor(2) as pool:
        body = {**OK, "max_tokens": 20}
        first = pool.submit(post, s.port, "/v1/completions", body)
        wait_for(lambda: s.engine.active == 1)
        second = pool.submit(post, s.port, "/v1/completions", body)
        wait_for(lambda: s.scheduler.pending == 1)
        status, out, headers = post_with_headers(s.port, "/v1/completions", body)
        assert status == 503 and out["error"]["code"] == "queue_full"
        assert headers["Retry-After"] == "1"  # clients (the openai one too) wait this long before retrying
        assert first.result()[0] == second.result()[0] == 200


# -- disconnects ------------------------------------------------------------------------------------
def test_a_client_leaving_mid_stream_frees_its_slot(client, server):
    cancelled = server.scheduler.rows_cancelled
    with slow_steps(server.engine, 0.02):
        stream = client.completions.create(model=MODEL, prompt="Shall I", max_tokens=CONTEXT - 8, temperature=0,
                                           stream=True)
        next(iter(stream))
        assert server.engine.active == 1
        stream.close()
        t = time.monotonic()
        wait_for(lambda: server.engine.active == 0, timeout=3)
        assert time.monotonic() - t < 0.02 * 40  # well before its 56 tokens would have ended
    assert server.scheduler.rows_cancelled == cancelled + 1


def test_a_client_leaving_before_its_whole_answer_frees_its_slot(server):
    cancelled = server.scheduler.rows_cancelled
    with slow_steps(server.engine, 0.02):
        sock = socket.create_connection(("127.0.0.1", server.port))
        body = json.dumps({**OK, "max_tokens": CONTEXT - 8}).encode()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: server.engine.active == 1)
        sock.close()
        wait_for(lambda: server.engine.active == 0, timeout=10)  # generous: the CPU may be shared
    assert server.scheduler.rows_cancelled == cancelled + 1



def test_a_row_cancelled_while_it_waits_never_reaches_the_engine():
    """A cancelled ticket's pending rows leave the queue: with one slot busy (A), B is queued and
    cancelled, then C is queued. When C has finished, only A and C were ever started, and B's
    queue got nothing. (Rows are admitted in order, so a B left in the queue would start before
    C; the thread starts only after the three calls, so nothing here races.)"""
    import asyncio

    from rotary.infer.serve.scheduler import Scheduler
    from rotary.model import CausalLM
    from rotary.model.config import ModelConfig

    torch.manual_seed(0)
    model = CausalLM(ModelConfig(vocab_size=32, max_seq_len=16, n_layer=1, n_head=2, d_model=16)).eval()
    scheduler = Scheduler(Engine(model, slots=1, max_len=16), max_queue=4)

    def row() -> Request:
        return Request([1, 2, 3], 3, SamplingParams(temperature=0))

    async def main() -> tuple[int, bool]:
        a, b, c = (scheduler.submit([row()]) for _ in range(3))
        scheduler.cancel(b)
        scheduler.start()
        try:
            for ticket in (a, c):
                assert [e.index async for e in ticket.events()] == [1, 2, 3]
            await asyncio.sleep(0)  # let any event the thread pushed for B land in its queue
            return scheduler.rows_started, b.queue.empty()
        finally:
            scheduler.stop()

    assert asyncio.run(main()) == (2, True)

# -- the verb -----------------------------------------------------------------------------------------
def test_the_verb_passes_its_options_and_reads_the_key_from_the_environment(run_dir, monkeypatch, capsys):
    import rotary.commands.serve
    import rotary.infer.serve.app

    seen = {}
    monkeypatch.setattr(rotary.infer.serve.app, "create_app", lambda pre, **kw: seen.update(kw) or "app")
    monkeypatch.setattr(rotary.commands.serve, "serve_on",
                        lambda sock, config: seen.update(app=config.app, host=config.host, port=config.port,
                                                         bound=sock.getsockname()[:2]) or sock.close())
    monkeypatch.setenv("ROTARY_API_KEY", "from-env")
    port = free_port()
    assert cli.main(["serve", str(run_dir), "--port", str(port), "--slots", "4"]) == 0
    assert seen["api_key"] == "from-env" and seen["compile"] is True and seen["slots"] == 4  # compiled by default
    assert (seen["host"], seen["port"], seen["model_name"]) == ("127.0.0.1", port, run_dir.name)
    assert seen["app"] == "app" and seen["bound"] == ("127.0.0.1", port)
    assert f"at http://127.0.0.1:{port}/v1 with 4 slots" in capsys.readouterr().out
    # stopped by a signal (uvicorn shut down gracefully): the shell's code for it, not 0
    import signal

    monkeypatch.setattr(rotary.commands.serve, "serve_on", lambda sock, config: sock.close() or signal.SIGTERM)
    assert cli.main(["serve", str(run_dir), "--port", str(free_port()), "--no-compile"]) == 128 + signal.SIGTERM
    assert seen["compile"] is False
    # --quantize int8: the model served has int8 linear layers
    from rotary.ops.int8_linear import is_quantized

    monkeypatch.setattr(rotary.infer.serve.app, "create_app", lambda pre, **kw: seen.update(kw, pre=pre) or "app")
    assert cli.main(["serve", str(run_dir), "--port", str(free_port()), "--quantize", "int8"]) == 128 + signal.SIGTERM
    assert is_quantized(seen["pre"].model) and seen["compile"] is True


def test_the_verb_serves_on_the_socket_it_bound(run_dir):
    """The real command, uvicorn and all: /health answers on the port, and Ctrl-C stops it."""
    import signal

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rotary", "serve", str(run_dir), "--port", str(port),
                             "--log-level", "warning", "--no-compile"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def healthy() -> bool:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                return conn.getresponse().status == 200
            except OSError:
                assert proc.poll() is None, proc.communicate()[1]
                return False
        wait_for(healthy, timeout=120)  # 5 ms polls of refused connections: cheap
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    # uvicorn shuts down gracefully, then re-raises the signal: Ctrl-C's usual exit status
    assert f"at http://127.0.0.1:{port}/v1" in out and proc.returncode == 130, err


def test_a_busy_port_or_a_foreign_host_is_one_line_before_the_model_loads(run_dir, monkeypatch, capsys):
    import rotary.infer.pretrained

    monkeypatch.setattr(rotary.infer.pretrained, "load", lambda *a, **kw: pytest.fail("loaded before binding"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", str(run_dir), "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"port {port} on 127.0.0.1 is already in use" in err
    for host, says in (("203.0.113.7", "is not an address of this machine"),  # TEST-NET-3: never local
                       ("no-such-host.invalid", "not an address or a name this machine resolves")):
        assert cli.main(["serve", str(run_dir), "--host", host, "--api-key", "k", "--port", str(free_port())]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, err


def test_without_the_extra_the_verb_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now raises ImportError
    assert cli.main(["serve", "runs/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'rotary[serve]'" in err


def test_other_verbs_do_not_import_fastapi():
    code = ("import sys, rotary, rotary.cli; rotary.cli.build_parser(); "
            "assert not {'fastapi', 'uvicorn', 'starlette'} & set(sys.modules), sys.modules.keys(); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_the_readmes_client_snippet_runs_against_the_server(server, capsys):
    """README.md's `openai` example, as written, with this server's address and model id."""
    from tests.cli.test_readme import code_blocks

    (snippet,) = [b for b in code_blocks("python") if "from openai import OpenAI" in b]
    assert "http://127.0.0.1:8000/v1" in snippet and 'model="demo"' in snippet
    snippet = snippet.replace("http://127.0.0.1:8000", server.url).replace('model="demo"', f'model="{MODEL}"')
    snippet = snippet.replace("max_tokens=60", "max_tokens=20")  # this model's context is 64 tokens
    # seeded, so that what it prints can be checked: the same request unstreamed (sampling may
    # well end at once with this tiny model: an empty text is no failure, a different one is)
    snippet = snippet.replace("stream=True", "stream=True, seed=7")
    capsys.readouterr()
    exec(compile(snippet, "README.md:serve", "exec"), {})
    printed = capsys.readouterr().out
    from openai import OpenAI

    whole = OpenAI(base_url=f"{server.url}/v1", api_key="unused").completions.create(
        model=MODEL, prompt="ROMEO:", max_tokens=20, seed=7)
    assert printed == whole.choices[0].text


# -- echo and the tokenizer endpoints: what lm-evaluation-harness's local-completions sends ------
def lm_eval_parse_logprobs(out: dict, ctxlens: list[int]) -> list[tuple[float, bool]]:
    """lm-eval 0.4.13's LocalCompletionsAPI.parse_logprobs, restated: the continuation's summed
    logprob (prompt positions ctxlen.. end, the one generated token left out) and whether each
    continuation token was the top-1."""
    res = []
    for choice, ctxlen in zip(sorted(out["choices"], key=lambda c: c["index"]), ctxlens):
        lps = choice["logprobs"]["token_logprobs"][ctxlen:-1]
        tops = choice["logprobs"]["top_logprobs"][ctxlen:-1]
        res.append((sum(lps), all(lp == max(top.values()) for lp, top in zip(lps, tops))))
    return res


def test_echo_scores_token_prompts_as_one_full_forward_and_lm_eval_reads_them(server, pre):
    context = pre.tokenizer.encode("Shall I compare thee")
    with torch.no_grad():
        logits = pre.model(torch.tensor([context]))[0]
    best = int(logits[-1].argmax())
    worst = int(logits[-1].argmin())
    prompts = [context + [best], context + [worst]]  # a likely and an unlikely continuation
    body = {"model": MODEL, "prompt": prompts, "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234,
            "echo": True}  # the payload lm-eval builds
    status, out = post(server.port, "/v1/completions", body)
    assert status == 200, out
    for choice, ids in zip(out["choices"], prompts):
        lp = choice["logprobs"]
        n = len(ids)
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == n + 1
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        want = model_logprobs(pre, ids[:1], ids[1:])  # one full forward, untouched by sampling
        assert lp["token_logprobs"][1:n] == pytest.approx(want, abs=1e-5)
        assert lp["tokens"][:n] == [pre.tokenizer.decode([t]) for t in ids]
        assert choice["text"].startswith(pre.tokenizer.decode(ids))
        assert lp["text_offset"][:n] == [len("".join(lp["tokens"][:i])) for i in range(n)]
        for top, got in zip(lp["top_logprobs"][1:n], lp["token_logprobs"][1:n]):
            assert len(top) == 1 and max(top.values()) >= got - 1e-6
    (likely, likely_greedy), (unlikely, unlikely_greedy) = lm_eval_parse_logprobs(out, [len(context)] * 2)
    direct = model_logprobs(pre, context, [best])[0], model_logprobs(pre, context, [worst])[0]
    assert (likely, unlikely) == pytest.approx(direct, abs=1e-5) and likely > unlikely
    assert likely_greedy and not unlikely_greedy


def test_echo_with_no_new_tokens_scores_a_text_prompt_and_top_logprobs_hold_k_alternatives(server, pre):
    status, out = post(server.port, "/v1/completions", {"model": MODEL, "prompt": "Shall I compare", "echo": True,
                                                        "max_tokens": 0, "logprobs": 3})
    assert status == 200, out
    (choice,) = out["choices"]
    ids = pre.tokenizer.encode("Shall I compare")
    assert choice["text"] == "Shall I compare" and choice["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}
    lp = choice["logprobs"]
    assert lp["token_logprobs"][1:] == pytest.approx(model_logprobs(pre, ids[:1], ids[1:]), abs=1e-5)
    with torch.no_grad():
        logp = pre.model(torch.tensor([ids]))[0].log_softmax(-1)
    for t, top in enumerate(lp["top_logprobs"][1:]):
        values, indices = logp[t].topk(3)
        assert list(top.values()) == pytest.approx(values.tolist(), abs=1e-5)
        assert list(top) == [pre.tokenizer.decode([i]) for i in indices.tolist()]
    # echo without logprobs: the prompt's text in front of the completion, nothing scored
    status, out = post(server.port, "/v1/completions", {"model": MODEL, "prompt": "Shall I", "echo": True,
                                                        "max_tokens": 3, "temperature": 0})
    assert status == 200 and out["choices"][0]["text"].startswith("Shall I") and out["choices"][0]["logprobs"] is None


@pytest.mark.parametrize("body, param", [
    ({"prompt": "Shall I", "echo": True, "stream": True}, "echo"),
    ({"prompt": "Shall I", "max_tokens": 0}, "max_tokens"),
    ({"prompt": [[5] * (CONTEXT + 1)], "echo": True, "max_tokens": 0, "logprobs": 1}, "prompt"),
])
def test_echo_mistakes_are_openai_errors(server, body, param):
    status, out = post(server.port, "/v1/completions", {"model": MODEL, **body})
    assert status == 400 and out["error"]["param"] == param, out
    assert post(server.port, "/v1/completions", OK)[0] == 200  # still serving



def test_echo_text_offsets_index_the_returned_text_for_prompt_and_generated_tokens(server, pre):
    # OpenAI's text_offset is where each token starts in choices[].text: the generated tokens
    # come after the echoed prompt, so their offsets are shifted by the prompt's length
    status, out = post(server.port, "/v1/completions", {"model": MODEL, "prompt": "Shall I", "echo": True,
                                                        "max_tokens": 3, "temperature": 0, "logprobs": 1})
    assert status == 200, out
    (choice,) = out["choices"]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["text_offset"]) > len(pre.tokenizer.encode("Shall I"))  # some generated
    for token, offset in zip(lp["tokens"], lp["text_offset"]):
        assert choice["text"][offset:offset + len(token)] == token, (token, offset, choice["text"])


def test_echo_scores_a_prompt_that_fills_the_whole_context(server, pre):
    # scoring only (max_tokens 0) needs room for the prompt alone: CONTEXT tokens fit, CONTEXT + 1 do not
    ids = (pre.tokenizer.encode("Shall I compare thee to a summer's day? ") * CONTEXT)[:CONTEXT]
    status, out = post(server.port, "/v1/completions", {"model": MODEL, "prompt": [ids], "echo": True,
                                                        "max_tokens": 0, "logprobs": 1})
    assert status == 200, out
    assert len(out["choices"][0]["logprobs"]["token_logprobs"]) == CONTEXT

def test_the_tokenizer_endpoints_answer_as_vllms(server, pre):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/tokenizer_info")
    info = json.loads(conn.getresponse().read())
    conn.close()
    assert info["eos_token"] == pre.tokenizer.id_to_token(pre.tokenizer.eos_id)
    assert info["model_max_length"] == CONTEXT and info["chat_template"] is None
    status, out = post(server.port, "/tokenize", {"prompt": "Shall I compare", "add_special_tokens": False})
    assert status == 200 and out["tokens"] == pre.tokenizer.encode("Shall I compare")
    assert out["count"] == len(out["tokens"]) and out["max_model_len"] == CONTEXT
    assert post(server.port, "/tokenize", {"prompt": info["eos_token"]})[1]["tokens"] == [pre.tokenizer.eos_id]
    status, out = post(server.port, "/detokenize", {"tokens": pre.tokenizer.encode("Shall I compare")})
    assert status == 200 and out["prompt"] == "Shall I compare"
    assert post(server.port, "/detokenize", {"tokens": [10**9]})[0] == 400
    assert post(server.port, "/tokenize", {"prompt": 5})[0] == 400
    assert post(server.port, "/tokenize", {"prompt": "x", "model": "gpt-4"})[0] == 404


def test_echo_offsets_index_the_text_when_byte_tokens_split_a_character(server, pre):
    """A byte-level BPE trained on English spells 好 with byte tokens that decode to U+FFFD one by
    one: the offsets come from the decoded prefixes, so they index the returned text."""
    prompt = "好 Shall I"
    ids = pre.tokenizer.encode(prompt)
    assert "".join(pre.tokenizer.decode([t]) for t in ids) != prompt  # the case this test is about
    status, out = post(server.port, "/v1/completions", {"model": MODEL, "prompt": prompt, "echo": True,
                                                        "max_tokens": 2, "logprobs": 1, "temperature": 0})
    assert status == 200, out
    lp = out["choices"][0]["logprobs"]
    n = len(ids)
    assert lp["text_offset"][:n] == [len(pre.tokenizer.decode(ids[:i])) for i in range(n)]
    text = out["choices"][0]["text"]
    assert text.startswith(prompt) and all(o <= len(text) for o in lp["text_offset"])
    assert lp["text_offset"][n] == len(prompt)  # the first generated token starts right after the prompt


# -- every causal model is served: dynamic NTK and linear attention ---------------------------------


def cached_logprobs(model, prompt: list[int], tokens: list[int]) -> list[float]:
    """Each token's log-probability as the model's own KV cache decodes it (``model(...,
    kv_cache=...)``, a token at a time). For linear attention this is exactly a full forward; for
    dynamic NTK it is transformers' approximation: the cache rotates every key with the current
    base, but deeper layers' cached keys came from hidden states of an earlier base."""
    cache = model.new_kv_cache(1, len(prompt) + len(tokens))
    out = []
    with torch.no_grad():
        logits = model(torch.tensor([prompt]), kv_cache=cache)[0, -1]
        for t in tokens:
            out.append(float(logits.double().log_softmax(-1)[t]))
            logits = model(torch.tensor([[t]]), kv_cache=cache)[0, -1]
    return out


@pytest.fixture(scope="module", params=["dynamic_ntk", "linear_attention"])
def variant(request, run_dir, pre):
    """The sonnet model with dynamic NTK to twice its context, or its weights in linear attention
    (the same projections: a different, deterministic function)."""
    import dataclasses

    from rotary.infer.pretrained import Pretrained, load
    from rotary.model import CausalLM

    if request.param == "dynamic_ntk":
        return load(run_dir, device="cpu", rope_scaling="dynamic_ntk", rope_factor=2)
    model = CausalLM(dataclasses.replace(pre.model.config, attention="linear", max_seq_len=128)).eval()
    model.load_state_dict(pre.model.state_dict())
    return Pretrained(model, pre.tokenizer, pre.path, pre.config)


def test_dynamic_ntk_and_linear_attention_are_served_with_every_option(variant):
    """They decode through the engine like any model: streamed text (from the server and from
    ``Pretrained.stream``) equals the whole answer and offline generation, logprobs are the
    model's own, min-p and seeds apply (n samples are seeds seed + j), and dynamic NTK's base
    moves past the trained context of 64 within the answer."""
    prompt = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate: "
    n_prompt = len(variant.tokenizer.encode(prompt))
    max_tokens = 80 - n_prompt  # past 64: dynamic NTK rescales during the answer
    sample = dict(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0.9, seed=11,
                  extra_body={"min_p": 0.05})
    with live(create_app(variant, slots=4, model_name=MODEL, max_len=128)) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        whole = client.completions.create(logprobs=0, **sample)
        chunks = list(client.completions.create(stream=True, **sample))
        many = client.completions.create(n=2, **{**sample, "seed": 20})
        second = client.completions.create(**{**sample, "seed": 21})
    (offline,) = variant.complete(prompt, max_tokens, temperature=0.9, min_p=0.05, seed=11, logprobs=True)
    text = whole.choices[0].text
    assert text == offline.text and "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert "".join(variant.stream(prompt, max_tokens, temperature=0.9, min_p=0.05, seed=11)) == text
    assert whole.usage.completion_tokens == len(offline.token_ids) and len(offline.token_ids) > 64 - n_prompt
    want = cached_logprobs(variant.model, variant.tokenizer.encode(prompt), offline.token_ids)
    assert whole.choices[0].logprobs.token_logprobs == pytest.approx(want, abs=1e-4)
    assert offline.logprobs == pytest.approx(want, abs=1e-4)
    if variant.model.config.attention == "linear":  # exact: the running sums are a full forward's
        ids = variant.tokenizer.encode(prompt)
        assert want == pytest.approx(model_logprobs(variant, ids, offline.token_ids), abs=1e-4)
    assert many.choices[1].text == second.choices[0].text != many.choices[0].text
    # min-p: every drawn token kept at least 5% of the most likely one's probability
    with torch.no_grad():
        ids = variant.tokenizer.encode(prompt)
        for i, t in enumerate(offline.token_ids):
            p = variant.model(torch.tensor([ids + offline.token_ids[:i]]))[0, -1].softmax(-1)
            assert p[t] >= 0.05 * p.max() - 1e-6


# -- lm-evaluation-harness, as its users run it: `lm_eval --model local-completions` ---------------

HARNESS_TASKS = {
    "rotary_mc": """task: rotary_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
""",
    "rotary_gen": """task: rotary_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{choices[gold]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""",
}


def harness_docs() -> list[dict]:
    """Multiple choice from the training sonnets: a line's start, its true next word among two others."""
    docs = []
    for i, line in enumerate(LINES[:6]):
        words = line.split()
        others = [LINES[(i + k) % len(LINES)].split()[4] for k in (1, 2)]
        choices = [" " + words[4], *(" " + w for w in others if w != words[4])]
        docs.append({"context": " ".join(words[:4]), "choices": choices, "gold": i % len(choices)})
    return docs


def continuation_logprob(pre, context: str, continuation: str) -> float:
    """log p(continuation | context) from one forward pass, split into tokens as lm-eval splits a
    pair (a context's trailing space moves to the continuation; the whole text is encoded once)."""
    if context.endswith(" "):
        context, continuation = context[:-1], " " + continuation
    whole = pre.tokenizer.encode(context + continuation)
    n_ctx = len(pre.tokenizer.encode(context))
    with torch.no_grad():
        logits = pre.model(torch.tensor([whole]))[0].float().log_softmax(-1)  # (T, vocab)
    return float(sum(logits[t - 1, whole[t]] for t in range(n_ctx, len(whole))))


@pytest.mark.slow
def test_lm_evaluation_harness_scores_through_the_server_what_the_model_computes(server, pre, offline, tmp_path):
    """lm-eval 0.4.13's local-completions model, with the server's own tokenizer endpoints: every
    choice's log-likelihood (echo + logprobs) equals the model's own, so its accuracy does; its
    generate_until text is the engine's greedy text."""
    pytest.importorskip("lm_eval")
    docs = harness_docs()
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, text in HARNESS_TASKS.items():
        (tasks / f"{name}.yaml").write_text(text.format(data=data))
    model_args = (f"model={MODEL},base_url={server.url}/v1/completions,num_concurrent=1,max_retries=1,"
                  "tokenized_requests=True,tokenizer_backend=remote")
    proc = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
                           "--tasks", "rotary_mc,rotary_gen", "--include_path", str(tasks), "--output_path",
                           str(tmp_path / "out"), "--log_samples"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = {name: [json.loads(x) for x in next((tmp_path / "out").rglob(f"samples_{name}_*.jsonl")).read_text()
                      .splitlines()] for name in HARNESS_TASKS}
    correct = 0
    for sample in sorted(samples["rotary_mc"], key=lambda s: s["doc_id"]):
        doc = docs[sample["doc_id"]]
        ours = [continuation_logprob(pre, doc["context"], c) for c in doc["choices"]]
        theirs = [float(r[0]) for r in sample["filtered_resps"]]
        assert theirs == pytest.approx(ours, rel=1e-4, abs=1e-4), doc
        correct += int(max(range(len(ours)), key=ours.__getitem__) == doc["gold"])
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
    assert results["rotary_mc"]["acc,none"] == pytest.approx(correct / len(docs))
    for sample in samples["rotary_gen"]:
        text, _ = offline(docs[sample["doc_id"]]["context"], 6, ("\n",))
        assert sample["filtered_resps"][0] == text
