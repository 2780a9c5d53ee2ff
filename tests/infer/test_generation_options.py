"""Generation options (#13): the decode engine's continuous batching, min-p and repetition penalty
against transformers' logits processors, per-row seeds, log-probabilities, stop strings and
whole characters in streamed text, prompts longer than the context, RoPE scaling at inference,
and the CLI's --json / --num-samples / --stop."""

from __future__ import annotations

import json

import pytest
import torch

from rotary.errors import RotaryError
from rotary.infer.engine import Engine, Request
from rotary.infer.generate import generate
from rotary.infer.sampling import SamplingParams, apply_repetition_penalty, filter_logits
from rotary.infer.text_stream import TextStream
from rotary.model import CausalLM
from rotary.model.config import ModelConfig
from rotary.ops import inductor


def small_lm(**kw) -> CausalLM:
    torch.manual_seed(0)
    base = dict(vocab_size=50, max_seq_len=64, n_layer=2, n_head=4, d_model=32, d_ff=64, n_kv_head=2,
                initializer_range=0.3, tie_embeddings=False)
    return CausalLM(ModelConfig(**{**base, **kw})).eval()


@pytest.fixture(scope="module")
def lm() -> CausalLM:
    return small_lm()


def full_forward_logits(model: CausalLM, seq: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([seq]))[0, -1]


# -- the engine: rows joining a running batch ----------------------------------------------------


# Every causal model decodes through the engine. Dynamic NTK from a trained context of 8 (so the
# longer sequences below pass it and their base moves each step) with one layer, where caching unrotated
# keys is exact (deeper layers cache hidden states of an earlier base, as transformers does);
# linear attention's running sums are exact at any depth.
ENGINE_MODELS = {
    "dynamic_ntk": dict(n_layer=1, rope_scaling="dynamic_ntk", rope_scaling_factor=2.0,
                        rope_original_max_seq_len=8),
    "linear_attention": dict(attention="linear", initializer_range=0.1),
}


@pytest.fixture(scope="module", params=["softmax", *ENGINE_MODELS])
def any_lm(request, lm) -> CausalLM:
    return lm if request.param == "softmax" else small_lm(**ENGINE_MODELS[request.param])


def test_a_row_joining_a_running_batch_decodes_as_if_alone(any_lm):
    """Continuous batching: sequences start while others are mid-generation, in the slots others
    freed; each one's greedy tokens equal argmax over repeated full forwards (steps with a top-2
    margin under 1e-3 are where float rounding may legitimately differ, and are not compared)."""
    lm = any_lm
    prompts = {"a": [5, 17, 3, 42, 8], "b": [7], "c": [13, 2, 44], "d": [9, 9, 1]}
    budget = {"a": 12, "b": 3, "c": 9, "d": 6}
    engine = Engine(lm, slots=2, max_len=32)
    out = {k: [] for k in prompts}

    def start(keys):
        for e in engine.start([Request(prompts[k], budget[k], SamplingParams(temperature=0), tag=k) for k in keys]):
            out[e.tag].append(e.token)

    start(["a", "b"])
    waiting = ["c", "d"]
    while engine.active or waiting:
        if waiting and engine.free_slots:
            start([waiting.pop(0)])
        for e in engine.step():
            out[e.tag].append(e.token)
    assert max(engine.batch_sizes) == 2 and engine.steps >= 12
    for k, prompt in prompts.items():
        seq = list(prompt)
        assert len(out[k]) == budget[k]
        for token in out[k]:
            logits = full_forward_logits(lm, seq)
            top2 = logits.topk(2).values
            if top2[0] - top2[1] > 1e-3:
                assert token == int(logits.argmax()), (k, seq)
            seq.append(token)


@pytest.mark.skipif(not inductor.available, reason="Inductor's CPU backend needs a C++ compiler")
@pytest.mark.parametrize("kind", list(ENGINE_MODELS))
def test_the_compiled_decode_step_decodes_as_the_eager_one(kind):
    """``compile=True`` (``rotary serve --compile``) for the models whose cache is not plain keys
    and values: the same greedy tokens and log-probabilities as eager steps, rows of different
    lengths in one batch, the cache growing past the trained context."""
    model = small_lm(**{**ENGINE_MODELS[kind], "n_layer": 1})  # one layer: a quicker compilation
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]
    runs = []
    for compiled in (False, True):
        engine = Engine(model, slots=4, max_len=32, compile=compiled)
        events = engine.start([Request(p, 16, SamplingParams(temperature=0, logprobs=True), tag=i)
                               for i, p in enumerate(prompts)])
        while engine.active:
            events += engine.step()
        runs.append(events)
    eager, compiled = runs
    assert [(e.tag, e.token) for e in compiled] == [(e.tag, e.token) for e in eager]
    assert [e.logprob for e in compiled] == pytest.approx([e.logprob for e in eager], abs=1e-4)


