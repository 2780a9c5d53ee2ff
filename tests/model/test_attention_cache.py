"""Attention (masks, GQA/MQA) and the KV cache: incremental decoding equals full forward passes.

Models here run in float64 so that "equal" can mean 1e-10, far below every effect a bug would
cause (the naive dynamic-NTK cache below differs by ~1e-3).
"""

import math
from functools import partial

import pytest
import torch

from rotary.errors import RotaryError
from rotary.model import CausalLM, MaskedLM
from rotary.model.attention import Attention, AttentionContext, build_attention_mask
from rotary.model.rope import RotaryEmbedding, rope_factors
from tests.tiny import build, tiny_config

TOL = dict(rtol=0, atol=1e-10)
VOCAB = 50
TOTAL = 40  # tokens decoded: well past the original context of 16


tiny = partial(tiny_config, vocab_size=VOCAB, initializer_range=0.1)  # larger than 0.02: position effects show


def padded_batch(total=TOTAL, pads=(0, 5, 12), seed=1):
    """Token ids and a left-padding mask: row i starts with pads[i] padding tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (len(pads), total), generator=g)
    mask = torch.ones(len(pads), total, dtype=torch.long)
    for row, p in enumerate(pads):
        ids[row, :p] = 0
        mask[row, :p] = 0
    return ids, mask


def decode_in_chunks(model, ids, mask, chunks):
    """Logits from feeding ``ids`` through a KV cache ``chunks[0]`` tokens, then ``chunks[1]``..."""
    assert sum(chunks) == ids.shape[1]
    cache = model.new_kv_cache(ids.shape[0], ids.shape[1])
    out, t = [], 0
    with torch.no_grad():
        for c in chunks:
            m = None if mask is None else mask[:, : t + c]
            out.append(model(ids[:, t : t + c], m, kv_cache=cache))
            t += c
    assert cache.length == ids.shape[1]
    return torch.cat(out, dim=1)


def prefix_reference(model, ids, mask, chunks):
    """What each chunk must equal: a fresh full forward over everything up to its end."""
    out, t = [], 0
    with torch.no_grad():
        for c in chunks:
            m = None if mask is None else mask[:, : t + c]
            out.append(model(ids[:, : t + c], m)[:, t : t + c])
            t += c
    return torch.cat(out, dim=1)


PREFIX_THEN_ONES = [10] + [1] * (TOTAL - 10)
MIXED_CHUNKS = [7, 1, 5, 3, 11, 1, 12]

ROPE_VARIANTS = [
    ("none", 1.0),
    ("linear", 4.0),
    ("dynamic_ntk", 2.0),
    ("yarn", 4.0),
]
KV_HEADS = {"mha": None, "gqa": 2, "mqa": 1}


# ---------------------------------------------------------------------------------------------
# Incremental decoding == full forward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [PREFIX_THEN_ONES, MIXED_CHUNKS], ids=["prefix+ones", "chunks"])
@pytest.mark.parametrize("heads", list(KV_HEADS), ids=list(KV_HEADS))
@pytest.mark.parametrize("scaling,factor", ROPE_VARIANTS, ids=[v[0] for v in ROPE_VARIANTS])
def test_kv_cache_matches_full_forward_with_rope(scaling, factor, heads, chunks):
    # Dynamic NTK re-bases every position when the length grows, so a layer's hidden states at
    # earlier positions depend on the length at which they were computed; the cache can keep
    # layer 0 exact (it stores unrotated keys) but deeper layers' cached K/V were computed under
    # the older base. Exactness is therefore a one-layer property for dynamic NTK.
    n_layer = 1 if scaling == "dynamic_ntk" else 2
    cfg = tiny(
        n_kv_head=KV_HEADS[heads], n_layer=n_layer, rope_scaling=scaling,
        rope_scaling_factor=factor, rope_original_max_seq_len=16,
    )
    model = build(CausalLM, cfg)
    ids, mask = padded_batch()
    got = decode_in_chunks(model, ids, mask, chunks)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, prefix_reference(model, ids, mask, chunks), **TOL)
    if scaling != "dynamic_ntk":
        # causal and length-independent: one full pass over all 40 tokens gives the same logits
        with torch.no_grad():
            full = model(ids, mask)
        torch.testing.assert_close(got, full, **TOL)


@pytest.mark.parametrize("scaling,factor", ROPE_VARIANTS, ids=[v[0] for v in ROPE_VARIANTS])
def test_kv_cache_matches_full_forward_without_padding(scaling, factor):
    cfg = tiny(n_kv_head=2, n_layer=1, rope_scaling=scaling, rope_scaling_factor=factor)
    model = build(CausalLM, cfg)
    ids, _ = padded_batch(pads=(0, 0))
    for chunks in (PREFIX_THEN_ONES, MIXED_CHUNKS):
        got = decode_in_chunks(model, ids, None, chunks)
        torch.testing.assert_close(got, prefix_reference(model, ids, None, chunks), **TOL)


@pytest.mark.parametrize("scaling,factor", ROPE_VARIANTS, ids=[v[0] for v in ROPE_VARIANTS])
def test_kv_cache_matches_full_forward_with_partial_rotary(scaling, factor):
    cfg = tiny(
        n_kv_head=2, n_layer=1, rotary_fraction=0.5, rope_scaling=scaling, rope_scaling_factor=factor
    )
    model = build(CausalLM, cfg)
    ids, mask = padded_batch()
    got = decode_in_chunks(model, ids, mask, MIXED_CHUNKS)
    torch.testing.assert_close(got, prefix_reference(model, ids, mask, MIXED_CHUNKS), **TOL)


@pytest.mark.parametrize("position,max_len", [("learned", 48), ("sinusoidal", 16), ("none", 16)])
def test_kv_cache_matches_full_forward_for_absolute_positions(position, max_len):
    cfg = tiny(position=position, max_seq_len=max_len, n_kv_head=2)
    model = build(CausalLM, cfg)
    ids, mask = padded_batch()
    with torch.no_grad():
        full = model(ids, mask)
    for chunks in (PREFIX_THEN_ONES, MIXED_CHUNKS):
        torch.testing.assert_close(decode_in_chunks(model, ids, mask, chunks), full, **TOL)


def test_naive_dynamic_ntk_cache_would_differ():
    """transformers #25104: keys cached after rotation keep the base of the step they came in.

    Toggling the cache to store rotated keys must break the equality above past the original
    context (the base changes there) and only there.
    """
    cfg = tiny(n_layer=1, rope_scaling="dynamic_ntk", rope_scaling_factor=2.0)
    model = build(CausalLM, cfg)
    ids, mask = padded_batch()
    ref = prefix_reference(model, ids, mask, PREFIX_THEN_ONES)

    cache = model.new_kv_cache(ids.shape[0], TOTAL)
    assert cache.stores_unrotated_keys
    cache.stores_unrotated_keys = False  # what a naive cache does
    out, t = [], 0
    with torch.no_grad():
        for c in PREFIX_THEN_ONES:
            out.append(model(ids[:, t : t + c], mask[:, : t + c], kv_cache=cache))
            t += c
    naive = torch.cat(out, dim=1)
    # within the original context of 16 the base has not moved: the naive cache is fine...
    torch.testing.assert_close(naive[:, :16], ref[:, :16], **TOL)
    # ... past it, the stale keys change the logits
    diff = (naive[:, 17:] - ref[:, 17:]).abs().amax(dim=(0, 2))
    assert (diff > 1e-4).all(), diff
    # and the last step is also off from a single full forward over all 40 tokens
    with torch.no_grad():
        full = model(ids, mask)
    assert (naive[:, -1] - full[:, -1]).abs().max() > 1e-4
    # the real cache matches it
    real = decode_in_chunks(model, ids, mask, PREFIX_THEN_ONES)
    torch.testing.assert_close(real[:, -1], full[:, -1], **TOL)


def test_cache_overflow_is_a_clear_error():
    model = build(CausalLM, tiny())
    cache = model.new_kv_cache(1, 8)
    model(torch.ones(1, 6, dtype=torch.long), kv_cache=cache)
    with pytest.raises(RotaryError, match="KV cache holds 8 positions"):
        model(torch.ones(1, 3, dtype=torch.long), kv_cache=cache)


def test_attention_mask_must_cover_cached_and_new_tokens():
    model = build(CausalLM, tiny())
    cache = model.new_kv_cache(1, 8)
    model(torch.ones(1, 4, dtype=torch.long), kv_cache=cache)
    with pytest.raises(RotaryError, match="attention_mask"):
        model(torch.ones(1, 1, dtype=torch.long), torch.ones(1, 1), kv_cache=cache)


@pytest.mark.parametrize("index", [[2, 0, 1], [2, 2, 0], [1]], ids=["permute", "beams", "prune"])
@pytest.mark.parametrize("scaling,factor", [("none", 1.0), ("dynamic_ntk", 2.0)])
def test_decoding_after_reorder_equals_decoding_the_reordered_prompts(scaling, factor, index):
    """Beam search keeps, repeats and drops rows of the cache between steps (``reorder``)."""
    cfg = tiny(n_layer=1, n_kv_head=2, rope_scaling=scaling, rope_scaling_factor=factor)
    model = build(CausalLM, cfg)
    ids, mask = padded_batch(total=24)
    prompt, chunks = 10, [1, 3, 1, 9]
    index = torch.tensor(index)
    cache = model.new_kv_cache(ids.shape[0], ids.shape[1])
    with torch.no_grad():
        model(ids[:, :prompt], mask[:, :prompt], kv_cache=cache)
    cache.reorder(index)
    assert cache.batch_size == len(index) and cache.length == prompt
    out, t = [], prompt
    with torch.no_grad():
        for c in chunks:
            out.append(model(ids[index, t : t + c], mask[index, : t + c], kv_cache=cache))
            t += c
    got = torch.cat(out, dim=1)
    want = decode_in_chunks(model, ids[index], mask[index], [prompt, *chunks])[:, prompt:]
    torch.testing.assert_close(got, want, **TOL)


# ---------------------------------------------------------------------------------------------
# Padding: positions come from the mask, padded positions have no influence
# ---------------------------------------------------------------------------------------------


PADDING_CASES = [
    *[("rope", s, f) for s, f in ROPE_VARIANTS],
    ("learned", "none", 1.0),
    ("sinusoidal", "none", 1.0),
    ("none", "none", 1.0),
]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize(
    "position,scaling,factor", PADDING_CASES, ids=[f"{p}-{s}" for p, s, _ in PADDING_CASES]
)
def test_left_padded_row_equals_the_row_alone(position, scaling, factor, causal):
    """Left padding must not shift positions (the model derives them from the mask) nor leak.

    30 tokens against an original context of 16, so every scaling variant is active.
    """
    cfg = tiny(
        position=position, rope_scaling=scaling, rope_scaling_factor=factor, causal=causal,
        max_seq_len=16 if position != "learned" else 32, n_kv_head=2,
    )
    model = build(CausalLM, cfg)
    ids, mask = padded_batch(total=30, pads=(0, 6, 11))
    with torch.no_grad():
        batch = model(ids, mask)
        for row, p in enumerate((0, 6, 11)):
            alone = model(ids[row : row + 1, p:])
            torch.testing.assert_close(batch[row : row + 1, p:], alone, **TOL)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("cls", [CausalLM, MaskedLM], ids=["causal", "masked"])
def test_pad_content_does_not_influence_real_tokens(cls, side):
    causal = cls is CausalLM
    cfg = tiny(causal=causal, n_kv_head=2)
    model = build(cls, cfg)
    ids, mask = padded_batch(total=20, pads=(0, 4, 9))
    if side == "right":
        ids, mask = ids.flip(1), mask.flip(1)
    real = mask.bool()
    g = torch.Generator().manual_seed(5)
    other = ids.clone()
    other[~real] = torch.randint(1, VOCAB, (int((~real).sum()),), generator=g)
    with torch.no_grad():
        a = model(ids, mask)
        b = model(other, mask)
        torch.testing.assert_close(a[real], b[real], **TOL)
        # without the mask the padding does matter (unless causal order already hides it)
        if not (causal and side == "right"):
            assert (model(ids)[real] - model(other)[real]).abs().max() > 1e-4


def test_fully_padded_rows_give_no_nans():
    for cls, causal in ((CausalLM, True), (MaskedLM, False)):
        model = build(cls, tiny(causal=causal, n_kv_head=1))
        ids, mask = padded_batch(total=12, pads=(0, 12, 3))
        with torch.no_grad():
            out = model(ids, mask)
            assert torch.isfinite(out).all()
            torch.testing.assert_close(out[2:, 3:], model(ids[2:, 3:]), **TOL)
    # and through the cache, where the fully padded row stays padded for a few steps
    model = build(CausalLM, tiny(n_kv_head=2))
    ids, mask = padded_batch(total=20, pads=(0, 12))
    got = decode_in_chunks(model, ids, mask, [8, 1, 1, 1, 1, 1, 1, 1, 1, 4])
    assert torch.isfinite(got).all()


# ---------------------------------------------------------------------------------------------
# Causal vs bidirectional, and the attention math itself
# ---------------------------------------------------------------------------------------------


def test_causal_model_ignores_the_future_and_encoder_does_not():
    ids = torch.randint(1, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, 8] = (ids[:, 8] + 1) % VOCAB
    for causal in (True, False):
        model = build(CausalLM, tiny(causal=causal))
        with torch.no_grad():
            a, b = model(ids), model(changed)
        assert (a[:, 8:] - b[:, 8:]).abs().max() > 1e-4  # the changed token and after
        before = (a[:, :8] - b[:, :8]).abs().max()
        if causal:
            assert before <= 1e-12
        else:
            assert before > 1e-4


def reference_attention(attn: Attention, x, positions, base, allowed):
    """Multi-head attention with RoPE written out: the RoFormer/Llama formulas, no SDPA.

    ``allowed`` (B, T, T) bool; K/V heads are repeated for grouped queries.
    """
    B, T, _ = x.shape
    h, kvh, hd = attn.n_head, attn.n_kv_head, attn.head_dim
    qkv = x @ attn.qkv_proj.weight.T
    if attn.qkv_proj.bias is not None:
        qkv = qkv + attn.qkv_proj.bias
    q = qkv[..., : h * hd].reshape(B, T, h, hd)
    k = qkv[..., h * hd : (h + kvh) * hd].reshape(B, T, kvh, hd)
    v = qkv[..., (h + kvh) * hd :].reshape(B, T, kvh, hd)

    def rotate(t):  # pair (i, i + hd/2) rotated by m * base^(-2i/hd)
        half = hd // 2
        theta = base ** (-2 * torch.arange(half, dtype=torch.float64) / hd)
        ang = positions.double()[..., None] * theta  # (B, T, half)
        c, s = ang.cos()[:, :, None], ang.sin()[:, :, None]
        a, b = t[..., :half], t[..., half:]
        return torch.cat([a * c - b * s, b * c + a * s], dim=-1)

    q, k = rotate(q), rotate(k)
    group = h // kvh
    k = k.repeat_interleave(group, dim=2)  # query head j uses kv head j // group
    v = v.repeat_interleave(group, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    y = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(B, T, h * hd)
    out = y @ attn.o_proj.weight.T
    return out if attn.o_proj.bias is None else out + attn.o_proj.bias


@pytest.mark.parametrize("kv", [4, 2, 1])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("padded", [False, True])
def test_attention_module_against_written_out_formula(kv, causal, padded):
    cfg = tiny(n_kv_head=kv, causal=causal, bias=True)
    torch.manual_seed(0)
    attn = Attention(cfg, 0).double()
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.2)
    B, T = 2, 9
    x = torch.randn(B, T, cfg.d_model, dtype=torch.float64)
    key_padding = torch.ones(B, T, dtype=torch.bool)
    if padded:
        key_padding[1, :3] = False  # left padding on row 1
    positions = (key_padding.long().cumsum(-1) - 1).clamp(min=0)

    ctx = AttentionContext()
    ctx.cos, ctx.sin = rope_factors(*RotaryEmbedding(cfg)(T, positions))
    ctx.mask, ctx.is_causal = build_attention_mask(key_padding if padded else None, causal, 0, T)
    got = attn(x, ctx)

    idx = torch.arange(T)
    allowed = (idx[None, :] <= idx[:, None]) if causal else torch.ones(T, T, dtype=torch.bool)
    allowed = allowed[None] & key_padding[:, None, :]
    allowed = allowed | torch.eye(T, dtype=torch.bool)  # a padded query sees itself only
    want = reference_attention(attn, x, positions, cfg.rope_theta, allowed)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kv", [2, 1], ids=["gqa", "mqa"])
def test_gqa_equals_mha_with_repeated_kv_heads(kv):
    cfg = tiny(n_kv_head=kv)
    gqa = build(CausalLM, cfg)
    mha = build(CausalLM, cfg.replace(n_kv_head=None), seed=1)
    h, hd, d = cfg.n_head, cfg.head_dim, cfg.d_model
    group = h // kv
    state = gqa.state_dict()
    for name, w in list(state.items()):
        if name.endswith("qkv_proj.weight"):
            q, k, v = w.split([h * hd, kv * hd, kv * hd])
            rep = lambda t: t.reshape(kv, hd, d).repeat_interleave(group, 0).reshape(h * hd, d)  # noqa: E731
            state[name] = torch.cat([q, rep(k), rep(v)])
    mha.load_state_dict(state)
    ids, mask = padded_batch(total=24, pads=(0, 5))
    with torch.no_grad():
        torch.testing.assert_close(mha(ids, mask), gqa(ids, mask), rtol=0, atol=1e-9)
        # a head mapping that is not j // group (e.g. j % kv) would not match
        if kv > 1:
            wrong = dict(state)
            for name, w in gqa.state_dict().items():
                if name.endswith("qkv_proj.weight"):
                    q, k, v = w.split([h * hd, kv * hd, kv * hd])
                    tile = lambda t: t.reshape(kv, hd, d).repeat(group, 1, 1).reshape(h * hd, d)  # noqa: E731
                    wrong[name] = torch.cat([q, tile(k), tile(v)])
            mha.load_state_dict(wrong)
            assert (mha(ids, mask) - gqa(ids, mask)).abs().max() > 1e-4


def test_mask_builder_shapes_and_self_attention():
    mask, is_causal = build_attention_mask(None, True, 0, 5)
    assert mask is None and is_causal
    mask, is_causal = build_attention_mask(None, False, 0, 5)
    assert mask is None and not is_causal
    pad = torch.tensor([[0, 0, 1, 1, 1, 1]])
    mask, is_causal = build_attention_mask(pad, True, 4, 2)
    assert mask.shape == (1, 1, 2, 6) and not is_causal
    assert mask[0, 0].tolist() == [
        [False, False, True, True, True, False],
        [False, False, True, True, True, True],
    ]
