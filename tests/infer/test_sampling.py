"""``sample_next`` and ``generate()`` against hand-built distributions and a step-by-step decode:
exact top-k / top-p sets, temperature, greedy, EOS, left padding, seeds, streaming."""

from __future__ import annotations

import math

import pytest
import torch

from rotary.errors import RotaryError
from rotary.infer.generate import generate
from rotary.infer.sampling import sample_next
from rotary.model import CausalLM
from rotary.model.config import ModelConfig

DRAWS = 4000  # rows per sampling call: a token of probability >= 0.05 is drawn ~200 times


def logits_of(*probs: float) -> torch.Tensor:
    """(1, vocab) logits whose softmax is ``probs``."""
    return torch.tensor([probs], dtype=torch.float64).log().float()


def drawn(logits: torch.Tensor, seed: int = 0, **kw) -> torch.Tensor:
    """DRAWS samples from the one-row ``logits`` (as a batch of identical rows)."""
    g = torch.Generator().manual_seed(seed)
    return sample_next(logits.expand(DRAWS, -1), generator=g, **kw)


def support(samples: torch.Tensor) -> set[int]:
    return set(samples.unique().tolist())


def frequencies(samples: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(samples, minlength=vocab).double() / samples.numel()


# Probabilities 0.5, 0.3, 0.15, 0.05, stored out of order so that ranks differ from ids (a top-p
# mask left in sorted order would hit the wrong tokens).
PROBS = (0.05, 0.5, 0.15, 0.3)  # ids by rank: 1, 3, 2, 0


@pytest.mark.parametrize("top_p,allowed", [
    (0.4, {1}),             # 0.5 alone reaches 0.4
    (0.7, {1, 3}),          # 0.5 < 0.7, 0.5 + 0.3 reaches it
    (0.9, {1, 3, 2}),       # 0.8 < 0.9, 0.95 reaches it
    (0.97, {1, 3, 2, 0}),   # 0.95 < 0.97: the last token is needed too
    (1.0, {1, 3, 2, 0}),
])
def test_top_p_keeps_exactly_the_smallest_set_reaching_p(top_p, allowed):
    samples = drawn(logits_of(*PROBS), top_p=top_p)
    assert support(samples) == allowed
    # and the kept tokens keep their relative probabilities (renormalised)
    kept = sum(PROBS[i] for i in allowed)
    want = torch.tensor([PROBS[i] / kept if i in allowed else 0.0 for i in range(4)], dtype=torch.float64)
    torch.testing.assert_close(frequencies(samples, 4), want, atol=0.03, rtol=0)


@pytest.mark.parametrize("top_k,allowed",
                         [(1, {1}), (2, {1, 3}), (3, {1, 3, 2}), (4, {0, 1, 2, 3}), (10, {0, 1, 2, 3})])
def test_top_k_keeps_exactly_the_k_most_likely(top_k, allowed):
    samples = drawn(logits_of(*PROBS), top_k=top_k)
    assert support(samples) == allowed


def test_top_k_then_top_p_and_per_row_sets():
    # row 0: top-k 3 leaves 0.5, 0.3, 0.15 (renormalised 0.526, 0.316, 0.158); top-p 0.8 then
    # needs the third (0.526 + 0.316 = 0.842 reaches it: {1, 3})
    # row 1: another order and another distribution, masked independently of row 0
    rows = torch.cat([logits_of(*PROBS), logits_of(0.1, 0.2, 0.3, 0.4)]).repeat(DRAWS // 2, 1)
    g = torch.Generator().manual_seed(3)
    samples = sample_next(rows, top_k=3, top_p=0.8, generator=g)
    assert support(samples[0::2]) == {1, 3}
    # row 1 after top-k 3: 0.4/0.9, 0.3/0.9, 0.2/0.9 -> 0.444 < 0.8, 0.778 < 0.8, then 1.0
    assert support(samples[1::2]) == {1, 2, 3}


def test_temperature_scales_the_logits_before_sampling():
    logits = logits_of(0.2, 0.8)
    for t in (0.5, 2.0):
        samples = drawn(logits, temperature=t)
        p = torch.tensor([0.2, 0.8], dtype=torch.float64) ** (1 / t)
        torch.testing.assert_close(frequencies(samples, 2), p / p.sum(), atol=0.03, rtol=0)
    # top-p sees the tempered distribution: at t=0.5 it is (0.06, 0.94), and 0.9 needs one token
    assert support(drawn(logits, temperature=0.5, top_p=0.9)) == {1}
    assert support(drawn(logits, temperature=1.0, top_p=0.9)) == {0, 1}


def test_temperature_zero_is_argmax_per_row_and_draws_nothing():
    logits = torch.tensor([[0.1, 3.0, -1.0], [2.0, 1.0, 1.5]])
    g = torch.Generator().manual_seed(0)
    before = g.get_state()
    assert sample_next(logits, temperature=0, generator=g).tolist() == [1, 0]
    assert torch.equal(g.get_state(), before)


def test_seeded_sampling_is_reproducible_and_the_seed_matters():
    logits = logits_of(0.25, 0.25, 0.25, 0.25)
    a, b, c = drawn(logits, seed=5), drawn(logits, seed=5), drawn(logits, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("kw,match", [
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": 0}, "top_k"),
    ({"temperature": float("nan")}, "temperature must be >= 0 and finite"),  # NaN compares False to 0
    ({"temperature": float("inf")}, "temperature must be >= 0 and finite"),
])
def test_bad_sampling_arguments_are_one_line_errors(kw, match):
    with pytest.raises(RotaryError, match=match):
        sample_next(logits_of(0.5, 0.5), **kw)


@pytest.mark.parametrize("penalty", [float("nan"), float("inf"), 0.0])
def test_a_repetition_penalty_that_is_not_a_positive_number_is_refused(penalty):
    from rotary.infer.sampling import check_sampling

    with pytest.raises(RotaryError, match="repetition_penalty must be > 0"):
        check_sampling(repetition_penalty=penalty)


# ---------------------------------------------------------------------------------------------
# generate(): against a decode by full forward passes, one token at a time, no cache
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm() -> CausalLM:
    torch.manual_seed(0)
    # a wide init makes the logits peaked (no argmax near ties under float noise); untied, so a
    # decode does not just repeat the last token (its embedding scores highest against itself)
    cfg = ModelConfig(vocab_size=50, max_seq_len=64, n_layer=2, n_head=4, d_model=32, d_ff=64,
                      n_kv_head=2, initializer_range=0.3, tie_embeddings=False)
    return CausalLM(cfg).eval()


def greedy_reference(model: CausalLM, prompt: list[int], n: int, eos_id: int | None = None) -> list[int]:
    seq = list(prompt)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([seq]))[0, -1].argmax())
            out.append(nxt)
            seq.append(nxt)
            if nxt == eos_id:
                break
    return out


PROMPTS = [[5, 17, 3, 42, 8, 11, 29], [7], [13, 2, 44]]


def test_greedy_generate_equals_a_step_by_step_argmax_decode(lm):
    for prompt in PROMPTS:
        want = greedy_reference(lm, prompt, 12)
        assert len(set(want)) > 4  # a decode that varies, so a wrong context shows
        assert generate(lm, [prompt], 12, temperature=0) == [want]
        # top-k 1 is greedy too, whatever the temperature
        assert generate(lm, [prompt], 12, temperature=1.5, top_k=1, seed=0) == [want]
    # a tensor batch without padding
    batch = torch.tensor([PROMPTS[0], PROMPTS[0][::-1]])
    assert generate(lm, batch, 6, temperature=0) == [greedy_reference(lm, p, 6) for p in batch.tolist()]


def test_a_batch_of_prompts_of_different_lengths_continues_each_as_if_alone(lm):
    assert len({len(p) for p in PROMPTS}) > 1
    assert generate(lm, PROMPTS, 10, temperature=0) == [greedy_reference(lm, p, 10) for p in PROMPTS]


def test_eos_stops_its_row_only_and_is_kept(lm):
    long = greedy_reference(lm, PROMPTS[0], 12)
    eos = long[4]  # row 0 reaches it at its 5th new token (maybe earlier, if it repeats)
    cut = long[: long.index(eos) + 1]
    others = [greedy_reference(lm, p, 12, eos_id=eos) for p in PROMPTS[1:]]
    out = generate(lm, PROMPTS, 12, temperature=0, eos_id=eos)
    assert out[0] == cut and out[0][-1] == eos
    assert out[1:] == others  # the others go on as if alone (each stops at its own EOS)
    assert all(r.count(eos) <= 1 and (eos not in r or r[-1] == eos) for r in out)


def test_generation_stops_when_every_row_has_ended(lm):
    first = greedy_reference(lm, PROMPTS[1], 1)[0]
    steps = []
    out = generate(lm, [PROMPTS[1]], 20, temperature=0, eos_id=first, on_tokens=steps.append)
    assert out == [[first]] and len(steps) == 1  # one forward step, not 20


def test_on_tokens_streams_every_step_in_order(lm):
    steps: list[torch.Tensor] = []
    out = generate(lm, PROMPTS, 7, temperature=0, on_tokens=steps.append)
    assert len(steps) == 7
    assert torch.stack(steps, dim=1).tolist() == out


def test_seeded_sampling_is_reproducible_and_restores_training_mode(lm):
    a = generate(lm, PROMPTS, 8, temperature=1.0, top_p=0.9, seed=1)
    assert a == generate(lm, PROMPTS, 8, temperature=1.0, top_p=0.9, seed=1)
    lm.train()
    try:
        generate(lm, PROMPTS, 2, seed=1)
        assert lm.training
    finally:
        lm.eval()
    assert [len(r) for r in a] == [8, 8, 8]
    assert generate(lm, PROMPTS, 0) == [[], [], []]


def test_sampled_tokens_come_from_the_top_p_set_of_each_step(lm):
    """Sampling follows the model's distribution at every step (the cache feeds the right context):
    each sampled token is in the top-p set computed by a full forward over the sampled prefix."""
    prompt = PROMPTS[0]
    for seed in range(4):
        out = generate(lm, [prompt], 10, temperature=1.0, top_p=0.6, seed=seed)[0]
        seq = list(prompt)
        for tok in out:
            with torch.no_grad():
                probs = lm(torch.tensor([seq]))[0, -1].double().softmax(-1)
            sorted_p, order = probs.sort(descending=True)
            n_keep = int((sorted_p.cumsum(0) - sorted_p < 0.6).sum())
            assert tok in set(order[:n_keep].tolist()), (seed, seq, tok)
            seq.append(tok)


def test_generate_refuses_bad_arguments(lm):
    from rotary.model import MaskedLM

    with pytest.raises(RotaryError, match="max_new_tokens"):
        generate(lm, PROMPTS, -1)
    with pytest.raises(RotaryError, match="at least one token"):
        generate(lm, [[1], []], 3)
    enc = MaskedLM(ModelConfig(vocab_size=50, max_seq_len=16, n_layer=1, n_head=2, d_model=16, causal=False))
    with pytest.raises(RotaryError, match="causal"):
        generate(enc, PROMPTS, 3)


def test_reference_probabilities_are_what_the_tests_assume():
    # guards the hand-built cases above against float surprises near the top-p boundaries
    p = logits_of(*PROBS).double().softmax(-1)[0]
    torch.testing.assert_close(p, torch.tensor(PROBS, dtype=torch.float64), atol=1e-6, rtol=0)
    assert math.isclose(sum(PROBS), 1.0)


def test_pretrained_stream_yields_pieces_that_join_to_generate(tmp_path):
    """The library streams by yielding (the CLI prints): the pieces join to generate()'s text."""
    import io
    from contextlib import redirect_stdout

    from rotary.infer.pretrained import Pretrained
    from rotary.tokenizer import train_tokenizer
    from tests.train_support import write_corpus

    tok = train_tokenizer(write_corpus(tmp_path / "c", 10), "bpe", 300, tmp_path / "tok")
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layer=1, n_head=2, max_seq_len=64))
    pre = Pretrained(model.eval(), tok, tmp_path, {"task": "causal_lm"})
    out = io.StringIO()
    with redirect_stdout(out):
        pieces = list(pre.stream("Shall I", max_new_tokens=12, seed=3))
    assert out.getvalue() == ""  # nothing printed by the library
    assert len(pieces) >= 2 and "".join(pieces) == pre.generate("Shall I", max_new_tokens=12, seed=3)
