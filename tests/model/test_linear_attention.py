"""Linear attention with RoPE (RoFormer section 3.3): the chunked scan equals the paper's formula
computed directly, the running state decodes exactly like a full forward, padding and GQA are
honoured, and RoPE still makes the numerator depend on relative positions only."""

from functools import partial

import pytest
import torch

from rotary.errors import RotaryError
from rotary.infer.generate import generate
from rotary.model import CausalLM, MaskedLM, ModelConfig
from rotary.model.linear_attention import causal_numerator, feature_map
from rotary.model.rope import apply_rope, base_inv_freq, cos_sin
from tests.tiny import build, tiny_config

VOCAB = 50
TOL = dict(rtol=0, atol=1e-10)


tiny = partial(tiny_config, vocab_size=VOCAB, n_kv_head=2, attention="linear", initializer_range=0.1)


def equation_19(q, k, v, positions, causal, rope=True):
    """The paper's eq. 19 with an explicit T x T matrix: (B, H, T, hd) in, (B, H, T, hd) out."""
    fq, fk = feature_map(q), feature_map(k)
    if rope:
        cos, sin = cos_sin(positions, base_inv_freq(q.shape[-1], 10000.0))
        rq, rk = apply_rope(fq, cos.double(), sin.double()), apply_rope(fk, cos.double(), sin.double())
    else:
        rq, rk = fq, fk
    num_w = rq @ rk.transpose(-1, -2)  # (B, H, T, T)
    den_w = fq @ fk.transpose(-1, -2)
    if causal:
        keep = torch.ones(q.shape[2], q.shape[2], dtype=torch.bool).tril()
        num_w, den_w = num_w * keep, den_w * keep
    return (num_w @ v) / (den_w.sum(-1, keepdim=True) + 1e-6)


def attention_output(model, ids, **kw):
    captured = {}
    hook = model.backbone.layers[0].attn.o_proj.register_forward_hook(lambda m, a, out: captured.setdefault("x", a[0]))
    with torch.no_grad():
        model(ids, **kw)
    hook.remove()
    return captured["x"]


@pytest.mark.parametrize("causal,position,T", [(True, "rope", 150), (True, "rope", 40), (False, "rope", 40),
                                               (True, "none", 70)])
