"""Mathematical properties of RoPE (rotary.model.rope), checked against the papers' formulas.

RoFormer (Su et al. 2021), eq. 13-15: f(x, m) = R_{Theta,m} x with R block-diagonal 2x2
rotations by m * theta_i, theta_i = base^(-2(i-1)/d), i = 1..d/2. rotary uses the
"rotate-half" layout: pair i is (x_i, x_{i + d/2}).
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rotary.errors import RotaryError
from rotary.model.config import ModelConfig
from rotary.model.rope import (
    ROPE_SCALINGS,
    RotaryEmbedding,
    apply_rope,
    base_inv_freq,
    cos_sin,
    dynamic_ntk_base,
    rope_parameters,
    yarn_attention_scale,
)

FAST = settings(max_examples=25, deadline=None)

# Even rotary dimensions and RoPE bases seen in practice.
dims = st.sampled_from([2, 4, 8, 16, 32, 64, 128])
bases = st.sampled_from([100.0, 10000.0, 500000.0])
positions = st.integers(min_value=0, max_value=5000)


def paper_rotation_matrix(m: int, dim: int, base: float) -> torch.Tensor:
    """R_{Theta,m} of RoFormer eq. 15, written out entry by entry (halves layout), fp64."""
    R = torch.zeros(dim, dim, dtype=torch.float64)
    half = dim // 2
    for i in range(1, half + 1):  # the paper's 1-based i
        theta = base ** (-2 * (i - 1) / dim)
        c, s = math.cos(m * theta), math.sin(m * theta)
        a, b = i - 1, i - 1 + half  # the pair this rotation acts on
        R[a, a], R[a, b] = c, -s
        R[b, a], R[b, b] = s, c
    return R


def rope_at(x: torch.Tensor, pos: int, base: float) -> torch.Tensor:
    """apply_rope for one position on a (..., dim) vector, via the library's cos/sin."""
    dim = x.shape[-1]
    cos, sin = cos_sin(torch.tensor([pos]), base_inv_freq(dim, base))
    return apply_rope(x.reshape(1, 1, 1, dim), cos, sin).reshape(x.shape)


def rel_close(a: torch.Tensor, b: torch.Tensor, scale: float, tol: float = 2e-6) -> None:
    # cos/sin are served in fp32, so errors are ~1e-7 relative to the vectors' magnitudes.
    assert torch.allclose(a, b, atol=tol * scale, rtol=0), (a, b)


def model_cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=64, max_seq_len=16, n_layer=1, n_head=2, d_model=32, d_ff=32)
    base.update(kw)
    return ModelConfig(**base)


# ---------------------------------------------------------------------------------------------
# The paper's formula
# ---------------------------------------------------------------------------------------------