@pytest.mark.skipif(not inductor.available, reason="Inductor's CPU backend needs a C++ compiler")
def test_a_compiled_engine_builds_one_graph_per_row_count_whatever_the_length():
    """``rotary serve`` warms up every power-of-two row count; a window as long as the cache
    must not need a graph of its own (two per row count hit Dynamo's limit of 8 at 16 slots, and
    the step fell back to eager), and decoding to the last position compiles nothing more."""
    from torch._dynamo.utils import counters

    model = small_lm(n_layer=1)
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    engine = Engine(model, slots=1, max_len=24, compile=True)
    engine.warm_up()  # one row, at the full length and at half of it
    assert counters["stats"]["unique_graphs"] - before == 1
    events = engine.start([Request([1, 2, 3], 21, SamplingParams(temperature=0), tag=0)])
    while engine.active:
        events += engine.step()
    assert max(e.index for e in events) == 21  # to the last of the 24 positions
    assert counters["stats"]["unique_graphs"] - before == 1


def test_the_engine_adds_a_causal_lms_output_bias():
    """A trained logits bias (output_bias) is part of every logit the engine decodes from: its
    greedy tokens and log-probabilities are those of repeated full forwards. The bias is large
    enough to change the argmax, so an engine that left it out would pick other tokens."""
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=50, max_seq_len=32, n_layer=1, n_head=2, d_model=16, output_bias=True)
    model = CausalLM(cfg).eval()
    with torch.no_grad():
        model.output_bias.copy_(torch.randn(50) * 3)
    prompt = [4, 8, 15, 16]
    engine = Engine(model, slots=1, max_len=16)
    events = engine.start([Request(prompt, 6, SamplingParams(temperature=0))])
    while engine.active:
        events += engine.step()
    seq, plain = list(prompt), []
    for e in events:
        logits = full_forward_logits(model, seq)
        assert e.token == int(logits.argmax())
        if e.logprob is not None:
            assert e.logprob == pytest.approx(float(torch.log_softmax(logits, -1)[e.token]), abs=1e-4)
        plain.append(int((logits - model.output_bias).argmax()))
        seq.append(e.token)
    assert plain != [e.token for e in events]


def test_the_engine_refuses_what_does_not_fit(lm):
    engine = Engine(lm, slots=1, max_len=10)
    with pytest.raises(RotaryError, match="more than the engine's 10"):
        engine.start([Request([1] * 8, 5)])
    engine.start([Request([1], 5)])
    with pytest.raises(RotaryError, match="free slots"):
        engine.start([Request([2], 5)])


def test_a_reused_slot_forgets_the_previous_rows_penalised_tokens(lm):
    """A slot freed by one sequence and reused by the next starts with an empty seen-set: the
    second sequence's repetition-penalised greedy tokens equal those of a fresh engine. The first
    row's prompt holds the tokens the second row picks unpenalised, so a seen-set left over from
    it would push the second row elsewhere."""
    params = SamplingParams(temperature=0, repetition_penalty=2.0)

    def run(engine: Engine, prompt: list[int]) -> list[int]:
        events = engine.start([Request(prompt, 6, params)])
        tokens = [e.token for e in events]
        while engine.active:
            tokens += [e.token for e in engine.step()]
        return tokens

    second = [13, 2, 44]
    fresh = run(Engine(lm, slots=1, max_len=32), second)
    engine = Engine(lm, slots=1, max_len=32)
    run(engine, fresh + [5, 17])  # the first row has seen every token the second one will pick
    assert run(engine, second) == fresh


# -- logits processing, against transformers ---------------------------------------------------