def test_model_equals_equation_19(causal, position, T):
    """Layer 0 of the model (chunks of 64, GQA) against the direct formula."""
    cfg = tiny(causal=causal, position=position)
    model = build(CausalLM if causal else MaskedLM, cfg)
    ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(0))
    layer = model.backbone.layers[0]
    with torch.no_grad():
        x = layer.attn_norm(model.backbone.embed_tokens(ids))
        hd, H, KV = cfg.head_dim, cfg.n_head, cfg.kv_heads
        q, k, v = layer.attn.qkv_proj(x).split([H * hd, KV * hd, KV * hd], dim=-1)
        q = q.view(2, T, H, hd).transpose(1, 2)
        k = k.view(2, T, KV, hd).transpose(1, 2).repeat_interleave(H // KV, dim=1)
        v = v.view(2, T, KV, hd).transpose(1, 2).repeat_interleave(H // KV, dim=1)
        expected = equation_19(q, k, v, torch.arange(T), causal, rope=position == "rope")
    got = attention_output(model, ids)
    torch.testing.assert_close(got, expected.transpose(1, 2).reshape(2, T, H * hd), **TOL)


def test_chunk_size_does_not_change_the_result():
    g = torch.Generator().manual_seed(1)
    rq, rk, v = (torch.randn(2, 2, 3, 100, 8, generator=g, dtype=torch.float64),
                 torch.randn(2, 2, 100, 8, generator=g, dtype=torch.float64),
                 torch.randn(2, 2, 100, 8, generator=g, dtype=torch.float64))
    a, sa = causal_numerator(rq, rk, v, None, chunk=7)
    b, sb = causal_numerator(rq, rk, v, None, chunk=100)
    torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(sa, sb, **TOL)
    torch.testing.assert_close(sa, (rk.transpose(-1, -2) @ v), **TOL)


def test_numerator_depends_on_relative_positions_only():
    """Shifting every position by a constant leaves the model's outputs unchanged."""
    model = build(CausalLM, tiny())
    ids = torch.randint(0, VOCAB, (1, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = model(ids)
        b = model(ids, position_ids=torch.arange(30)[None] + 1000)
        c = model(ids, position_ids=(torch.arange(30) * 3)[None])
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # the cos/sin tables are fp32
    assert (a - c).abs().max() > 1e-3


@pytest.mark.parametrize("position", ["rope", "none", "sinusoidal"])
def test_running_state_decode_equals_full_forward(position):
    model = build(CausalLM, tiny(position=position))
    ids = torch.randint(0, VOCAB, (3, 140), generator=torch.Generator().manual_seed(3))
    cache = model.new_kv_cache(3, 140)
    assert cache.state.shape == (2, 3, 2, 8, 8)  # (layers, batch, KV heads, hd, hd): no length
    with torch.no_grad():
        full = model(ids)
        parts = [model(ids[:, :70], kv_cache=cache)]
        parts += [model(ids[:, t:t + 1], kv_cache=cache) for t in range(70, 100)]
        parts.append(model(ids[:, 100:], kv_cache=cache))
    torch.testing.assert_close(torch.cat(parts, 1), full, **TOL)


def test_left_padding_gives_each_row_its_own_result():
    model = build(CausalLM, tiny())
    g = torch.Generator().manual_seed(4)
    rows = [torch.randint(1, VOCAB, (n,), generator=g) for n in (20, 9)]
    ids = torch.zeros(2, 20, dtype=torch.long)
    mask = torch.zeros(2, 20, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, 20 - len(row):], mask[r, 20 - len(row):] = row, 1
    with torch.no_grad():
        batch = model(ids, attention_mask=mask)
        for r, row in enumerate(rows):
            alone = model(row[None])
            torch.testing.assert_close(batch[r, 20 - len(row):], alone[0], **TOL)


def test_left_padded_decode_through_the_running_state_gives_each_row_its_own_logits():
    # decode steps get the whole (past + new) padding mask; only its last T columns are the new
    # keys. Greedy tokens from a random tiny model can hide a wrong column, logits cannot.
    model = build(CausalLM, tiny())
    g = torch.Generator().manual_seed(6)
    rows = [torch.randint(1, VOCAB, (n,), generator=g) for n in (12, 5)]
    ids = torch.zeros(2, 12, dtype=torch.long)
    mask = torch.zeros(2, 12, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, 12 - len(row):], mask[r, 12 - len(row):] = row, 1
    extra = torch.randint(1, VOCAB, (2, 4), generator=g)
    cache = model.new_kv_cache(2, 16)
    with torch.no_grad():
        model(ids, attention_mask=mask, kv_cache=cache)
        steps = [model(extra[:, t:t + 1], attention_mask=torch.cat([mask, torch.ones(2, t + 1, dtype=torch.long)], 1),
                       kv_cache=cache) for t in range(4)]
        for r, row in enumerate(rows):
            alone = model(torch.cat([row, extra[r]])[None])
            torch.testing.assert_close(torch.cat(steps, 1)[r], alone[0, len(row):], **TOL)


def test_encoder_padding_keys_add_nothing_to_either_sum():
    # an encoder's queries see every key, so padded keys must be removed from the state and the
    # key sum as in the causal scan: a right-padded row scores as it would alone
    model = build(MaskedLM, tiny(causal=False))
    g = torch.Generator().manual_seed(7)
    rows = [torch.randint(1, VOCAB, (n,), generator=g) for n in (14, 6)]
    ids = torch.zeros(2, 14, dtype=torch.long)
    mask = torch.zeros(2, 14, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, :len(row)], mask[r, :len(row)] = row, 1
    with torch.no_grad():
        batch = model(ids, attention_mask=mask)
        for r, row in enumerate(rows):
            torch.testing.assert_close(batch[r, :len(row)], model(row[None])[0], **TOL)

def test_generation_uses_the_running_state_and_equals_greedy_full_forwards():
    torch.manual_seed(5)
    model = CausalLM(tiny()).eval()
    prompts = [[3, 4, 5, 6, 7], [9, 8]]
    got = generate(model, prompts, 10, temperature=0.0)
    for prompt, new in zip(prompts, got):
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(10):
                seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        assert new == seq[len(prompt):]


def test_bf16_autocast_keeps_the_sums_in_fp32_and_trains():
    torch.manual_seed(6)
    model = CausalLM(tiny(max_seq_len=64))
    ids = torch.randint(0, VOCAB, (2, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(ids, targets=ids)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        ref = model(ids, targets=ids)
    assert abs(float(loss.detach()) - float(ref)) < 0.05


def test_bad_combinations_are_refused():
    with pytest.raises(RotaryError, match="attention_dropout"):
        tiny(attention_dropout=0.1)
    with pytest.raises(RotaryError, match="dynamic_ntk"):
        tiny(rope_scaling="dynamic_ntk", rope_scaling_factor=2.0)
    with pytest.raises(RotaryError, match="attention"):
        ModelConfig.from_dict({"preset": "tiny", "attention": "performer"})


def test_yarn_temperature_does_not_scale_linear_attention():
    """YaRN folds a softmax temperature into cos/sin; linear attention has no softmax, so the
    temperature must leave it unchanged (it would scale the numerator alone)."""
    import copy

    model = build(CausalLM, tiny(rope_scaling="yarn", rope_scaling_factor=4.0))
    assert model.backbone.rope.attention_scale > 1.1
    plain = copy.deepcopy(model)
    plain.backbone.rope.attention_scale = 1.0
    plain.backbone.rope.cos_table = torch.empty(0)
    plain.backbone.rope._grow(64)  # the same frequencies, no temperature
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), plain(ids), rtol=0, atol=1e-6)