@FAST
@given(dim=dims, base=bases)
def test_frequencies_match_roformer_formula(dim, base):
    inv = base_inv_freq(dim, base)
    assert inv.shape == (dim // 2,)
    for i in range(1, dim // 2 + 1):  # theta_i = base^(-2(i-1)/d)
        assert inv[i - 1].item() == pytest.approx(base ** (-2 * (i - 1) / dim), rel=1e-12)


def test_plain_config_frequencies_use_rotary_dim_and_theta():
    cfg = model_cfg(d_model=64, n_head=2, rope_theta=500.0, rotary_fraction=0.25)  # hd 32, rot 8
    inv, scale = rope_parameters(cfg)
    assert scale == 1.0
    expected = torch.tensor([500.0 ** (-2 * i / 8) for i in range(4)], dtype=torch.float64)
    torch.testing.assert_close(inv, expected, rtol=1e-12, atol=0)


@FAST
@given(dim=dims, base=bases, m=positions, seed=st.integers(0, 2**16))
def test_apply_rope_is_the_paper_rotation(dim, base, m, seed):
    x = torch.randn(dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    expected = paper_rotation_matrix(m, dim, base) @ x
    rel_close(rope_at(x, m, base), expected, x.norm().item())


def test_position_zero_is_identity_and_other_positions_are_not():
    x = torch.randn(2, 3, 5, 16, dtype=torch.float64)
    cos, sin = cos_sin(torch.zeros(5, dtype=torch.long), base_inv_freq(16, 10000.0))
    torch.testing.assert_close(apply_rope(x, cos, sin), x)
    cos, sin = cos_sin(torch.arange(1, 6), base_inv_freq(16, 10000.0))
    assert (apply_rope(x, cos, sin) - x).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------
# Relative positions and norms
# ---------------------------------------------------------------------------------------------


@FAST
@given(
    dim=dims,
    base=bases,
    m=positions,
    n=positions,
    shift=st.integers(min_value=-5000, max_value=5000),
    seed=st.integers(0, 2**16),
)
def test_score_depends_only_on_relative_position(dim, base, m, n, shift, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(dim, dtype=torch.float64, generator=g)
    k = torch.randn(dim, dtype=torch.float64, generator=g)
    shift = max(shift, -min(m, n))  # keep positions non-negative
    score = torch.dot(rope_at(q, m, base), rope_at(k, n, base))
    shifted = torch.dot(rope_at(q, m + shift, base), rope_at(k, n + shift, base))
    scale = (q.norm() * k.norm()).item()
    assert abs(score - shifted).item() <= 4e-6 * scale
    # <R_m q, R_n k> = <q, R_{n-m} k>; with n - m negative, rotate q instead: <R_{m-n} q, k>.
    if n >= m:
        relative = torch.dot(q, rope_at(k, n - m, base))
    else:
        relative = torch.dot(rope_at(q, m - n, base), k)
    assert abs(score - relative).item() <= 4e-6 * scale


def test_score_does_change_with_relative_distance():
    """The invariance above is not the trivial kind: scores do vary with m - n."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 64, dtype=torch.float64, generator=g)
    scores = {round(torch.dot(rope_at(q, d, 10000.0), k).item(), 6) for d in range(8)}
    assert len(scores) == 8


@FAST
@given(
    hd=st.sampled_from([8, 16, 32]),
    frac=st.sampled_from([0.25, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
    start=st.integers(0, 100000),
)
def test_rotation_keeps_norms(hd, frac, seed, start):
    x = torch.randn(2, 3, 7, hd, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    rot = int(hd * frac)
    cos, sin = cos_sin(torch.arange(start, start + 7), base_inv_freq(rot, 10000.0))
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-6, atol=0)
    # ... and per rotated pair (i, i + r/2), not just overall
    pair = lambda t: t[..., : rot // 2] ** 2 + t[..., rot // 2 : rot] ** 2  # noqa: E731
    torch.testing.assert_close(pair(y), pair(x), rtol=1e-5, atol=1e-9)


@FAST
@given(seed=st.integers(0, 2**16), start=st.integers(0, 1000))
def test_partial_rotary_leaves_pass_through_dims_untouched(seed, start):
    cfg = model_cfg(d_model=64, n_head=2, rotary_fraction=0.25)  # head_dim 32, rotary 8
    assert cfg.rotary_dim == 8
    rope = RotaryEmbedding(cfg)
    cos, sin = rope(start + 6, start=start)
    assert cos.shape == (6, 8)
    x = torch.randn(1, 2, 6, 32, generator=torch.Generator().manual_seed(seed))
    y = apply_rope(x, cos, sin)
    assert torch.equal(y[..., 8:], x[..., 8:])  # bit for bit
    if start > 0:
        assert not torch.allclose(y[..., :8], x[..., :8])
    # the rotated part is exactly a full RoPE of an 8-dim head
    torch.testing.assert_close(y[..., :8], apply_rope(x[..., :8].contiguous(), cos, sin))


# ---------------------------------------------------------------------------------------------
# The cos/sin cache
# ---------------------------------------------------------------------------------------------


def direct_cos_sin(pos: torch.Tensor, inv_freq: torch.Tensor, scale: float = 1.0):
    """cos/sin of m * theta_i, computed here with numpy-free float64 torch ops."""
    angles = pos.double()[..., None] * inv_freq.double()
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos() * scale, angles.sin() * scale


@FAST
@given(
    scaling=st.sampled_from(["none", "linear", "yarn"]),
    factor=st.sampled_from([1.0, 2.0, 8.0]),
    far=st.integers(min_value=17, max_value=20000),
    seed=st.integers(0, 2**16),
)
def test_cache_equals_direct_computation_and_grows_without_ceiling(scaling, factor, far, seed):
    if scaling == "none":
        factor = 1.0
    cfg = model_cfg(rope_scaling=scaling, rope_scaling_factor=factor)
    rope = RotaryEmbedding(cfg)
    assert rope.table_len == cfg.max_seq_len
    inv, scale = rope_parameters(cfg)

    cos, sin = rope(cfg.max_seq_len)
    ec, es = direct_cos_sin(torch.arange(cfg.max_seq_len), inv, scale)
    torch.testing.assert_close(cos.double(), ec, atol=1e-7, rtol=0)
    torch.testing.assert_close(sin.double(), es, atol=1e-7, rtol=0)

    # positions past the initial table: it regrows, and the values are still right
    pos = torch.randint(0, far + 1, (2, 9), generator=torch.Generator().manual_seed(seed))
    pos[0, 0] = far
    cos, sin = rope(far + 1, pos)
    assert rope.table_len >= far + 1
    ec, es = direct_cos_sin(pos, inv, scale)
    torch.testing.assert_close(cos.double(), ec, atol=1e-6, rtol=0)
    torch.testing.assert_close(sin.double(), es, atol=1e-6, rtol=0)

    # a contiguous range from a start offset, after growth
    cos, sin = rope(far + 1, start=far - 3)
    ec, es = direct_cos_sin(torch.arange(far - 3, far + 1), inv, scale)
    torch.testing.assert_close(cos.double(), ec, atol=1e-6, rtol=0)
    torch.testing.assert_close(sin.double(), es, atol=1e-6, rtol=0)


def test_cache_values_against_math_cos():
    cfg = model_cfg(d_model=16, n_head=2)  # rotary dim 8
    rope = RotaryEmbedding(cfg)
    cos, sin = rope(1001, torch.tensor([[3, 1000]]))
    for j, m in enumerate([3, 1000]):
        for i in range(4):
            theta = 10000.0 ** (-2 * i / 8)
            for col in (i, i + 4):
                assert cos[0, j, col].item() == pytest.approx(math.cos(m * theta), abs=1e-6)
                assert sin[0, j, col].item() == pytest.approx(math.sin(m * theta), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Scaling variants
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scaling", sorted(ROPE_SCALINGS))
@pytest.mark.parametrize("seq_len", [1, 16, 17, 40, 5000])
def test_every_scaling_at_factor_one_is_plain_rope(scaling, seq_len):
    plain_cfg = model_cfg()
    cfg = model_cfg(rope_scaling=scaling, rope_scaling_factor=1.0)
    inv, scale = rope_parameters(cfg, seq_len)
    plain_inv, plain_scale = rope_parameters(plain_cfg, seq_len)
    assert scale == plain_scale == 1.0
    torch.testing.assert_close(inv, plain_inv, rtol=0, atol=0)
    # and through the module, past the original context
    cos, sin = RotaryEmbedding(cfg)(seq_len)
    pcos, psin = RotaryEmbedding(plain_cfg)(seq_len)
    torch.testing.assert_close(cos, pcos, rtol=0, atol=0)
    torch.testing.assert_close(sin, psin, rtol=0, atol=0)


@pytest.mark.parametrize("scaling", ["linear", "dynamic_ntk", "yarn"])
def test_every_scaling_above_factor_one_changes_frequencies(scaling):
    cfg = model_cfg(rope_scaling=scaling, rope_scaling_factor=4.0)
    inv, _ = rope_parameters(cfg, 40)  # past the original 16
    assert not torch.allclose(inv, base_inv_freq(cfg.rotary_dim, cfg.rope_theta))


def test_linear_scaling_divides_positions_by_factor():
    cfg = model_cfg(rope_scaling="linear", rope_scaling_factor=4.0)
    cos, sin = RotaryEmbedding(cfg)(401, torch.tensor([[4, 40, 400]]))
    pcos, psin = RotaryEmbedding(model_cfg())(101, torch.tensor([[1, 10, 100]]))
    torch.testing.assert_close(cos, pcos, atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, psin, atol=1e-6, rtol=0)


# -- dynamic NTK --------------------------------------------------------------------------------


def ntk_base_reference(base: float, factor: float, seq_len: int, orig: int, dim: int) -> float:
    """bloc97's NTK-aware scaling as transformers' dynamic NTK computes it, spelled out."""
    if seq_len <= orig:
        return base
    alpha = factor * seq_len / orig - (factor - 1)
    return base * alpha ** (dim / (dim - 2))


@FAST
@given(
    factor=st.sampled_from([1.5, 2.0, 4.0, 8.0]),
    seq_len=st.integers(1, 100000),
    orig=st.sampled_from([16, 512, 4096]),
    dim=st.sampled_from([4, 8, 64, 128]),
)
def test_dynamic_ntk_base_formula(factor, seq_len, orig, dim):
    d_model = 2 * dim
    cfg = ModelConfig(
        vocab_size=8, d_model=d_model, n_head=2, max_seq_len=orig, rope_scaling="dynamic_ntk",
        rope_scaling_factor=factor,
    )
    got = dynamic_ntk_base(cfg, seq_len)
    assert got == pytest.approx(ntk_base_reference(10000.0, factor, seq_len, orig, dim), rel=1e-12)
    inv, scale = rope_parameters(cfg, seq_len)
    assert scale == 1.0
    torch.testing.assert_close(inv, base_inv_freq(dim, got), rtol=1e-12, atol=0)
    if seq_len > orig:
        assert got > 10000.0
        assert dynamic_ntk_base(cfg, seq_len + 1) > got  # grows with the length
    else:
        assert got == 10000.0


def test_dynamic_ntk_base_is_continuous_at_the_original_length():
    cfg = model_cfg(rope_scaling="dynamic_ntk", rope_scaling_factor=4.0)
    assert dynamic_ntk_base(cfg, 16) == 10000.0
    assert dynamic_ntk_base(cfg, 17) == pytest.approx(10000.0 * (4 * 17 / 16 - 3) ** (16 / 14))
    assert dynamic_ntk_base(cfg, 17) < 10000.0 * 1.5


def test_dynamic_ntk_module_uses_the_current_length():
    cfg = model_cfg(rope_scaling="dynamic_ntk", rope_scaling_factor=2.0)
    rope = RotaryEmbedding(cfg)
    # within the original context: the plain table
    cos, _ = rope(16)
    torch.testing.assert_close(cos, RotaryEmbedding(model_cfg())(16)[0], rtol=0, atol=0)
    # past it: every position rotated with the base for the whole length
    for total in (17, 40, 300):
        cos, sin = rope(total)
        inv = base_inv_freq(cfg.rotary_dim, ntk_base_reference(10000.0, 2.0, total, 16, 16))
        ec, es = direct_cos_sin(torch.arange(total), inv)
        torch.testing.assert_close(cos.double(), ec, atol=1e-6, rtol=0)
        torch.testing.assert_close(sin.double(), es, atol=1e-6, rtol=0)


# -- YaRN ---------------------------------------------------------------------------------------


def yarn_inv_freq_reference(dim, base, factor, orig, beta_fast, beta_slow):
    """YaRN (Peng et al. 2023, sec. 3.2 and its reference code), in plain Python.

    Pair d has frequency theta_d = base^(-2d/D) and wavelength lambda_d = 2 pi / theta_d; over
    the original context L it makes r(d) = L / lambda_d turns. The dimension index where
    r = beta is D * ln(L / (2 pi beta)) / (2 ln base). Pairs up to the beta_fast index keep
    theta_d, pairs from the beta_slow index on get theta_d / s, and a linear ramp over the
    index blends the two in between: h = (1 - gamma) theta_d / s + gamma theta_d.
    """

    def index_where_turns(beta):
        return dim * math.log(orig / (2 * math.pi * beta)) / (2 * math.log(base))

    lo = max(math.floor(index_where_turns(beta_fast)), 0)
    hi = min(math.ceil(index_where_turns(beta_slow)), dim - 1)
    if hi == lo:
        hi += 0.001
    out = []
    for d in range(dim // 2):
        theta = base ** (-2 * d / dim)
        interpolate = min(max((d - lo) / (hi - lo), 0.0), 1.0)  # 0 = keep, 1 = divide by s
        gamma = 1.0 - interpolate
        out.append((1 - gamma) * theta / factor + gamma * theta)
    return out


@FAST
@given(
    dim=st.sampled_from([8, 16, 64, 128]),
    base=st.sampled_from([10000.0, 500000.0]),
    factor=st.sampled_from([1.0, 2.0, 4.0, 16.0]),
    orig=st.sampled_from([16, 256, 2048, 4096]),
    betas=st.sampled_from([(32.0, 1.0), (16.0, 2.0)]),
)
def test_yarn_inv_freq_against_reference(dim, base, factor, orig, betas):
    cfg = ModelConfig(
        vocab_size=8, d_model=2 * dim, n_head=2, max_seq_len=orig, rope_theta=base,
        rope_scaling="yarn", rope_scaling_factor=factor, yarn_beta_fast=betas[0],
        yarn_beta_slow=betas[1],
    )
    inv, scale = rope_parameters(cfg, 10 * orig)
    ref = yarn_inv_freq_reference(dim, base, factor, orig, *betas)
    torch.testing.assert_close(inv, torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=0)
    assert scale == pytest.approx(0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)


@pytest.mark.parametrize("orig,dim,factor", [(4096, 128, 8.0), (2048, 64, 4.0), (8192, 128, 16.0)])
def test_yarn_paper_regions(orig, dim, factor):
    """Paper sec. 3.2: r(d) > beta (fast dims) untouched; r(d) < alpha fully interpolated."""
    cfg = ModelConfig(
        vocab_size=8, d_model=2 * dim, n_head=2, max_seq_len=orig, rope_scaling="yarn",
        rope_scaling_factor=factor,
    )
    inv, _ = rope_parameters(cfg)
    plain = base_inv_freq(dim, 10000.0)
    turns = orig * plain / (2 * math.pi)  # r(d)
    fast, slow = turns > 32.0, turns < 1.0
    assert fast.any() and slow.any() and (~fast & ~slow).any()
    torch.testing.assert_close(inv[fast], plain[fast], rtol=1e-12, atol=0)
    torch.testing.assert_close(inv[slow], plain[slow] / factor, rtol=1e-12, atol=0)
    mid = ~fast & ~slow
    assert (inv[mid] <= plain[mid] * (1 + 1e-12)).all()
    assert (inv[mid] >= plain[mid] / factor * (1 - 1e-12)).all()
    # the share interpolated grows with the dimension index (lower frequency)
    share = (plain - inv) / (plain - plain / factor)
    assert (share[1:] >= share[:-1] - 1e-12).all()


def test_yarn_attention_scale_multiplies_cos_and_sin():
    cfg = model_cfg(rope_scaling="yarn", rope_scaling_factor=4.0)
    rope = RotaryEmbedding(cfg)
    mscale = 0.1 * math.log(4.0) + 1.0
    assert rope.attention_scale == pytest.approx(mscale)
    assert yarn_attention_scale(1.0) == 1.0
    cos, sin = rope(50)  # past the original 16, past the table
    torch.testing.assert_close(cos**2 + sin**2, torch.full_like(cos, mscale**2), rtol=1e-5, atol=0)


def test_dynamic_ntk_refuses_two_rotary_dims():
    """The NTK exponent d/(d-2) is undefined for a single rotated pair."""
    with pytest.raises(RotaryError, match="dynamic_ntk"):
        model_cfg(d_model=16, n_head=2, rotary_fraction=0.25, rope_scaling="dynamic_ntk",
                  rope_scaling_factor=2.0)


def test_dynamic_ntk_base_follows_each_rows_real_length():
    """With lengths (B,), each row is rotated with the base of its own unpadded length."""
    cfg = model_cfg(rope_scaling="dynamic_ntk", rope_scaling_factor=2.0)
    rope = RotaryEmbedding(cfg)
    lengths = torch.tensor([40, 25, 10])
    pos = torch.arange(40).expand(3, -1)
    cos, sin = rope(40, pos, lengths=lengths)
    assert cos.shape == (3, 40, cfg.rotary_dim)
    for row, n in enumerate(lengths.tolist()):
        alone_cos, alone_sin = rope(n)  # a batch of just this row, unpadded
        assert torch.equal(cos[row, :n], alone_cos)
        assert torch.equal(sin[row, :n], alone_sin)
    assert not torch.allclose(cos[0, :10], cos[1, :10])  # the bases really differ


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_table_regrown_after_a_dtype_cast_keeps_float64_frequencies(dtype):
    """model.to(bfloat16) casts float buffers; growing the table must not use rounded theta_i."""
    cfg = model_cfg(d_model=128, n_head=2, rope_scaling="yarn", rope_scaling_factor=2.0)
    rope = RotaryEmbedding(cfg).to(dtype)
    cos, sin = rope(4000)  # past the initial 16 positions: the table regrows
    ec, es = direct_cos_sin(torch.arange(4000), *rope_parameters(cfg))
    torch.testing.assert_close(cos.double(), ec, atol=1e-2, rtol=0)  # only rounding to `dtype`
    torch.testing.assert_close(sin.double(), es, atol=1e-2, rtol=0)