def test_repetition_penalty_and_min_p_match_transformers():
    processors = pytest.importorskip("transformers.generation.logits_process")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 40, generator=g) * 3
    seen_ids = torch.randint(0, 40, (3, 12), generator=g)
    seen = torch.zeros(3, 40, dtype=torch.bool).scatter(1, seen_ids, True)
    ours = apply_repetition_penalty(logits, seen, torch.full((3, 1), 1.3))
    theirs = processors.RepetitionPenaltyLogitsProcessor(1.3)(seen_ids, logits.clone())
    torch.testing.assert_close(ours, theirs)
    for min_p in (0.05, 0.3):
        kept = filter_logits(logits, [SamplingParams(min_p=min_p)] * 3).isfinite()
        hf = processors.MinPLogitsWarper(min_p)(seen_ids, logits.clone()).isfinite()
        assert torch.equal(kept, hf)
    # top-k and top-p too, one setting per row within one batch
    params = [SamplingParams(top_k=5), SamplingParams(top_p=0.7), SamplingParams(temperature=0.5, top_k=3)]
    kept = filter_logits(logits, params).isfinite()
    assert torch.equal(kept[0], processors.TopKLogitsWarper(5)(seen_ids, logits.clone())[0].isfinite())
    assert torch.equal(kept[1], processors.TopPLogitsWarper(0.7)(seen_ids, logits.clone())[1].isfinite())
    assert int(kept[2].sum()) == 3


def test_min_p_never_samples_outside_its_set(lm):
    prompt = [5, 17, 3]
    for seed in range(3):
        out = generate(lm, [prompt], 8, temperature=1.0, min_p=0.2, seed=seed)[0]
        seq = list(prompt)
        for token in out:
            probs = full_forward_logits(lm, seq).double().softmax(-1)
            assert probs[token] >= 0.2 * probs.max() - 1e-6, (seed, seq, token)
            seq.append(token)


def test_a_greedy_repetition_penalty_decode_is_transformers_over_prompt_and_output(lm):
    """CTRL's penalty counts every token already in the row, its prompt's as well as its output's:
    a greedy decode with it equals, token by token, argmax of transformers'
    RepetitionPenaltyLogitsProcessor applied to full-forward logits with input_ids = prompt +
    tokens so far. The prompts are chosen so that the penalty on prompt tokens decides: the
    unpenalised first choice after [4, 9, 9, 1] is 1, a prompt token (and step 7 of the other row
    would pick the prompt's 42), so an engine that penalised only generated tokens picks otherwise.
    Two rows in one batch: each row's seen tokens are its own."""
    processors = pytest.importorskip("transformers.generation.logits_process")
    prompts = [[4, 9, 9, 1], [5, 17, 3, 42, 8]]
    plain = generate(lm, prompts, 12, temperature=0)
    assert generate(lm, prompts, 12, temperature=0, repetition_penalty=1.0) == plain  # 1 is no penalty
    assert plain[0][0] == 1 and plain[1][6] == 42  # what the prompt's tokens would give unpenalised
    for penalty in (1.3, 2.0):
        penalise = processors.RepetitionPenaltyLogitsProcessor(penalty)
        out = generate(lm, prompts, 12, temperature=0, repetition_penalty=penalty)
        for prompt, tokens in zip(prompts, out):
            seq = list(prompt)
            for token in tokens:
                want = penalise(torch.tensor([seq]), full_forward_logits(lm, seq)[None].clone())[0]
                top2 = want.topk(2).values
                assert top2[0] - top2[1] > 1e-3  # no near-tie that float rounding could flip
                assert token == int(want.argmax()), (penalty, seq)
                seq.append(token)
        assert out[0][0] != 1 and out[1][6] != 42  # the prompt's tokens were penalised


def test_a_seeded_row_samples_the_same_whatever_shares_its_batch(lm):
    alone = generate(lm, [[13, 2, 44]], 10, temperature=1.0, seed=7)[0]
    batch = generate(lm, [[5, 17, 3, 42], [13, 2, 44], [7]], 10, temperature=1.0, seed=7)
    assert batch[1] == alone
    assert generate(lm, [[13, 2, 44]], 10, temperature=1.0, seed=8)[0] != alone
    # explicit per-row seeds
    rows = generate(lm, [[13, 2, 44]] * 2, 10, temperature=1.0, seeds=[7, 8])
    assert rows[0] == alone and rows[1] != alone


