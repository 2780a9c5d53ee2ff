"""The CPU training kernels compiled by Inductor (``rotary.ops.inductor``): the bf16 attention
with a math backward, the cross-entropy chunk kernel; and the allocator setting. Each is checked
against PyTorch's own computation (fp64 where bf16 rounding would hide a wrong formula)."""

from __future__ import annotations

import resource
import warnings

import pytest
import torch
import torch.nn.functional as F

from rotary import CausalLM, ModelConfig
from rotary.device import keep_freed_cpu_memory
from rotary.ops import inductor, training_attention
from rotary.ops.fused_cross_entropy import linear_cross_entropy
from rotary.ops.rms_norm import RMSNorm
from tests.kernel_support import count_calls, tiny_lm

needs_compiler = pytest.mark.skipif(not inductor.available, reason="Inductor's CPU backend needs a C++ compiler")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture
def kernels(monkeypatch):
    """Switch the compiled kernels on or off for one test."""
    def switch(on: bool) -> None:
        monkeypatch.setattr(inductor, "enabled", on)
    return switch


@needs_compiler
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads,kv_heads", [(6, 2), (4, 4)])
def test_attention_matches_fp64_sdpa_values_and_gradients(causal, heads, kv_heads, kernels):
    kernels(True)
    g = torch.Generator().manual_seed(0)
    B, T, hd = 2, 150, 16  # causal: 2 query tiles of 75 rows (not a multiple of 64)
    q = torch.randn(B, heads, T, hd, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, kv_heads, T, hd, generator=g, dtype=torch.float64) for _ in range(2))
    grad = torch.randn(B, heads, T, hd, generator=g, dtype=torch.float64)
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    ref_out = F.scaled_dot_product_attention(*ref, is_causal=causal, enable_gqa=True)
    ref_out.backward(grad)
    mine = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    assert training_attention.applies(mine[0], mine[1])
    out = training_attention.attention(*mine, causal)
    out.backward(grad.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and rel(out, ref_out) < 1e-2
    for m, r in zip(mine, ref):  # bf16 inputs and outputs: ~0.5% error; a wrong term would be O(1)
        assert m.grad.shape == r.shape and rel(m.grad, r.grad) < 2e-2


def test_causal_query_tiles_cover_every_row_once_and_see_only_earlier_keys():
    for T in (1, 31, 100, 256, 4096):
        tiles = training_attention.query_tiles(T, causal=True)
        assert [lo for lo, _, _ in tiles] == [0] + [hi for _, hi, _ in tiles[:-1]] and tiles[-1][1] == T
        assert all(keys == hi for _, hi, keys in tiles) and len(tiles) <= training_attention.MAX_TILES
    assert len(training_attention.query_tiles(256, causal=True)) == 4  # the demo's T: 64-row tiles
    assert len(training_attention.query_tiles(100, causal=True)) == 1
    assert training_attention.query_tiles(256, causal=False) == [(0, 256, 256)]  # nothing hidden to skip


@needs_compiler
def test_attention_is_used_only_where_it_pays(kernels):
    kernels(True)
    q = torch.randn(1, 2, 8, 4, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, 2, 8, 4, dtype=torch.bfloat16)
    assert training_attention.applies(q, k)
    assert not training_attention.applies(q.detach().float().requires_grad_(), k.float())  # fp32: no AMX
    with torch.no_grad():
        assert not training_attention.applies(q, k)  # inference: nothing to backpropagate
    assert not training_attention.applies(q.detach(), k)
    assert not training_attention.applies(q, k[:, :, :4])  # keys from a cache
    long_q = torch.empty(8, 16, 1024, 4, dtype=torch.bfloat16, requires_grad=True)  # 512 MB of scores
    assert not training_attention.applies(long_q, torch.empty(8, 16, 1024, 4, dtype=torch.bfloat16))
    # the bound is on fp32 scores (4 bytes each): exactly MAX_SCORE_BYTES applies, twice that does not
    for batch, fits in ((1, True), (2, False)):
        heads = training_attention.MAX_SCORE_BYTES // (4 * 1024 * 1024)  # 16 heads of 1024 x 1024
        at = torch.empty(batch, heads, 1024, 1, dtype=torch.bfloat16, requires_grad=True)
        assert training_attention.applies(at, at.detach()) == fits, batch
    kernels(False)
    assert not training_attention.applies(q, k)


def _grads(model, x, on, kernels, calls):
    kernels(on)
    model.zero_grad(set_to_none=True)
    before = calls["n"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, labels=x)
    loss.backward()
    used = calls["n"] - before
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, used


@needs_compiler
@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_models_train_the_same_with_and_without_the_kernels(kind, kernels, monkeypatch):
    calls = count_calls(monkeypatch, training_attention, "attention")
    torch.manual_seed(0)
    model = tiny_lm(kind, vocab_size=96, max_seq_len=32, d_model=32, d_ff=64)
    x = torch.randint(0, 96, (3, 32), generator=torch.Generator().manual_seed(1))
    loss_eager, eager, used_eager = _grads(model, x, False, kernels, calls)
    loss_kernel, kernel, used_kernel = _grads(model, x, True, kernels, calls)
    assert used_eager == 0 and used_kernel == 2  # one call per layer, and only when switched on
    assert abs(loss_kernel - loss_eager) < 1e-2 * abs(loss_eager)
    assert eager.keys() == kernel.keys()
    for name in eager:
        assert rel(kernel[name], eager[name]) < 8e-3, name  # bf16 noise ~0.4%; a dropped term ~1.5%


@needs_compiler
@pytest.mark.parametrize("with_bias", [False, True])
def test_cross_entropy_kernel_matches_the_eager_chunks_and_fp32(with_bias, kernels):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(70, 24, generator=g).mul_(0.3).requires_grad_()
    b = torch.randn(70, generator=g).requires_grad_() if with_bias else None
    params = [w] + ([b] if with_bias else [])
    for rows in (50, 37):  # a second row count: the kernel recompiles with symbolic sizes
        h = torch.randn(rows, 24, generator=g, requires_grad=True)
        y = torch.randint(0, 70, (rows,), generator=g)
        y[::5] = -100  # ignored rows
        results = []
        for on in (False, True):
            kernels(on)
            for t in [h, *params]:
                t.grad = None
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = linear_cross_entropy(h, w, b, y, chunk_rows=16)
            loss.backward()
            results.append((loss.detach(), [t.grad.clone() for t in [h, *params]]))
        for t in [h, *params]:
            t.grad = None
        ref = F.cross_entropy(F.linear(h, w, b), y)
        ref.backward()
        (loss_eager, eager), (loss_kernel, kernel) = results
        assert abs(loss_kernel - loss_eager) < 1e-3 and abs(loss_kernel - ref.detach()) < 2e-2
        assert kernel[0][::5].abs().max() == 0  # ignored rows get no gradient
        for a, e, r in zip(kernel, eager, [h.grad, *[p.grad for p in params]]):
            assert rel(a, e) < 1e-2 and rel(a, r) < 2e-2


@needs_compiler
def test_a_pre_norm_rmsnorm_hands_bf16_on_with_the_eager_values_and_gradients(kernels):
    g = torch.Generator().manual_seed(4)
    norm = RMSNorm(48, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(48, generator=g))
    x = torch.randn(3, 7, 48, generator=g).mul_(2.0)
    # bf16-representable: in a model the gradient arriving from a bf16 linear layer is bf16
    grad = torch.randn(3, 7, 48, generator=g).to(torch.bfloat16).float()
    runs = {}
    for feeds, on in ((False, False), (True, True)):
        kernels(on)
        norm.feeds_matmul = feeds
        xi = x.clone().requires_grad_()
        norm.weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = norm(xi)
        y.float().backward(grad)
        runs[feeds] = (y, xi.grad, norm.weight.grad.clone())
    (y0, dx0, dw0), (y1, dx1, dw1) = runs[False], runs[True]
    assert y0.dtype == torch.float32 and y1.dtype == torch.bfloat16  # the cast autocast would do, done here
    torch.testing.assert_close(y1, y0.to(torch.bfloat16), rtol=0, atol=0.02)
    assert dx1.dtype == torch.float32 and rel(dx1, dx0) < 1e-5 and rel(dw1, dw0) < 1e-5
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(x).dtype == torch.float32  # inference keeps the plain path
    norm.feeds_matmul = False  # a post-norm's output is the fp32 residual stream
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(x.requires_grad_()).dtype == torch.float32


def test_pre_norm_blocks_mark_their_norms_and_post_norm_blocks_do_not():
    cfg = dict(vocab_size=32, max_seq_len=8, n_layer=1, n_head=2, d_model=16, d_ff=32)
    pre = CausalLM(ModelConfig(**cfg)).backbone
    post = CausalLM(ModelConfig(**cfg, pre_norm=False)).backbone
    assert pre.layers[0].attn_norm.feeds_matmul and pre.layers[0].mlp_norm.feeds_matmul
    assert not pre.final_norm.feeds_matmul  # its output goes to whatever head the model has
    assert not post.layers[0].attn_norm.feeds_matmul and not post.layers[0].mlp_norm.feeds_matmul


@pytest.mark.skipif(not keep_freed_cpu_memory(), reason="needs glibc's malloc")
def test_freed_cpu_memory_is_reused_without_page_faults():
    def faults_per_alloc(n: int = 20) -> float:
        torch.empty(2 << 20).fill_(1.0)  # 8 MB; once to grow the heap
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            torch.empty(2 << 20).fill_(1.0)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / n

    # a fresh mmap of 8 MB faults in 2,048 pages; reused heap memory in none (in a long-running
    # test process with a fragmented heap, measured up to ~100)
    assert faults_per_alloc() < 512


def test_a_kernel_that_fails_to_compile_warns_once_and_runs_eager(monkeypatch):
    def broken_compile(fn, *args, **kwargs):
        def run(*a, **k):
            raise RuntimeError("no working C++ toolchain")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(inductor, "failed", None)
    monkeypatch.setattr(inductor, "available", True)
    monkeypatch.setattr(inductor, "enabled", True)
    double = inductor.kernel(lambda x: 2 * x)
    assert inductor.active()
    with pytest.warns(UserWarning, match="eager kernels"):
        assert torch.equal(double(torch.ones(3)), torch.full((3,), 2.0))
    assert not inductor.active() and inductor.describe().startswith("eager (compiling failed")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: the failure is remembered
        assert torch.equal(double(torch.ones(2)), torch.full((2,), 2.0))
