"""The three heads, parameter and FLOP accounting, initialisation, norms, and that every position
scheme can learn."""

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from rotary.errors import RotaryError
from rotary.model import CausalLM, MaskedLM, ModelConfig, SequenceClassifier, get_preset
from rotary.model.rope import rope_factors
from tests.tiny import tiny_config

tiny = partial(tiny_config, vocab_size=100)


def ids_of(B, T, vocab=100, seed=0):
    return torch.randint(1, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Every position scheme learns
# ---------------------------------------------------------------------------------------------


def overfit(model, inputs, labels, steps=100, lr=3e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model.loss_fn(model(inputs), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("position", ["rope", "learned", "sinusoidal", "none"])
def test_causal_lm_overfits_one_batch(position):
    torch.manual_seed(0)
    cfg = tiny(vocab_size=32, position=position)
    model = CausalLM(cfg)
    ids = ids_of(4, 17, vocab=32, seed=1)
    losses = overfit(model, ids[:, :-1], ids[:, 1:])  # labels aligned with logits
    assert losses[0] > 3.0  # ~ln(32) at init
    assert losses[-1] <= 0.2 * losses[0], (losses[0], losses[-1])


def test_masked_lm_overfits_one_batch():
    torch.manual_seed(0)
    cfg = tiny(vocab_size=32, causal=False, mlp="gelu", norm="layernorm", pre_norm=False)
    model = MaskedLM(cfg)
    ids = ids_of(4, 16, vocab=32, seed=1)
    masked = torch.rand(ids.shape, generator=torch.Generator().manual_seed(2)) < 0.25
    inputs = ids.masked_fill(masked, 0)  # 0 plays [MASK]
    labels = ids.masked_fill(~masked, -100)
    losses = overfit(model, inputs, labels)
    assert losses[-1] <= 0.2 * losses[0], (losses[0], losses[-1])


# ---------------------------------------------------------------------------------------------
# Heads: shapes, losses, pooling, token types
# ---------------------------------------------------------------------------------------------


def test_head_output_shapes():
    ids = ids_of(3, 7)
    other = ids.clone()
    other[:, 0] = (other[:, 0] % 99) + 1  # a different first token in every row
    torch.manual_seed(0)
    lm = CausalLM(tiny()).eval()
    assert lm(ids).shape == (3, 7, 100)
    assert lm(ids, last_only=True).shape == (3, 1, 100)
    torch.testing.assert_close(lm(ids, last_only=True)[:, 0], lm(ids)[:, -1])
    # the logits are the final hidden states times the (tied) embedding, and depend on the input
    torch.testing.assert_close(lm(ids), lm.backbone(ids) @ lm.backbone.embed_tokens.weight.T)
    assert (lm(ids) - lm(other)).abs().amax(dim=(1, 2)).min() > 1e-4
    mlm = MaskedLM(tiny(causal=False)).eval()
    assert mlm(ids).shape == (3, 7, 100)
    head, emb = mlm.head, mlm.backbone.embed_tokens.weight
    with torch.no_grad():  # zero at init: make the output bias count
        head.bias.uniform_(-1.0, 1.0)
    want = head.norm(F.gelu(head.dense(mlm.backbone(ids)))) @ emb.T + head.bias
    torch.testing.assert_close(mlm(ids), want)
    assert (mlm(ids) - mlm(other)).abs().amax(dim=(1, 2)).min() > 1e-4
    for pooling in ("cls", "mean"):
        clf = SequenceClassifier(tiny(causal=False), num_labels=5, pooling=pooling).eval()
        assert clf(ids).shape == (3, 5)
        h = clf.backbone(ids)
        pooled = h[:, 0] if pooling == "cls" else h.mean(dim=1)
        torch.testing.assert_close(clf(ids), clf.out_proj(clf.act(clf.dense(pooled))))
        assert (clf(ids) - clf(other)).abs().amax(dim=1).min() > 1e-6


def test_classifier_argument_errors():
    with pytest.raises(RotaryError, match="pooling"):
        SequenceClassifier(tiny(causal=False), num_labels=2, pooling="max")
    with pytest.raises(RotaryError, match="num_labels"):
        SequenceClassifier(tiny(causal=False), num_labels=0)


def test_loss_ignores_minus_100_positions():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, 1] = labels[1, 3] = labels[1, 4] = -100
    keep = labels != -100
    expected = F.cross_entropy(logits[keep], labels[keep])  # mean over kept positions only
    loss = CausalLM.loss_fn(logits, labels)
    torch.testing.assert_close(loss, expected)
    # logits at ignored positions have no effect, on the value or the gradient
    other = logits.clone()
    other[0, 1] += 100.0
    other[1, 3:] = -other[1, 3:]
    torch.testing.assert_close(CausalLM.loss_fn(other, labels), loss)
    x = logits.clone().requires_grad_()
    CausalLM.loss_fn(x, labels).backward()
    assert x.grad[~keep].abs().max() == 0 and x.grad[keep].abs().max() > 0
    # all-ignored rows don't change the mean of the others
    torch.testing.assert_close(MaskedLM.loss_fn(logits, labels), loss)


def test_causal_lm_loss_is_next_token_prediction_on_aligned_labels():
    lm = CausalLM(tiny())
    ids = ids_of(2, 9)
    logits = lm(ids[:, :-1])
    manual = -torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).mean()
    torch.testing.assert_close(lm.loss_fn(logits, ids[:, 1:]), manual)


def test_classifier_pairs_with_token_type_ids_and_pooling():
    cfg = tiny(
        causal=False, type_vocab_size=2, mlp="gelu", norm="layernorm", pre_norm=False, bias=True,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    ids = ids_of(2, 10)
    types = torch.zeros_like(ids)
    types[:, 6:] = 1  # second text of the pair
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding on row 1
    for pooling in ("cls", "mean"):
        clf = SequenceClassifier(cfg, num_labels=3, pooling=pooling).eval()
        out = clf(ids, mask, token_type_ids=types)
        assert out.shape == (2, 3)
        assert (out - clf(ids, mask)).abs().max() > 1e-3  # segment ids matter
        other = ids.clone()
        other[1, 8:] = 7
        torch.testing.assert_close(clf(other, mask, token_type_ids=types), out)  # pads don't
        # the pooled vector is what the head says it is
        h = clf.backbone(ids, mask, types)
        pooled = h[:, 0] if pooling == "cls" else torch.stack([h[0].mean(0), h[1, :8].mean(0)])
        torch.testing.assert_close(clf.pool(h, mask), pooled)


def test_token_types_without_segment_embeddings_is_an_error():
    with pytest.raises(RotaryError, match="type_vocab_size"):
        CausalLM(tiny())(ids_of(1, 4), token_type_ids=torch.ones(1, 4, dtype=torch.long))


def test_regression_head_uses_mse():
    clf = SequenceClassifier(tiny(causal=False), num_labels=1)
    out = clf(ids_of(4, 5))
    target = torch.tensor([0.5, -1.0, 2.0, 0.0])
    torch.testing.assert_close(clf.loss_fn(out, target), ((out[:, 0] - target) ** 2).mean())


def test_learned_positions_refuse_longer_inputs():
    learned = CausalLM(tiny(position="learned"))
    with pytest.raises(RotaryError, match="learned"):
        learned(ids_of(1, 17))
    assert learned(ids_of(1, 16)).shape == (1, 16, 100)  # max_seq_len itself is fine
    ids = ids_of(2, 40)
    for position in ("rope", "sinusoidal"):  # no ceiling: 40 tokens on a max_seq_len 16 model
        torch.manual_seed(0)
        # a wide init: attention is sharp enough for positions to change the logits visibly
        model = CausalLM(tiny(position=position, initializer_range=0.2)).eval()
        prefix = model(ids[:, :16])  # before any table grows
        out = model(ids)
        assert out.shape == (2, 40, 100) and torch.isfinite(out).all()
        # causal: the first 16 positions are what the 16-token prefix alone gives
        torch.testing.assert_close(out[:, :16], prefix)
        torch.testing.assert_close(out[:, :30], model(ids[:, :30]))
        # and the positions past max_seq_len continue the same scheme
        if position == "rope":  # relative: shifting every position by 24 changes nothing
            shifted = model(ids[:, 24:], position_ids=torch.arange(24, 40).expand(2, -1))
            torch.testing.assert_close(shifted, model(ids[:, 24:]), rtol=1e-4, atol=1e-5)
        else:  # PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)
            p = torch.arange(40.0, dtype=torch.float64)[:, None]
            angle = p / 10000 ** (torch.arange(0, 32, 2, dtype=torch.float64) / 32)
            pe = torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(40, 32).float()
            torch.testing.assert_close(model.backbone.embed_positions(torch.arange(40), 40), pe)


# ---------------------------------------------------------------------------------------------
# Tied embeddings, parameter counts, FLOPs
# ---------------------------------------------------------------------------------------------


def test_tied_embeddings_share_storage():
    lm = CausalLM(tiny(tie_embeddings=True))
    emb = lm.backbone.embed_tokens.weight
    assert lm.lm_head.weight is emb
    assert lm.lm_head.weight.data_ptr() == emb.data_ptr()
    with torch.no_grad():
        emb[3, 0] = 123.0
    assert lm.lm_head.weight[3, 0].item() == 123.0
    untied = CausalLM(tiny(tie_embeddings=False))
    assert untied.lm_head.weight.data_ptr() != untied.backbone.embed_tokens.weight.data_ptr()
    assert untied.num_parameters() == lm.num_parameters() + 100 * 32
    # MaskedLM's decoder is the embedding when tied
    mlm = MaskedLM(tiny(causal=False))
    assert mlm.head.decoder is None


def test_num_parameters_by_hand():
    # d=32, 4 heads of 8, 2 kv heads, swiglu ff=64, rmsnorm, 2 layers, tied, no bias:
    #   qkv 32*(4+2+2)*8 = 2048, o 32*32 = 1024, up 32*2*64 = 4096, down 64*32 = 2048,
    #   norms 2*32 = 64  ->  9280 per layer; embeddings 100*32 = 3200; final norm 32.
    lm = CausalLM(tiny(n_kv_head=2))
    assert lm.num_parameters() == 2 * 9280 + 3200 + 32 == 21792
    assert lm.num_parameters(exclude_embeddings=True) == 21792 - 3200
    # gelu, layernorm, bias, learned positions, 2 token types, untied, MHA, post-norm, 1 layer:
    #   qkv 32*96+96 = 3168, o 1024+32 = 1056, up 32*64+64 = 2112, down 64*32+32 = 2080,
    #   norms 2*64 = 128 -> 8544; embeddings 3200 + 2*32 + 16*32 = 3776; embedding norm 64;
    #   lm_head 3200.
    cfg = tiny(
        n_layer=1, mlp="gelu", norm="layernorm", bias=True, position="learned",
        type_vocab_size=2, tie_embeddings=False, pre_norm=False,
    )
    lm = CausalLM(cfg)
    assert lm.num_parameters() == 8544 + 3776 + 64 + 3200 == 15584
    assert lm.num_parameters(exclude_embeddings=True) == 15584 - 3776
    # MHA MaskedLM: qkv 32*96 = 3072 -> 10304 per layer, + 3200 + 32 = 23840, and its head:
    #   dense 32*32+32 = 1056, norm 32 (rmsnorm), output bias 100 (decoder tied).
    assert MaskedLM(tiny(causal=False)).num_parameters() == 23840 + 1056 + 32 + 100 == 25028


ESTIMATE_CASES = {
    "tiny-preset": get_preset("tiny"),
    "mqa-relu": tiny(n_kv_head=1, mlp="relu", d_ff=None),
    "bias-layernorm-untied": tiny(bias=True, norm="layernorm", tie_embeddings=False),
    "post-norm-learned-types": tiny(pre_norm=False, position="learned", type_vocab_size=2, mlp="gelu"),
    "swiglu-default-ff-bias": tiny(d_model=96, n_head=3, d_ff=None, bias=True, n_kv_head=1),
    "roformer-small-shape": get_preset("roformer-small").replace(vocab_size=1000, n_layer=1),
    "llama-mini-shape": get_preset("llama-mini").replace(vocab_size=1000, n_layer=1),
}


@pytest.mark.parametrize("cfg", ESTIMATE_CASES.values(), ids=ESTIMATE_CASES.keys())
def test_estimate_num_parameters_matches_the_built_model(cfg):
    model = CausalLM(cfg)
    assert cfg.estimate_num_parameters() == model.num_parameters()
    # and against a count of unique tensors done here
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    assert sum(unique.values()) == model.num_parameters()


def test_preset_sizes():
    assert 90e6 < get_preset("llama-small").estimate_num_parameters() < 130e6
    # RoFormer-base: BERT-base shape with a 50k vocabulary (~124M with embeddings)
    assert 110e6 < get_preset("roformer-base").estimate_num_parameters() < 135e6


def non_embedding_plus_output(model) -> int:
    """Weights a token multiplies by: every parameter except embedding lookups, plus the
    output projection when it is the (tied) embedding matrix."""
    bb = model.backbone
    lookups = {bb.embed_tokens.weight.data_ptr()}
    if bb.embed_types is not None:
        lookups.add(bb.embed_types.weight.data_ptr())
    if bb.embed_positions is not None and hasattr(bb.embed_positions, "weight"):
        lookups.add(bb.embed_positions.weight.data_ptr())
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    n = sum(v for k, v in unique.items() if k not in lookups)
    cfg = model.config
    tied_output = isinstance(model, (CausalLM, MaskedLM)) and cfg.tie_embeddings
    return n + (cfg.vocab_size * cfg.d_model if tied_output else 0)


@pytest.mark.parametrize("cls", [CausalLM, MaskedLM])
@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("position", ["rope", "learned"])
def test_flops_per_token_is_6n_plus_attention(cls, tie, position):
    cfg = tiny(tie_embeddings=tie, position=position, causal=cls is CausalLM, type_vocab_size=2)
    model = cls(cfg)
    n = non_embedding_plus_output(model)
    for T in (16, 128):
        flops = model.flops_per_token(T)
        assert flops > 0
        assert flops == 6 * n + 12 * cfg.n_layer * cfg.d_model * T
        assert model.flops_per_token(T, training=False) == pytest.approx(flops / 3)
    assert model.flops_per_token() == model.flops_per_token(cfg.max_seq_len)
    # the attention term grows linearly with the context
    assert model.flops_per_token(256) - model.flops_per_token(128) == 12 * 2 * 32 * 128


# ---------------------------------------------------------------------------------------------
# Norm placement, initialisation, biases
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_pre_norm_and_post_norm_blocks_follow_their_formulas(norm):
    ids = ids_of(2, 6)
    for pre in (True, False):
        torch.manual_seed(0)
        model = CausalLM(tiny(pre_norm=pre, norm=norm)).eval()
        bb = model.backbone
        assert (bb.final_norm is not None) == pre and (bb.embed_norm is None) == pre
        block = bb.layers[0]
        x = torch.randn(2, 6, 32)
        ctx = _context(bb, ids)
        y = block(x, ctx)
        if pre:  # x + attn(norm(x)), then + mlp(norm(.))
            h = x + block.attn(block.attn_norm(x), ctx)
            want = h + block.mlp(block.mlp_norm(h))
        else:  # norm(x + attn(x)), then norm(. + mlp(.))
            h = block.attn_norm(x + block.attn(x, ctx))
            want = block.mlp_norm(h + block.mlp(h))
        torch.testing.assert_close(y, want)
        out = model(ids)
        assert torch.isfinite(out).all()
        out.sum().backward()
        assert all(p.grad is not None for p in model.parameters())


def _context(backbone, ids):
    from rotary.model.attention import AttentionContext, build_attention_mask

    ctx = AttentionContext()
    ctx.cos, ctx.sin = rope_factors(*backbone.rope(ids.shape[1]))
    ctx.mask, ctx.is_causal = build_attention_mask(None, True, 0, ids.shape[1])
    return ctx


def test_init_weights_std_and_scaled_residual_projections():
    torch.manual_seed(0)
    L = 4
    cfg = ModelConfig(
        vocab_size=512, max_seq_len=32, n_layer=L, n_head=4, d_model=256, d_ff=1024, mlp="gelu",
        norm="layernorm", bias=True, position="learned", pad_token_id=0,
    )
    model = CausalLM(cfg)
    std, residual = 0.02, 0.02 / math.sqrt(2 * L)

    def close(t, want):
        assert abs(t.std().item() - want) < 0.05 * want, (t.std().item(), want)
        assert abs(t.mean().item()) < 0.05 * want

    close(model.backbone.embed_tokens.weight[1:], std)
    assert model.backbone.embed_tokens.weight[0].abs().max() == 0  # the padding row
    close(model.backbone.embed_positions.weight, std)
    for layer in model.backbone.layers:
        close(layer.attn.qkv_proj.weight, std)
        close(layer.mlp.up_proj.weight, std)
        close(layer.attn.o_proj.weight, residual)
        close(layer.mlp.down_proj.weight, residual)
        for lin in (layer.attn.qkv_proj, layer.attn.o_proj, layer.mlp.up_proj, layer.mlp.down_proj):
            assert lin.bias.abs().max() == 0
        assert torch.equal(layer.attn_norm.weight, torch.ones(256))
        assert torch.equal(layer.attn_norm.bias, torch.zeros(256))
    # re-initialising after training-like changes restores the distribution
    with torch.no_grad():
        model.backbone.layers[0].attn.o_proj.weight.fill_(1.0)
    model.init_weights()
    close(model.backbone.layers[0].attn.o_proj.weight, residual)


def test_bias_true_adds_biases():
    plain, biased = CausalLM(tiny(bias=False)), CausalLM(tiny(bias=True))
    linears = ("attn.qkv_proj", "attn.o_proj", "mlp.up_proj", "mlp.down_proj")
    for layer_plain, layer_biased in zip(plain.backbone.layers, biased.backbone.layers):
        for name in linears:
            assert layer_plain.get_submodule(name).bias is None
            assert layer_biased.get_submodule(name).bias is not None
    # per layer: q,k,v 3*32 = 96, o 32, up 2*64 (swiglu gate+up), down 32
    assert biased.num_parameters() - plain.num_parameters() == 2 * (96 + 32 + 128 + 32)
    # and they are used: a non-zero bias changes the output
    ids = ids_of(1, 5)
    before = biased(ids)
    with torch.no_grad():
        biased.backbone.layers[0].attn.o_proj.bias.fill_(0.5)
    assert (biased(ids) - before).abs().max() > 1e-3


def test_fused_cpu_rmsnorm_matches_the_composite_formula():
    from torch import nn

    from rotary.ops.rms_norm import RMSNorm

    torch.manual_seed(0)
    fused, plain = RMSNorm(24, eps=1e-5), nn.RMSNorm(24, eps=1e-5)
    with torch.no_grad():
        fused.weight.uniform_(0.5, 1.5)
        plain.weight.copy_(fused.weight)
    x = torch.randn(3, 5, 24, requires_grad=True)
    g = torch.randn(3, 5, 24)
    outs = []
    for norm in (fused, plain):
        x.grad = None
        y = norm(x)
        y.backward(g)
        outs.append((y.detach(), x.grad.clone(), norm.weight.grad.clone()))
    for a, e in zip(*outs):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    assert fused.state_dict().keys() == plain.state_dict().keys()
    xd = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    wd = torch.rand(6, dtype=torch.float64, requires_grad=True)
    from rotary.ops.rms_norm import _RMSNormCPU

    assert torch.autograd.gradcheck(lambda a, b: _RMSNormCPU.apply(a, b, 1e-5), (xd, wd))


def test_explicit_position_ids_past_the_table_are_rotated_not_an_index_error():
    """position_ids beyond max_seq_len grow the RoPE table; learned positions refuse them in one line."""
    import pytest

    from rotary.errors import RotaryError

    torch.manual_seed(0)
    model = CausalLM(ModelConfig(vocab_size=50, d_model=32, n_layer=1, n_head=2, max_seq_len=16)).eval()
    ids = torch.randint(0, 50, (1, 8))
    far = model(ids, position_ids=torch.arange(24, 32)[None])
    near = model(ids, position_ids=torch.arange(0, 8)[None])
    torch.testing.assert_close(far, near, rtol=1e-4, atol=1e-4)  # RoPE: only differences matter
    learned = CausalLM(ModelConfig(vocab_size=50, d_model=32, n_layer=1, n_head=2, max_seq_len=16,
                                   position="learned")).eval()
    with pytest.raises(RotaryError, match="learned"):
        learned(ids, position_ids=torch.arange(24, 32)[None])


# ---------------------------------------------------------------------------------------------
# Narrow embeddings (RoFormer's embedding_size) and rotated values (rotary_value)
# ---------------------------------------------------------------------------------------------


def _encoder(**kw) -> ModelConfig:
    return tiny(causal=False, mlp="gelu", norm="layernorm", pre_norm=False, bias=True, type_vocab_size=2, **kw)


@pytest.mark.parametrize("tie", [True, False])
def test_embedding_size_projects_narrow_embeddings(tie):
    torch.manual_seed(0)
    model = MaskedLM(_encoder(embedding_size=12, tie_embeddings=tie)).eval()
    b = model.backbone
    assert b.embed_tokens.weight.shape == (100, 12) and b.embed_types.weight.shape == (2, 12)
    assert b.embed_norm.normalized_shape == (12,) and b.embed_project.weight.shape == (32, 12)
    assert model.head.dense.weight.shape == (12, 32)  # back to the embeddings' width for the decoder
    assert (model.head.decoder is None) == tie
    ids = ids_of(2, 10)
    logits = model(ids)
    assert logits.shape == (2, 10, 100)
    # by hand: embeddings -> norm -> projection, then the blocks
    x = b.embed_project(b.embed_norm(b.embed_tokens(ids) + b.embed_types(torch.zeros_like(ids))))
    assert torch.allclose(b(ids), _blocks(b, x), atol=1e-5)
    # the training path (head on masked rows only) gives the full logits' loss
    labels = ids.masked_fill(torch.arange(10) % 3 != 0, -100)
    assert torch.allclose(model(ids, labels=labels), model.loss_fn(logits, labels), atol=1e-5)
    # the parameter and FLOP accounting see the narrower embeddings
    output = 100 * 12 if tie else 0
    n = model.num_parameters(exclude_embeddings=True)
    assert model.flops_per_token(16) == 6 * (n + output) + 12 * 2 * 32 * 16
    assert MaskedLM(_encoder()).backbone.embed_project is None  # width d_model: nothing added


def _blocks(b, x):
    from rotary.model.attention import AttentionContext

    ctx = AttentionContext()
    cos, sin, _, _ = b.rope.for_pass(x.shape[1], None, 0, None, None, False)
    ctx.cos, ctx.sin = rope_factors(cos, sin)
    for layer in b.layers:
        x = layer(x, ctx)
    return x


def test_embedding_size_errors():
    with pytest.raises(RotaryError, match="position=rope or none"):
        tiny(embedding_size=16, position="learned")
    with pytest.raises(RotaryError, match="embedding_size must be positive"):
        tiny(embedding_size=0)
    with pytest.raises(RotaryError, match="cannot tie"):
        CausalLM(tiny(embedding_size=16))
    assert CausalLM(tiny(embedding_size=16, tie_embeddings=False))(ids_of(1, 5)).shape == (1, 5, 100)


def test_rotary_value_rotate_the_values():
    torch.manual_seed(0)
    plain = MaskedLM(_encoder()).eval()
    rotated = MaskedLM(_encoder(rotary_value=True)).eval()
    rotated.load_state_dict(plain.state_dict())
    ids = ids_of(1, 8)
    assert not torch.allclose(plain(ids), rotated(ids), atol=1e-3)
    # one token attends only to itself: its value is rotated by position 0, the identity
    one = ids[:, :1]
    assert torch.allclose(plain(one), rotated(one), atol=1e-6)
    with pytest.raises(RotaryError, match="rotary_value needs position=rope"):
        tiny(rotary_value=True, position="none")


def test_last_pooling_without_a_mask_finds_the_end_by_the_pad_id_as_transformers():
    """LlamaForSequenceClassification without an attention mask pools the last token before the
    first pad; rotary did h[:, -1], a pad on a right-padded row."""
    torch.manual_seed(0)
    clf = SequenceClassifier(tiny(pad_token_id=0), num_labels=2, pooling="last").eval()
    ids = ids_of(2, 10)
    ids[1, 6:] = 0  # right padding
    mask = (ids != 0).long()
    torch.testing.assert_close(clf(ids), clf(ids, mask))
    torch.testing.assert_close(clf(ids[1:, :6]), clf(ids, mask)[1:])


def test_the_output_projection_counts_only_on_the_predicted_share():
    model = MaskedLM(tiny(tie_embeddings=True, causal=False))
    cfg = model.config
    n = model.num_parameters(exclude_embeddings=True)
    attention = 12 * cfg.n_layer * cfg.d_model * 16
    assert model.flops_per_token(16, predicted_share=0.15) == 6 * (n + 0.15 * cfg.vocab_size * cfg.d_model) + attention