@pytest.mark.parametrize("params", [
    dict(temperature=1.0),
    dict(temperature=0.5, top_k=5),
    dict(temperature=1.5, top_p=0.8),
    dict(temperature=0.7, min_p=0.1),
    dict(temperature=0, top_k=5),
], ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()))
def test_logprobs_are_the_models_raw_log_softmax_whatever_the_sampling(lm, params):
    """A logprob is the model's own: log_softmax of the unmodified logits at the chosen token, as
    the engine's Event documents ("under the model (before temperature and filtering)") and the
    README's `--logprobs` ("the model's log-probability"), not of the tempered, top-k/top-p or
    min-p distribution the token was drawn from. Temperature 1 without a filter cannot tell them
    apart; the other settings can."""
    engine = Engine(lm, slots=1, max_len=20)
    prompt = [5, 17, 3]
    events = engine.start([Request(prompt, 8, SamplingParams(seed=0, logprobs=True, **params))])
    got = []
    while events:
        got += [(e.token, e.logprob) for e in events]
        events = engine.step()
    seq = list(prompt)
    for token, lp in got:
        logits = full_forward_logits(lm, seq)
        if "top_k" in params:  # the filter did act: the token is one of the k most likely
            assert token in logits.topk(params["top_k"]).indices.tolist()
        want = logits.double().log_softmax(-1)[token]
        assert lp == pytest.approx(float(want), abs=1e-4), (params, seq)
        seq.append(token)


# -- text: stop strings and whole characters -----------------------------------------------------


