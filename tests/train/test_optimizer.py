"""AdamW as the trainer builds it: which parameters decay, by how much, and what a step does."""

from __future__ import annotations

import pytest
import torch

from rotary.model import CausalLM, MaskedLM
from rotary.model.config import ModelConfig
from rotary.train.schedule import make_optimizer, param_groups

# Every kind of parameter: biases, LayerNorm weight and bias, token/type/position embeddings,
# an untied output matrix; the MLM head adds a dense layer, its norm and an output bias.
CFG = ModelConfig(vocab_size=50, max_seq_len=16, n_layer=2, n_head=2, d_model=16, d_ff=32, bias=True,
                  norm="layernorm", position="learned", type_vocab_size=2, tie_embeddings=False)
MODELS = {
    "causal-untied": lambda: CausalLM(CFG),
    "causal-tied-rms": lambda: CausalLM(CFG.replace(tie_embeddings=True, norm="rmsnorm", bias=False, position="rope")),
    "masked-tied": lambda: MaskedLM(CFG.replace(causal=False, pre_norm=False, tie_embeddings=True)),
    "masked-untied": lambda: MaskedLM(CFG.replace(causal=False)),
}
MATRICES = ("qkv_proj.weight", "o_proj.weight", "up_proj.weight", "down_proj.weight", "lm_head.weight",
            "head.dense.weight", "head.decoder.weight")


def should_decay(name: str) -> bool:
    """Written from the rule, not from the code: the layers' matrices decay; norms, biases and
    embeddings do not."""
    return name.endswith(MATRICES)


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return MODELS[name]()


def opt_for(model, lr=0.1, weight_decay=0.5, device="cpu"):
    return make_optimizer(model, lr=lr, weight_decay=weight_decay, betas=(0.8, 0.9), eps=1e-6,
                          device=torch.device(device))


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_is_in_exactly_one_group_with_its_decay(name):
    model = build(name)
    opt = opt_for(model, weight_decay=0.25)
    by_id = {id(p): n for n, p in model.named_parameters()}  # tied weights appear once
    seen: dict[str, float] = {}
    for group in opt.param_groups:
        for p in group["params"]:
            n = by_id[id(p)]
            assert n not in seen, f"{n} is in two groups"
            seen[n] = group["weight_decay"]
        assert group["lr"] == 0.1 and group["betas"] == (0.8, 0.9) and group["eps"] == 1e-6
    assert set(seen) == set(by_id.values())
    want = {n: 0.25 if should_decay(n) else 0.0 for n in by_id.values()}
    assert seen == want
    assert any(v == 0.25 for v in want.values()) and any(v == 0.0 for v in want.values())


@pytest.mark.parametrize("name", MODELS)
def test_a_step_with_zero_gradients_shrinks_matrices_by_lr_times_decay_only(name):
    """With zero gradients Adam's update is 0, so a step is decoupled weight decay alone:
    p <- p * (1 - lr * wd) for decayed matrices, unchanged for norms, biases and embeddings."""
    lr, wd = 0.1, 0.5
    model = build(name)
    with torch.no_grad():  # non-trivial norms and biases, so "unchanged" means something
        for p in model.parameters():
            p.add_(torch.rand_like(p) + 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = opt_for(model, lr=lr, weight_decay=wd)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        if should_decay(n):
            torch.testing.assert_close(p.detach(), before[n] * (1 - lr * wd), rtol=1e-6, atol=0, msg=n)
        else:
            assert torch.equal(p.detach(), before[n]), f"{n} changed: norms, biases and embeddings must not decay"


def test_a_step_moves_every_parameter_against_its_gradient():
    """First AdamW step: update = lr * g / (|g| + eps) ~ lr * sign(g), plus decay on matrices."""
    lr, wd = 0.01, 0.1
    model = build("causal-untied")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = opt_for(model, lr=lr, weight_decay=wd)
    g = torch.Generator().manual_seed(1)
    grads = {}
    for n, p in model.named_parameters():
        grads[n] = torch.randn(p.shape, generator=g) + 0.1  # away from 0: |g| >> eps
        p.grad = grads[n].clone()
    opt.step()
    for n, p in model.named_parameters():
        decay = 1 - lr * wd if should_decay(n) else 1.0
        want = before[n] * decay - lr * grads[n] / (grads[n].abs() + 1e-6)
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-6, msg=n)


def test_param_groups_without_decay_candidates_or_frozen_parameters():
    model = build("causal-untied")
    model.lm_head.weight.requires_grad_(False)  # frozen: not given to the optimizer
    groups = param_groups(model, 0.3)
    params = [p for grp in groups for p in grp["params"]]
    assert all(p is not model.lm_head.weight for p in params)
    assert [grp["weight_decay"] for grp in groups] == [0.3, 0.0]
    assert len(params) == len({id(p) for p in params}) == sum(p.requires_grad for p in model.parameters())


