"""``compile``: regional compilation of the transformer blocks (``rotary.model.transformer.
compile_blocks``) and the trainer's ``auto`` choice (``rotary.train.compilation``)."""

from __future__ import annotations

import copy

import pytest
import torch

from rotary.errors import RotaryError
from rotary.model import transformer
from rotary.ops import inductor
from rotary.tasks import TASKS
from rotary.train.compilation import resolve
from rotary.train.config import TrainConfig
from tests.kernel_support import count_calls, tiny_lm

CPU = torch.device("cpu")


def test_auto_compiles_the_blocks_only_for_bf16_cpu_training_with_inductor(monkeypatch):
    monkeypatch.setattr(inductor, "available", True)
    monkeypatch.setattr(inductor, "enabled", True)
    monkeypatch.setattr(inductor, "failed", None)
    assert resolve("auto", CPU, "bf16", "ddp", 1)[0] == "blocks"
    assert resolve("auto", CPU, "bf16", "ddp", 4)[0] == "blocks"  # DDP: each rank compiles its blocks
    assert resolve("auto", CPU, "bf16", "fsdp", 2) == ("none", "auto: not under FSDP")
    assert resolve("auto", CPU, "fp32", "ddp", 1)[0] == "none"  # fp32 runs gain less than they pay
    # padded batches of varying shape (translation, classification) would recompile
    assert [name for name, task in TASKS.items() if task.fixed_windows] == ["causal_lm", "masked_lm", "electra"]
    assert resolve("auto", CPU, "bf16", "ddp", 1, fixed_windows=False)[0] == "none"
    assert resolve("auto", torch.device("cuda"), "bf16", "ddp", 1)[0] == "none"
    assert resolve(True, CPU, "fp32", "ddp", 1) == ("model", "set by the recipe")
    assert resolve(False, CPU, "bf16", "ddp", 1)[0] == "none"
    assert resolve("blocks", torch.device("cuda"), "fp32", "fsdp", 2)[0] == "blocks"  # asked for: done
    monkeypatch.setattr(inductor, "enabled", False)  # ROTARY_INDUCTOR_KERNELS=0
    what, why = resolve("auto", CPU, "bf16", "ddp", 1)
    assert what == "none" and inductor.ENV in why
    monkeypatch.setattr(inductor, "available", False)  # no C++ compiler
    assert "no C++ compiler" in resolve("auto", CPU, "bf16", "ddp", 1)[1]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _loss_and_grads(model, x, autocast: bool = True):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(x, labels=x)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.skipif(not inductor.available, reason="Inductor's CPU backend needs a C++ compiler")
@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_compiled_blocks_train_as_exactly_as_eager_blocks_and_only_in_training(kind, monkeypatch):
    torch.manual_seed(0)
    model = tiny_lm(kind, vocab_size=96, max_seq_len=64, d_model=64, d_ff=128)
    x = torch.randint(0, 96, (4, 64), generator=torch.Generator().manual_seed(1))
    _, exact = _loss_and_grads(copy.deepcopy(model).double(), x, autocast=False)
    loss_eager, eager = _loss_and_grads(model, x)
    blocks = [m for m in model.modules() if isinstance(m, transformer.Block)]
    assert not any(b.compiled for b in blocks)
    assert transformer.compile_blocks(model) == 2
    assert blocks[0].compiled_forward is blocks[1].compiled_forward  # one graph for the model's blocks
    counts = [count_calls(monkeypatch, b, "compiled_forward") for b in blocks]
    loss_compiled, compiled = _loss_and_grads(model, x)
    assert [c["n"] for c in counts] == [1, 1]  # each block's training pass went through the compiled forward
    assert abs(loss_compiled - loss_eager) < 1e-3 * abs(loss_eager)
    for name in eager:  # against fp64: bf16 eager is ~0.6% off; a lost or wrong term would be O(1%)
        error, eager_error = rel(compiled[name], exact[name]), rel(eager[name], exact[name])
        assert error < 1.25 * eager_error + 1e-3, (name, error, eager_error)
    model.eval()
    with torch.no_grad():  # evaluation and generation stay eager: no graph for them to compile
        model(x)
    assert [c["n"] for c in counts] == [1, 1]


@pytest.mark.parametrize("value, expected", [("blocks", "blocks"), ("auto", "auto"), ("true", True), (False, False)])
def test_the_compile_key_takes_booleans_and_its_modes(value, expected):
    assert TrainConfig.from_dict({"compile": value}).compile == expected


def test_a_wrong_compile_mode_names_every_choice():
    with pytest.raises(RotaryError, match="recipe.compile: 'blox' is not one of true, false, blocks, auto"):
        TrainConfig.from_dict({"compile": "blox"})


@pytest.mark.skipif(not inductor.available, reason="Inductor's CPU backend needs a C++ compiler")
def test_models_compiled_earlier_in_the_process_do_not_use_up_a_new_models_compilation(monkeypatch):
    """Dynamo stops compiling a function after ``recompile_limit`` graphs and from then on runs
    it (or pieces of it) uncompiled, without a word; each model's blocks have their own budget,
    so a sweep's ninth model (here the second, with the limit at 1) compiles its blocks as one
    graph again. ``fail_on_recompile_limit_hit`` turns the silent fallback into an error, which
    ``inductor.kernel`` would record in ``failed``."""
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    monkeypatch.setattr(inductor, "failed", None)
    x = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(1))
    for n_head in (4, 2):  # a different head count: a guard of the first graph fails
        model = transformer_lm(n_head)
        transformer.compile_blocks(model)
        # fp32: the blocks are the only compiled code (the bf16 loss and norm kernels are shared by
        # every model, and earlier tests in this process may have compiled them for other shapes)
        _loss_and_grads(model, x, autocast=False)
        assert inductor.failed is None, f"n_head={n_head}: {inductor.failed}"


def transformer_lm(n_head: int):
    from rotary.model import CausalLM, ModelConfig

    torch.manual_seed(0)
    return CausalLM(ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=n_head, d_ff=64, max_seq_len=32))
