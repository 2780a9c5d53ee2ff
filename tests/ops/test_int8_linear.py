"""Weight-only int8 linear layers (``rotary.ops.int8_linear``): the quantization itself, both
product paths against the dequantized weight, and a quantized model decoding as its own full
forward does."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rotary.errors import RotaryError
from rotary.infer.generate import generate
from rotary.model import CausalLM, ModelConfig
from rotary.ops.int8_linear import KERNEL_MAX_ROWS, Int8Linear, has_int8_kernel, is_quantized, quantize, quantize_weight


def test_weights_round_to_int8_within_half_a_step_of_their_row_scale():
    torch.manual_seed(0)
    w = torch.randn(24, 40) * torch.logspace(-3, 1, 24)[:, None]  # rows of very different sizes
    w[5] = 0  # an all-zero row keeps a finite scale and dequantizes to zeros
    q, scales = quantize_weight(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and scales.shape == (24,)
    assert int(q.abs().max()) == 127 and int(q.min()) >= -127
    assert torch.isfinite(scales).all()
    err = (q.float() * scales[:, None] - w).abs()
    assert (err <= scales[:, None] / 2 + 1e-7).all()
    assert (q[5] == 0).all()
    # each nonzero row uses the full range: its largest weight is exactly +-127 steps
    assert (q.abs().amax(1)[torch.arange(24) != 5] == 127).all()


@pytest.mark.parametrize("rows", [1, KERNEL_MAX_ROWS, 3 * KERNEL_MAX_ROWS])
def test_both_product_paths_equal_the_dequantized_weight_up_to_bf16_rounding(rows):
    """Few rows go to the int8 kernel, many to a GEMM over the dequantized weight: either way the
    result is x @ (q * scale).T + b, with the activations rounded to bf16 at most."""
    torch.manual_seed(1)
    layer = nn.Linear(64, 48)
    q_layer = Int8Linear.from_linear(layer)
    x = torch.randn(rows, 3, 64)[:, 0] if rows > 1 else torch.randn(1, 64)
    x = x.reshape(-1, 64)
    expected = x @ q_layer.weight.T + layer.bias
    got = q_layer(x)
    assert got.dtype == x.dtype and got.shape == (x.shape[0], 48)
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 2e-2 * scale  # bf16 activations: ~3 significant digits
    # and the rounding is that of int8 weights, not something coarser: fp32 weights differ more
    assert (got - (x @ layer.weight.T + layer.bias)).abs().max() <= 5e-2 * scale


def test_a_batch_of_sequences_keeps_its_shape():
    torch.manual_seed(2)
    q_layer = Int8Linear.from_linear(nn.Linear(16, 8, bias=False))
    x = torch.randn(2, 3, 16)  # 6 rows: the kernel path, reshaped back
    got = q_layer(x)
    assert got.shape == (2, 3, 8)
    assert torch.allclose(got, x @ q_layer.weight.T, atol=3e-2)


def wide_lm(**kw) -> CausalLM:
    """Wide weights (N(0, 1/fan_in)) so greedy choices win by clear margins."""
    torch.manual_seed(0)
    base = dict(vocab_size=64, max_seq_len=48, n_layer=2, n_head=4, n_kv_head=2, d_model=64, d_ff=128,
                mlp="swiglu", norm="rmsnorm", tie_embeddings=True)
    model = CausalLM(ModelConfig(**{**base, **kw})).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape) * p.shape[-1] ** -0.5)
    return model


def test_quantize_replaces_every_linear_layer_and_keeps_the_embeddings():
    model = wide_lm()
    n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    q = quantize(copy.deepcopy(model))
    assert is_quantized(q) and not is_quantized(model)
    assert not any(isinstance(m, nn.Linear) for m in q.modules())
    assert sum(isinstance(m, Int8Linear) for m in q.modules()) == n_linear
    assert torch.equal(q.backbone.embed_tokens.weight, model.backbone.embed_tokens.weight)
    assert not q.training and not any(p.requires_grad for p in q.parameters())
    int8_bytes = sum(b.numel() for n, b in q.named_buffers() if n.endswith("qweight"))
    assert int8_bytes == sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    with pytest.raises(RotaryError, match="quantized already"):
        quantize(q)
    with pytest.raises(RotaryError, match="unknown quantization 'int4'"):
        quantize(copy.deepcopy(model), "int4")


def test_a_quantized_model_scores_like_the_fp32_one():
    """The logits of the quantized model stay close to fp32's: a cross-entropy within 1%."""
    model = wide_lm()
    q = quantize(copy.deepcopy(model))
    ids = torch.randint(0, 64, (4, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = model(ids[:, :-1], targets=ids[:, 1:])
        b = q(ids[:, :-1], targets=ids[:, 1:])
    loss_a, loss_b = (float(o.loss if hasattr(o, "loss") else o) for o in (a, b))
    assert abs(loss_b - loss_a) / loss_a < 0.01


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_quantized_greedy_decoding_equals_its_own_full_forward_argmax(compile):
    """Decoding with the int8 kernel (one row per step) and the full forward over the whole
    sequence (the dequantized GEMM) choose the same tokens; compiled or not."""
    q = quantize(wide_lm())
    prompts = [[1, 2, 3, 4], [5, 6, 7, 8, 9, 10]]
    out = generate(q, prompts, 12, temperature=0, compile=compile)
    for prompt, new in zip(prompts, out):
        seq = list(prompt)
        for token in new:
            with torch.no_grad():
                logits = q(torch.tensor([seq]))
            logits = logits.logits if hasattr(logits, "logits") else logits
            top2 = logits[0, -1].topk(2).values
            if top2[0] - top2[1] > 1e-2:  # a near tie may go either way under bf16 rounding
                assert token == int(logits[0, -1].argmax())
            seq.append(token)


def test_the_kernel_path_follows_the_cpu_not_a_timing():
    layer = Int8Linear.from_linear(nn.Linear(8, 8))
    assert layer.use_kernel == has_int8_kernel() == (torch.backends.cpu.get_cpu_capability() in
                                                     ("AVX512", "AVX512_BF16", "AMX"))