# -- Muon ------------------------------------------------------------------------------------------
HIDDEN = ("qkv_proj.weight", "o_proj.weight", "up_proj.weight", "down_proj.weight")


def muon_for(model, lr=0.1, weight_decay=0.5):
    return make_optimizer(model, lr=lr, weight_decay=weight_decay, betas=(0.8, 0.9), eps=1e-6,
                          device=torch.device("cpu"), kind="muon", muon_momentum=0.9)


@pytest.mark.parametrize("name", MODELS)
def test_muon_takes_the_blocks_matrices_by_role_and_adamw_the_rest(name):
    """Embeddings and the output head are 2-D too, but only the blocks' projections go to Muon."""
    model = build(name)
    opt = muon_for(model, weight_decay=0.25)
    by_id = {id(p): n for n, p in model.named_parameters()}
    muon = {by_id[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    adamw = {by_id[id(p)]: g["weight_decay"] for g in opt.adamw.param_groups for p in g["params"]}
    assert muon == {n for n in by_id.values() if n.endswith(HIDDEN)} and muon
    assert not muon & set(adamw) and muon | set(adamw) == set(by_id.values())
    # AdamW keeps its own rule for what remains: the heads' matrices decay, the rest does not
    assert adamw == {n: 0.25 if should_decay(n) else 0.0 for n in adamw}
    assert any(n.endswith(("embed_tokens.weight",)) for n in adamw)
    assert all(g["lr"] == 0.1 for g in opt.param_groups) and len(opt.param_groups) == 1 + len(opt.adamw.param_groups)


def newton_schulz_gain(s: float, steps: int = 5, coeffs=(3.4445, -4.775, 2.0315)) -> float:
    """What Muon's quintic Newton-Schulz iteration does to one singular value."""
    a, b, c = coeffs
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s


def test_muon_step_on_a_known_case():
    """A gradient with all singular values equal, g = k Q (Q orthogonal): normalised by its
    Frobenius norm every singular value is 1/sqrt(n), Newton-Schulz maps it to a known gain, so
    the first step is  W <- W (1 - lr wd) - lr 0.2 sqrt(max(rows, cols)) gain Q  (Nesterov:
    (1 + mu) g, the same direction), with Moonshot's AdamW-RMS-matching lr rule."""
    lr, wd = 0.02, 0.1
    model = build("causal-tied-rms")
    opt = muon_for(model, lr=lr, weight_decay=wd)
    w = model.backbone.layers[0].attn.o_proj.weight  # square (16, 16)
    n = w.shape[0]
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    q = q.float()
    before = w.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    w.grad = 7.0 * q
    opt.step()
    gain = newton_schulz_gain(1 / n**0.5)
    want = before * (1 - lr * wd) - lr * 0.2 * n**0.5 * gain * q
    torch.testing.assert_close(w.detach(), want, rtol=0, atol=2e-3)
    # the orthogonalised update is nothing like Adam's sign-like one: its rows are orthogonal
    update = (before * (1 - lr * wd) - w.detach()) / (lr * 0.2 * n**0.5)
    gram = update @ update.T
    torch.testing.assert_close(gram / gram.diag().mean(), torch.eye(n), atol=0.05, rtol=0)


def test_zero_grad_clears_both_halves_of_muon_adamw():
    """The trainer calls only ``zero_grad`` on the pair: AdamW's parameters (embeddings, norms)
    must lose their gradients too, or every step would add the last one's again."""
    model = build("causal-untied")
    opt = muon_for(model)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_muon_state_round_trips_and_refuses_an_adamw_state():
    model = build("causal-untied")
    opt = muon_for(model)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    sd = opt.state_dict()
    other = muon_for(build("causal-untied"))
    other.load_state_dict(sd)
    a, b = opt.muon.state_dict()["state"], other.muon.state_dict()["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k]["momentum_buffer"], b[k]["momentum_buffer"]) for k in a)
    with pytest.raises(KeyError):
        other.load_state_dict(opt_for(build("causal-untied")).state_dict())


def test_muon_under_fsdp_is_refused_in_one_line(tmp_path):
    from rotary.errors import RotaryError
    from rotary.train.config import TrainConfig
    from rotary.train.distributed import DistInfo
    from rotary.train.setup import prepare_run

    cfg = TrainConfig(output_dir=str(tmp_path / "run"), optimizer="muon", distributed="fsdp")
    with pytest.raises(RotaryError, match="muon needs whole matrices and FSDP shards them"):
        prepare_run(cfg, DistInfo(world_size=2), resume=False, overwrite=False, verify=True)
    assert not (tmp_path / "run").exists()


def newton_schulz(x: torch.Tensor, steps: int = 5, coeffs=(3.4445, -4.775, 2.0315)) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration, in float64: X <- aX + (bA + cA^2)X with A = XX^T,
    from X/|X|_F, on the wide orientation (the iteration is odd in X's singular values, so which
    side the Gram matrix is taken on changes nothing but its size)."""
    a, b, c = coeffs
    tall = x.shape[0] > x.shape[1]
    x = x.double().T if tall else x.double()
    x = x / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def muon_by_hand(w: torch.Tensor, grads: list[torch.Tensor], lr: float, wd: float, mu: float) -> torch.Tensor:
    """Written from the algorithm (torch.optim.Muon's documentation and Moonshot's lr rule), not
    from the code: B <- mu B + g; Nesterov blend g + mu B; orthogonalise; decoupled decay; a step of
    lr * 0.2 * sqrt(max(rows, cols))."""
    w, buf = w.double(), torch.zeros_like(w, dtype=torch.float64)
    rows, cols = w.shape
    for g in grads:
        buf = mu * buf + g.double()
        update = newton_schulz(g.double() + mu * buf)
        w = w * (1 - lr * wd) - lr * 0.2 * max(rows, cols) ** 0.5 * update
    return w


def test_muon_steps_on_non_square_matrices_equal_a_hand_computation_and_torch_muon():
    """Three steps with changing gradients: the first step alone cannot tell Nesterov from plain
    momentum (both are a multiple of g, the same after normalisation), and a square matrix cannot
    tell max(rows, cols) from rows or min(rows, cols). The blocks here are tall (48x16, 64x16),
    wide (16x32) and square."""
    lr, wd, mu = 0.02, 0.1, 0.9
    model = build("causal-untied")
    opt = muon_for(model, lr=lr, weight_decay=wd)  # momentum 0.9
    by_id = {id(p): n for n, p in model.named_parameters()}
    matrices = [p for g in opt.muon.param_groups for p in g["params"]]
    shapes = {tuple(p.shape) for p in matrices}
    assert any(r > c for r, c in shapes) and any(r < c for r, c in shapes)
    before = [p.detach().clone() for p in matrices]
    oracle_params = [torch.nn.Parameter(p.detach().clone()) for p in matrices]
    oracle = torch.optim.Muon(oracle_params, lr=lr, weight_decay=wd, momentum=mu, nesterov=True,
                              adjust_lr_fn="match_rms_adamw")
    gen = torch.Generator().manual_seed(4)
    grads: list[list[torch.Tensor]] = [[] for _ in matrices]
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        for i, (p, q) in enumerate(zip(matrices, oracle_params)):
            grads[i].append(p.grad.clone())
            q.grad = p.grad.clone()
        opt.step()
        oracle.step()
    for p, q, w0, gs in zip(matrices, oracle_params, before, grads):
        name = by_id[id(p)]
        # the hand computation in float64; torch orthogonalises in bfloat16 (errors up to 6e-4 on
        # an update of ~0.025 here), while plain momentum or another lr rule moves W by 3e-3 to 1e-2
        torch.testing.assert_close(p.detach().double(), muon_by_hand(w0, gs, lr, wd, mu), rtol=0, atol=1.5e-3,
                                   msg=lambda m, name=name: f"{name}: {m}")
        # torch's Muon with the settings rotary documents: the same arithmetic, bit for bit
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=0, msg=lambda m, name=name: f"{name}: {m}")


def test_layer_lr_decay_scales_each_depth_and_the_loop_applies_it(tmp_path, monkeypatch):
    """layer_lr_decay d: the head learns at lr, block i of L at lr * d^(L - i), the embeddings
    at lr * d^(L + 1); every parameter in one group; the trainer sets each group's lr so."""
    from rotary.train import loop
    from rotary.train.loop import train
    from tests.train_support import make_recipe, write_corpus

    model = build("masked-untied")
    L = model.config.n_layer
    groups = param_groups(model, 0.1, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert len(scale) == sum(1 for _ in model.parameters())  # each exactly once
    for name, p in model.named_parameters():
        if name.startswith("backbone.layers."):
            want = 0.5 ** (L - int(name.split(".")[2]))
        elif name.startswith("backbone.embed"):
            want = 0.5 ** (L + 1)
        else:
            want = 1.0
        assert scale[id(p)] == want, name
        decayed = any(p is q for g in groups if g["weight_decay"] for q in g["params"])
        assert decayed == should_decay(name), name
    with pytest.raises(Exception, match="layer_lr_decay is for optimizer adamw"):
        make_optimizer(model, lr=0.1, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, device=torch.device("cpu"),
                       kind="muon", layer_decay=0.5)
    made = []
    real = loop.make_optimizer
    monkeypatch.setattr(loop, "make_optimizer", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    cfg = make_recipe(tmp_path / "run", write_corpus(tmp_path / "docs", 20), max_steps=2, lr_schedule="constant",
                      warmup_steps=0, layer_lr_decay=0.5, tensorboard=False)
    train(cfg)
    (opt,) = made
    assert sorted({g["lr"] / cfg.lr for g in opt.param_groups}) == sorted({g["lr_scale"] for g in opt.param_groups})
    assert min(g["lr"] for g in opt.param_groups) == pytest.approx(cfg.lr * 0.5 ** (2 + 1))  # tiny: 2 blocks
