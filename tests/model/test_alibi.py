"""ALiBi: the paper's slopes (transformers' BLOOM as the oracle), the bias against a direct
computation, and the invariants every position scheme keeps here: KV-cache decode == full
forward, left padding == the row alone, and the decode engine's slots == full forwards."""

import math
from functools import partial

import pytest
import torch

from rotary.errors import RotaryError
from rotary.infer.generate import generate
from rotary.model import CausalLM, MaskedLM
from rotary.model.alibi import alibi_slopes
from tests.tiny import build, tiny_config

VOCAB = 50


tiny = partial(tiny_config, vocab_size=VOCAB, n_kv_head=2, position="alibi", initializer_range=0.1)


@pytest.mark.parametrize("n_head", [1, 2, 3, 4, 5, 6, 8, 12, 16, 20])
def test_slopes_match_transformers_bloom(n_head):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    mask = torch.ones(1, 2)
    # BLOOM's tensor is slope * position: at position 1 it is the slope itself
    hf = build_alibi_tensor(mask, n_head, torch.float32)[:, 0, 1]  # (H,)
    torch.testing.assert_close(alibi_slopes(n_head), hf, rtol=1e-6, atol=0)


def test_slopes_are_the_papers():
    assert alibi_slopes(8).tolist() == [2.0 ** -i for i in range(1, 9)]
    # 6 heads: the 4-head sequence, then every other slope of the 8-head one
    assert alibi_slopes(6).tolist() == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]


def naive_attention_output(model, ids):
    """Layer 0's attention output from an explicit score matrix with -slope * (i - j) added."""
    cfg = model.config
    layer = model.backbone.layers[0]
    x = layer.attn_norm(model.backbone.embed_tokens(ids))
    B, T, _ = x.shape
    hd, H, KV = cfg.head_dim, cfg.n_head, cfg.kv_heads
    q, k, v = layer.attn.qkv_proj(x).split([H * hd, KV * hd, KV * hd], dim=-1)
    q = q.view(B, T, H, hd).transpose(1, 2)
    k = k.view(B, T, KV, hd).transpose(1, 2).repeat_interleave(H // KV, dim=1)
    v = v.view(B, T, KV, hd).transpose(1, 2).repeat_interleave(H // KV, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # (B, H, T, T)
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    slopes = alibi_slopes(H).double()[:, None, None]
    scores = scores - slopes * (i - j).abs()
    if cfg.causal:
        scores = scores.masked_fill(j > i, float("-inf"))
    y = scores.softmax(-1) @ v  # (B, H, T, hd)
    return layer.attn.o_proj(y.transpose(1, 2).reshape(B, T, H * hd))


@pytest.mark.parametrize("causal", [True, False])
def test_bias_equals_a_direct_computation(causal):
    model = build(CausalLM if causal else MaskedLM, tiny(causal=causal, n_head=6, n_kv_head=3, d_model=48))
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    captured = {}
    hook = model.backbone.layers[0].attn.register_forward_hook(lambda m, a, out: captured.setdefault("y", out))
    with torch.no_grad():
        model(ids)
        expected = naive_attention_output(model, ids)
    hook.remove()
    torch.testing.assert_close(captured["y"], expected, rtol=0, atol=1e-10)


def test_has_no_position_embeddings_and_depends_on_distance_only():
    model = build(CausalLM, tiny())
    assert model.backbone.embed_positions is None and model.backbone.rope is None
    # shifting every position by a constant changes nothing: the bias sees distances only
    ids = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = model(ids)
        b = model(ids, position_ids=torch.arange(10)[None] + 37)
        c = model(ids, position_ids=(torch.arange(10) * 2)[None])  # distances doubled: differs
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert (a - c).abs().max() > 1e-4


def test_kv_cache_decode_equals_full_forward():
    model = build(CausalLM, tiny())
    ids = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(2))  # past max_seq_len
    cache = model.new_kv_cache(3, 40)
    with torch.no_grad():
        full = model(ids)
        parts = [model(ids[:, :9], kv_cache=cache)] + [model(ids[:, t:t + 1], kv_cache=cache) for t in range(9, 40)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=0, atol=1e-10)


def test_left_padding_gives_each_row_its_own_result():
    model = build(CausalLM, tiny())
    g = torch.Generator().manual_seed(3)
    rows = [torch.randint(1, VOCAB, (n,), generator=g) for n in (20, 14, 7)]
    ids = torch.zeros(3, 20, dtype=torch.long)
    mask = torch.zeros(3, 20, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, 20 - len(row):] = row
        mask[r, 20 - len(row):] = 1
    with torch.no_grad():
        batch = model(ids, attention_mask=mask)
        cache = model.new_kv_cache(3, 26)
        model(ids, attention_mask=mask, kv_cache=cache)
        extra = torch.randint(1, VOCAB, (3, 6), generator=g)
        steps = [model(extra[:, t:t + 1], attention_mask=torch.cat([mask, torch.ones(3, t + 1, dtype=torch.long)], 1),
                       kv_cache=cache) for t in range(6)]
        for r, row in enumerate(rows):
            alone = model(torch.cat([row, extra[r]])[None])
            torch.testing.assert_close(batch[r, 20 - len(row):], alone[0, :len(row)], rtol=0, atol=1e-10)
            torch.testing.assert_close(torch.cat(steps, 1)[r], alone[0, len(row):], rtol=0, atol=1e-10)


def test_engine_generation_equals_greedy_full_forwards():
    torch.manual_seed(4)
    model = CausalLM(tiny()).eval()
    prompts = [[3, 4, 5, 6, 7], [9, 8], [1, 2, 3]]
    got = generate(model, prompts, 12, temperature=0.0)
    for prompt, new in zip(prompts, got):
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(12):
                seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        assert new == seq[len(prompt):]


def test_engine_prefill_of_equal_length_prompts_stays_causal():
    # prompts of one length prefill without a padding mask (SDPA's causal flag, mask None): the
    # ALiBi mask must then add the causal part itself, or layer 1 sees later prompt tokens
    torch.manual_seed(5)
    model = CausalLM(tiny()).eval()
    prompts = [[3, 4, 5, 6, 7, 8], [9, 8, 7, 6, 5, 4]]
    got = generate(model, prompts, 6, temperature=0.0)
    for prompt, new in zip(prompts, got):
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(6):
                seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        assert new == seq[len(prompt):]

def test_alibi_refuses_rope_scaling_and_linear_attention():
    with pytest.raises(RotaryError, match="rope_scaling=linear needs position=rope"):
        tiny(rope_scaling="linear", rope_scaling_factor=2.0)
    with pytest.raises(RotaryError, match="linear attention"):
        tiny(attention="linear")


@pytest.mark.parametrize("kw", [dict(position="alibi"), dict(position="rope", attention="linear")])
def test_conversion_to_transformers_refuses_what_llama_cannot_express(kw):
    from rotary.hf import to_hf

    model = CausalLM(tiny(**kw))
    with pytest.raises(RotaryError, match="position=alibi|attention=linear"):
        to_hf(model)