class ByteTokenizer:
    """One token per UTF-8 byte: a Chinese character takes three tokens."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def stream_pieces(text: str, stop=()) -> tuple[list[str], TextStream]:
    tok = ByteTokenizer()
    stream = TextStream(tok, stop)
    pieces = []
    for t in tok.encode(text):
        pieces.append(stream.push(t))
        if stream.stopped:
            break
    pieces.append(stream.finish())
    return [p for p in pieces if p], stream


def test_streamed_text_never_holds_half_a_character():
    pieces, _ = stream_pieces("今天天气很好 ok")
    assert "".join(pieces) == "今天天气很好 ok"
    assert all("\ufffd" not in p for p in pieces) and pieces[0] == "今"


@pytest.mark.parametrize("text,stop,want", [
    ("hello world. Bye", ["."], "hello world"),
    ("one\nuser: two", ["\nuser:"], "one"),            # a stop string spanning several tokens
    ("abcabd", ["abd", "ca"], "ab"),                  # the earliest of several stops wins
    ("天气很好。明天", ["。"], "天气很好"),             # a multi-byte stop string
    ("no stop here", ["zz"], "no stop here"),
    ("ends with a partial sto", ["stop"], "ends with a partial sto"),  # held back, then released at the end
])
def test_stop_strings_cut_exactly_and_are_not_returned(text, stop, want):
    pieces, stream = stream_pieces(text, stop)
    assert "".join(pieces) == want
    assert stream.stopped == (want != text)


def test_text_that_may_begin_a_stop_string_is_held_back():
    tok = ByteTokenizer()
    stream = TextStream(tok, ["END"])
    shown = "".join(stream.push(t) for t in tok.encode("abE"))
    assert shown == "ab"  # "E" could begin END
    shown += "".join(stream.push(t) for t in tok.encode("x"))
    assert shown == "abEx"


# -- through the run directory: context, truncation, rope scaling, the CLI ------------------------


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    from rotary.train.loop import train
    from tests.train_support import make_recipe, write_corpus

    tmp = tmp_path_factory.mktemp("gen")
    cfg = make_recipe(tmp / "run", write_corpus(tmp / "corpus", 20), model={"preset": "tiny", "max_seq_len": 32},
                      max_steps=30, eval_interval=30, checkpoint_interval=30)
    train(cfg)
    return cfg.run_dir


def test_a_prompt_longer_than_the_context_is_refused_or_cut_from_the_left(lm_run):
    from rotary.infer.pretrained import load

    pre = load(lm_run, device="cpu")
    long = "Shall I compare thee to a summer's day? " * 6
    n = len(pre.tokenizer.encode(long))
    assert n > 32
    with pytest.raises(RotaryError, match="--truncate left"):
        pre.generate(long, 8)
    (c,) = pre.complete(long, 8, temperature=0, truncate="left")
    assert c.prompt_tokens == 32 - 8 and c.truncated_tokens == n - 24
    # the same as giving the prompt's end yourself
    end = pre.tokenizer.decode(pre.tokenizer.encode(long)[-24:])
    assert pre.tokenizer.encode(end) == pre.tokenizer.encode(long)[-24:]
    assert c.text == pre.generate(end, 8, temperature=0)
    with pytest.raises(RotaryError, match="no room"):
        pre.generate("a", 32)


def test_rope_scaling_at_inference_extends_the_context_exactly_as_the_config_says(lm_run):
    from rotary.infer.pretrained import load

    pre = load(lm_run, device="cpu", rope_scaling="yarn", rope_factor=4)
    cfg = pre.model.config
    assert pre.context == 128 and cfg.rope_original_max_seq_len == 32 and cfg.rope_scaling == "yarn"
    # the same function as a model built with that config and the same weights
    built = CausalLM(cfg).eval()
    built.load_state_dict(pre.model.state_dict())
    ids = torch.randint(0, cfg.vocab_size, (2, 100))
    with torch.no_grad():
        torch.testing.assert_close(pre.model(ids), built(ids))
    text = pre.generate("To be", 90, temperature=0)  # past the trained 32 positions
    assert len(pre.tokenizer.encode(text)) > 32
    with pytest.raises(RotaryError, match="both a method"):
        load(lm_run, device="cpu", rope_factor=4)
    with pytest.raises(RotaryError, match="must be > 1"):
        load(lm_run, device="cpu", rope_scaling="linear", rope_factor=0.5)


def test_one_sampling_object_or_its_field_names_and_a_misspelt_one_is_named(lm_run, lm):
    """``sampling=SamplingParams(...)`` is what the CLI and the server hand down; keyword
    arguments with its field names replace its values; a misspelt one is an error, not ignored."""
    from rotary import SamplingParams
    from rotary.infer.pretrained import load

    pre = load(lm_run, device="cpu")
    params = SamplingParams(temperature=0.9, top_k=5, seed=3)
    sampled = pre.generate("To be", 12, sampling=params)
    assert sampled == pre.generate("To be", 12, temperature=0.9, top_k=5, seed=3)
    assert pre.generate("To be", 12, sampling=params, temperature=0) == pre.generate("To be", 12, temperature=0)
    (c,) = pre.complete("To be", 12, sampling=params, logprobs=True)
    assert c.text == sampled and len(c.logprobs) == len(c.token_ids)
    assert generate(lm, [[5, 17, 3]], 10, sampling=params) == generate(lm, [[5, 17, 3]], 10, temperature=0.9,
                                                                       top_k=5, seed=3)
    for call in (lambda: pre.generate("To be", 12, topk=5), lambda: generate(lm, [[5]], 4, topk=5)):
        with pytest.raises(RotaryError, match="unknown sampling option 'topk': the options are temperature, top_k"):
            call()


def test_generate_cli_json_num_samples_stop_and_logprobs(lm_run, capsys):
    from rotary.cli import main
    from rotary.infer.pretrained import load

    pre = load(lm_run)  # on the device the CLI picks (auto), to compare its logprobs there

    assert main(["generate", str(lm_run), "--prompt", "To be", "--prompt", "The", "--max-new-tokens", "6",
                 "--num-samples", "2", "--seed", "3", "--json", "--logprobs"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["prompt"], r["sample"]) for r in records] == [("To be", 0), ("To be", 1), ("The", 0), ("The", 1)]
    for r in records:
        assert r["finish_reason"] in ("stop", "length") and len(r["logprobs"]) == len(r["token_ids"])
        assert r["usage"]["completion_tokens"] == len(r["token_ids"])
        # each logprob is the model's log_softmax at its token, from one full forward of the row
        prompt = pre.tokenizer.encode(r["prompt"])
        with torch.no_grad():
            ids = torch.tensor([prompt + r["token_ids"]], device=pre.model.device)
            logp = pre.model(ids)[0].double().log_softmax(-1)
        want = [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(r["token_ids"])]
        assert r["logprobs"] == pytest.approx(want, abs=1e-4)
    # greedy with a stop string: the text ends where the stop string began, without it
    assert main(["generate", str(lm_run), "--prompt", "To be", "--max-new-tokens", "20", "--temperature", "0",
                 "--json"]) == 0
    full = json.loads(capsys.readouterr().out)["text"]
    stop = full.strip()[3:5]
    assert stop and stop in full
    assert main(["generate", str(lm_run), "--prompt", "To be", "--max-new-tokens", "20", "--temperature", "0",
                 "--json", "--stop", stop]) == 0
    cut = json.loads(capsys.readouterr().out)
    assert cut["text"] == full[:full.index(stop)] and cut["finish_reason"] == "stop"
    # bf16 weights decode through the same engine (outputs differ from fp32 only by rounding)
    assert main(["generate", str(lm_run), "--prompt", "To be", "--max-new-tokens", "5", "--temperature", "0",
                 "--json", "--precision", "bf16"]) == 0
    assert json.loads(capsys.readouterr().out)["usage"]["completion_tokens"] >= 1
    for bad in (["--factor", "2"], ["--min-p", "2"], ["--num-samples", "0"], ["--repetition-penalty", "0"],
                ["--seed", "-1"], ["--seed", str(2**64)], ["--seed", str(2**63 - 1), "--num-samples", "2"]):
        assert main(["generate", str(lm_run), "--prompt", "x", *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("rotary"), err
        assert "--seed" not in bad or "seed must be between 0 and 2**63" in err[0], err


def test_int8_weights_from_the_cli_decode_and_score_close_to_fp32(lm_run, tmp_path, capsys):
    """``--quantize int8`` loads the run with int8 linear layers for generate and eval; the
    quantized model's held-out loss is within 1% of fp32's, and a bad value is one line."""
    from rotary.cli import main
    from rotary.infer.pretrained import load
    from rotary.ops.int8_linear import is_quantized

    assert is_quantized(load(lm_run, device="cpu", quantize="int8").model)
    assert main(["generate", str(lm_run), "--prompt", "To be", "--max-new-tokens", "5", "--temperature", "0",
                 "--json", "--quantize", "int8", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["usage"]["completion_tokens"] >= 1
    corpus = str(lm_run.parent / "corpus")
    records = {}
    for name, extra in (("fp32", []), ("int8", ["--quantize", "int8"])):
        out = str(tmp_path / name)
        assert main(["eval", str(lm_run), "--corpus", corpus, "--device", "cpu", "--out", out, *extra]) == 0
        capsys.readouterr()
        records[name] = json.loads((tmp_path / name / "eval.json").read_text())
    assert records["int8"]["quantize"] == "int8" and "quantize" not in records["fp32"]
    assert records["int8"]["loss"] == pytest.approx(records["fp32"]["loss"], rel=0.01)
    assert records["int8"]["loss"] != records["fp32"]["loss"]  # it did score other weights
    with pytest.raises(RotaryError, match="unknown quantization 'int4'"):
        load(lm_run, device="cpu", quantize="int4")
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", str(lm_run), "--prompt", "x", "--quantize", "int4"])
    assert exit_info.value.code == 2 and "invalid choice: 'int4'" in capsys.readouterr().err


def test_the_readme_stop_line_stops_at_a_blank_line(tmp_path, capsys):
    """The README's `--stop "\\n\\n"` reaches rotary as a backslash and an n (the shell keeps them):
    rotary reads the usual escapes, so the line stops at the first blank line."""
    import shlex

    from rotary.cli import main
    from rotary.commands.generate import unescape
    from rotary.train.loop import train
    from tests.cli.test_readme import readme_commands
    from tests.train_support import LINES, make_recipe

    (line,) = [argv for argv in readme_commands() if argv[0] == "generate" and "--stop" in argv]
    assert line[line.index("--stop") + 1] == "\\n\\n" and unescape("\\n\\n") == "\n\n"
    assert shlex.split('--stop "a\\tb"') == ["--stop", "a\\tb"] and unescape("a\\tb\\\\n\\x") == "a\tb\\n\\x"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):  # verse in stanzas: a blank line after every line
        (corpus / f"{i}.txt").write_text("".join(f"ROMEO: {LINES[(i + j) % 7]}\n\n" for j in range(6)))
    cfg = make_recipe(tmp_path / "run", corpus, model={"preset": "tiny", "max_seq_len": 64}, seq_len=64,
                      max_steps=40, eval_interval=40, checkpoint_interval=40)
    train(cfg)
    argv = [str(cfg.run_dir) if a == "runs/demo" else a for a in line]
    argv[argv.index("--max-new-tokens") + 1] = "60"  # the context is 64 here
    assert main([*argv, "--seed", "0", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["finish_reason"] == "stop" and "\n\n" not in record["text"], record

