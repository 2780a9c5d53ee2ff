"""The oneDNN GEMM path of fp32 linear layers: same results as F.linear, actually taken when
chosen, chosen by machine facts alone, and exact across a resumed run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rotary import CausalLM, MaskedLM, ModelConfig
from rotary.errors import RotaryError
from rotary.ops import gemm

pytestmark = pytest.mark.skipif(not gemm.onednn_available(), reason="needs oneDNN (mkldnn)")


@pytest.fixture
def backend(monkeypatch):
    """Set the process's GEMM backend for one test; the previous setting comes back after."""
    monkeypatch.setattr(gemm, "_setting", None)
    monkeypatch.setattr(gemm, "_resolved", None)
    return gemm.set_cpu_gemm


def ops_run(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 40, 24), (64, 24), "transposed"])
@pytest.mark.parametrize("out_features", [16, 56])  # both layouts of the weight-gradient GEMM
def test_onednn_linear_matches_f_linear_with_gradients(backend, bias, shape, out_features):
    backend("onednn")
    g = torch.Generator().manual_seed(0)
    if shape == "transposed":
        x = torch.randn(40, 3, 24, generator=g).transpose(0, 1)
    else:
        x = torch.randn(*shape, generator=g)
    w = torch.randn(out_features, 24, generator=g)
    b = torch.randn(out_features, generator=g) if bias else None
    grad_out = torch.randn(*x.shape[:-1], out_features, generator=g)

    def run(fn):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        bs = b.clone().requires_grad_() if bias else None
        y = fn(xs, ws, bs)
        y.backward(grad_out)
        return y, xs.grad, ws.grad, bs.grad if bias else None

    ops = ops_run(lambda: run(gemm.linear))
    assert "mkldnn::_linear_pointwise" in ops and not {"aten::mm", "aten::addmm"} & ops
    for got, want in zip(run(gemm.linear), run(F.linear)):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_frozen_weight_double_backward_and_torch_func_agree_with_f_linear(backend):
    backend("onednn")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 24, generator=g, requires_grad=True)
    w = torch.randn(40, 24, generator=g)
    # frozen weight: the input's gradient alone
    (gx,) = torch.autograd.grad(gemm.linear(x, w).tanh().sum(), x)
    (ref,) = torch.autograd.grad(F.linear(x, w).tanh().sum(), x)
    torch.testing.assert_close(gx, ref)
    # double backward (a gradient penalty): the gradient of a gradient w.r.t. the weight
    w.requires_grad_()

    def penalty_grad(fn):
        (gx,) = torch.autograd.grad(fn(x, w).tanh().sum(), x, create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), w)[0]

    got, want = penalty_grad(gemm.linear), penalty_grad(F.linear)
    assert want.abs().max() > 1.0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # torch.func and forward-mode AD take F.linear's rules
    fx = torch.func.grad(lambda x: gemm.linear(x, w).sum())(x.detach())
    torch.testing.assert_close(fx, w.detach().sum(0).expand(64, 24))
    layer = gemm.Linear(24, 40)
    torch.fx.symbolic_trace(layer)  # traces (as F.linear) instead of branching on a Proxy


def test_models_and_the_fused_loss_really_run_on_onednn(backend):
    backend("onednn")
    model = CausalLM(ModelConfig.from_dict({"preset": "tiny", "vocab_size": 300, "max_seq_len": 64}))
    ids = torch.randint(0, 300, (4, 48))
    ops = ops_run(lambda: model(ids, labels=ids).backward())
    assert "mkldnn::_linear_pointwise" in ops and "aten::mm" not in ops  # layers and the head's logits


def test_compiled_model_keeps_its_gemms_on_onednn_and_matches_eager(backend):
    backend("onednn")
    torch.manual_seed(0)
    model = CausalLM(ModelConfig.from_dict({"preset": "tiny", "vocab_size": 300, "max_seq_len": 64}))
    ids = torch.randint(0, 300, (4, 48))
    compiled = torch.compile(model, fullgraph=True)

    def grads(fn):
        model.zero_grad()
        fn(ids, labels=ids).backward()
        return [p.grad.clone() for p in model.parameters()]

    got = grads(compiled)
    for a, b in zip(got, grads(model)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    ops = ops_run(lambda: grads(compiled))
    assert {"rotary::onednn_linear", "rotary::onednn_matmul", "rotary::onednn_weight_grad"} <= ops
    assert "aten::mm" not in ops


def test_small_row_counts_autocast_and_the_blas_backend_stay_on_f_linear(backend):
    layer = gemm.Linear(24, 16)
    backend("onednn")
    assert "mkldnn::_linear_pointwise" not in ops_run(lambda: layer(torch.randn(2, 24)))  # decoding
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(64, 24)).dtype == torch.bfloat16
    backend("blas")
    assert "mkldnn::_linear_pointwise" not in ops_run(lambda: layer(torch.randn(64, 24)))


def test_auto_backend_follows_the_cpu_vendor_and_mkl_cap(backend, monkeypatch):
    monkeypatch.setattr(gemm.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS", raising=False)
    monkeypatch.delenv("ROTARY_CPU_GEMM", raising=False)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: True)

    def resolved(vendor: str) -> str:
        monkeypatch.setattr(gemm, "_cpu_vendor", lambda: vendor)
        monkeypatch.setattr(gemm, "_setting", None)
        monkeypatch.setattr(gemm, "_resolved", None)
        return gemm.cpu_gemm()

    assert resolved("GenuineIntel") == "blas"
    assert resolved("i386") == "blas"  # an unknown vendor keeps PyTorch's default
    assert resolved("AuthenticAMD") == "onednn"  # MKL runs its AVX2 code on AMD
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    assert resolved("GenuineIntel") == "onednn"
    monkeypatch.setenv("ROTARY_CPU_GEMM", "blas")
    assert resolved("AuthenticAMD") == "blas"
    monkeypatch.setattr(gemm.platform, "machine", lambda: "aarch64")
    monkeypatch.delenv("ROTARY_CPU_GEMM")
    assert resolved("AuthenticAMD") == "blas"


def test_unknown_backend_is_a_user_error(backend, monkeypatch):
    with pytest.raises(RotaryError, match="unknown CPU GEMM backend 'mkl'.*auto, blas, onednn"):
        backend("mkl")
    monkeypatch.setenv("ROTARY_CPU_GEMM", "fast")
    with pytest.raises(RotaryError, match="'fast'"):
        gemm.cpu_gemm()


@pytest.mark.parametrize("head", ["causal", "masked"])
def test_model_losses_and_gradients_agree_between_backends(backend, head):
    torch.manual_seed(0)
    if head == "causal":
        model = CausalLM(ModelConfig.from_dict({"preset": "tiny", "vocab_size": 300, "max_seq_len": 64}))
        labels = torch.randint(0, 300, (4, 48))
    else:
        model = MaskedLM(ModelConfig.from_dict({"preset": "tiny", "vocab_size": 300, "max_seq_len": 64, "causal": False,
                                                 "mlp": "gelu", "norm": "layernorm", "bias": True}))
        labels = torch.full((4, 48), -100)
        labels[:, ::3] = torch.randint(0, 300, (4, 16))
    ids = torch.randint(0, 300, (4, 48))
    results = {}
    for name in ("blas", "onednn"):
        backend(name)
        model.zero_grad()
        loss = model(ids, labels=labels)
        loss.backward()
        results[name] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(results["onednn"][0], results["blas"][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results["onednn"][1], results["blas"][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
