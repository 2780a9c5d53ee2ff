"""Rotary Position Embedding (RoFormer, Su et al. 2021), with the context-extension variants.

RoPE rotates each pair of query/key dimensions (x_i, x_{i+d/2}) at position m by the angle
m * theta_i, theta_i = base^(-2i/d) (paper eq. 15, in the "rotate-half" layout). Because
<R_m q, R_n k> = <q, R_{n-m} k>, attention scores depend only on relative positions.

Layout: rotary rotates halves (Llama's layout). RoFormer's original code rotates adjacent pairs
(x_{2i}, x_{2i+1}); the two are the same function after permuting the rows of W_q and W_k, which
``rotary.hf`` does when converting RoFormer checkpoints.

Scaling variants live in one registry: each returns (inverse frequencies, attention scale).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from rotary.errors import RotaryError
from rotary.model.config import ModelConfig

RopeParams = tuple[torch.Tensor, float]  # (inv_freq (rotary_dim/2,) float64, attention scale)


def base_inv_freq(dim: int, base: float) -> torch.Tensor:
    """theta_i = base^(-2i/dim) for i in [0, dim/2): the RoFormer paper's frequencies."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


def _plain(cfg: ModelConfig, seq_len: int) -> RopeParams:
    return base_inv_freq(cfg.rotary_dim, cfg.rope_theta), 1.0


def _linear(cfg: ModelConfig, seq_len: int) -> RopeParams:
    # Position interpolation (Chen et al. 2023): positions divided by the factor.
    return base_inv_freq(cfg.rotary_dim, cfg.rope_theta) / cfg.rope_scaling_factor, 1.0


def dynamic_ntk_base(cfg: ModelConfig, seq_len: int) -> float:
    """The NTK-aware base for a sequence of ``seq_len`` tokens (transformers' formula).

    It changes only past the original context and only when factor > 1, so factor 1 is plain
    RoPE (transformers would rescale even at factor 1).
    """
    orig, factor, dim = cfg.original_max_seq_len, cfg.rope_scaling_factor, cfg.rotary_dim
    if seq_len <= orig or factor == 1.0:
        return cfg.rope_theta
    return cfg.rope_theta * ((factor * seq_len / orig) - (factor - 1)) ** (dim / (dim - 2))


def _dynamic_ntk(cfg: ModelConfig, seq_len: int) -> RopeParams:
    return base_inv_freq(cfg.rotary_dim, dynamic_ntk_base(cfg, seq_len)), 1.0


def dynamic_ntk_inv_freq(cfg: ModelConfig, lengths: torch.Tensor) -> torch.Tensor:
    """Each row's inverse frequencies (B, rotary_dim/2) float64 for its length (B,): the tensor
    form of :func:`dynamic_ntk_base`, with no host sync (the decode engine's compiled step)."""
    orig, factor, dim = cfg.original_max_seq_len, cfg.rope_scaling_factor, cfg.rotary_dim
    n = lengths.to(torch.float64)
    # rows within the original context keep the plain base (the scaled one is NaN for short rows)
    scaled = cfg.rope_theta * ((factor * n / orig) - (factor - 1)) ** (dim / (dim - 2))
    base = torch.where((n > orig) & (factor != 1.0), scaled, torch.full_like(n, cfg.rope_theta))
    exponents = torch.arange(0, dim, 2, dtype=torch.float64, device=lengths.device) / dim
    return 1.0 / base[:, None] ** exponents  # (B, dim/2)


def yarn_attention_scale(factor: float) -> float:
    return 0.1 * math.log(factor) + 1.0 if factor > 1.0 else 1.0


def _yarn(cfg: ModelConfig, seq_len: int) -> RopeParams:
    """YaRN (Peng et al. 2023): interpolate low frequencies, keep high ones, temper attention."""
    dim, base, factor = cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling_factor
    orig = cfg.original_max_seq_len

    def correction_dim(rotations: float) -> float:
        # The dimension whose wavelength completes `rotations` turns over the original context.
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(cfg.yarn_beta_fast)), 0)
    high = min(math.ceil(correction_dim(cfg.yarn_beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # avoid a division by zero in the ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    extrapolation = base_inv_freq(dim, base)
    interpolation = extrapolation / factor
    keep = 1.0 - ramp  # 1 = keep the original (high) frequency
    inv_freq = interpolation * (1.0 - keep) + extrapolation * keep
    return inv_freq, yarn_attention_scale(factor)


ROPE_SCALINGS: dict[str, Callable[[ModelConfig, int], RopeParams]] = {
    "none": _plain,
    "linear": _linear,
    "dynamic_ntk": _dynamic_ntk,
    "yarn": _yarn,
}


def rope_parameters(cfg: ModelConfig, seq_len: int | None = None) -> RopeParams:
    """Inverse frequencies and attention scale of ``cfg``'s variant for a sequence length."""
    return ROPE_SCALINGS[cfg.rope_scaling](cfg, seq_len or cfg.original_max_seq_len)


def cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, scale: float = 1.0):
    """cos and sin of m * theta_i, duplicated over both halves: shape positions.shape + (dim,).

    The halves layout, [θ0, θ1, ..., θ0, θ1, ...]: dimension i pairs with i + dim/2.
    """
    angles = positions.to(torch.float64)[..., None] * inv_freq.to(positions.device, torch.float64)
    angles = torch.cat((angles, angles), dim=-1)  # positions.shape + (dim/2,) -> + (dim,)
    return (angles.cos() * scale).float(), (angles.sin() * scale).float()


def rope_factors(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and the signed sin that :func:`rotate` multiplies by, shaped to broadcast over heads:
    computed once per forward pass, not once per layer and tensor.

    rotate_half(x) * sin == roll(x, r/2) * [-sin_lo, sin_hi]: one roll instead of chunk + neg + cat.
    """
    if cos.dim() == 3:  # (B, T, r) -> (B, 1, T, r)
        cos, sin = cos[:, None], sin[:, None]
    half = sin.shape[-1] // 2
    return cos, torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` dims of ``x`` (B, H, T, hd) by :func:`rope_factors`'
    output; the rest pass through. addcmul fuses the multiply-add (fewer passes over q and k)."""
    if cos.dtype != x.dtype:
        cos, signed_sin = cos.to(x.dtype), signed_sin.to(x.dtype)
    rot = cos.shape[-1]
    half = rot // 2
    if rot == x.shape[-1]:
        return torch.addcmul(x * cos, x.roll(half, dims=-1), signed_sin)
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    rotated = torch.addcmul(x_rot * cos, x_rot.roll(half, dims=-1), signed_sin)
    return torch.cat((rotated, x_pass), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` dims of ``x`` (B, H, T, hd); the rest pass through.

    ``cos``/``sin`` are (T, r) or (B, T, r); they broadcast over heads.
    """
    return rotate(x, *rope_factors(cos, sin))


class RotaryEmbedding(nn.Module):
    """Serves cos/sin for any positions from a table built once and grown on demand.

    There is no fixed ceiling on positions: asking past the table's end regrows it (doubling).
    Dynamic NTK depends on the sequence length, so past the original context it computes
    cos/sin for the current length directly instead of reading the table.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        inv_freq, scale = rope_parameters(cfg)
        # YaRN's temperature folded into cos/sin: q and k each scaled by sqrt(1/t) scale their dot
        # product by 1/t, with no change to attention (as the paper and transformers do).
        self.attention_scale = scale
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("cos_table", torch.empty(0), persistent=False)
        self.register_buffer("sin_table", torch.empty(0), persistent=False)
        self.dynamic = cfg.rope_scaling == "dynamic_ntk"
        self._grow(cfg.max_seq_len)

    @property
    def table_len(self) -> int:
        return self.cos_table.shape[0]

    def _grow(self, length: int) -> None:
        size = max(length, 2 * self.table_len)
        device = self.inv_freq.device
        # From the config, in float64: the buffer may have been cast by model.to(bfloat16).
        inv_freq, _ = rope_parameters(self.cfg)
        cos, sin = cos_sin(torch.arange(size), inv_freq, self.attention_scale)
        self.cos_table = cos.to(device)
        self.sin_table = sin.to(device)

    def ensure(self, length: int) -> None:
        """Grow the table to cover positions 0..length-1 now (before a compiled pass reads it)."""
        if length > self.table_len:
            self._grow(length)

    def at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin (B, T, r) for positions the table already covers (no growth, no host sync);
        not for dynamic NTK, whose base follows the length."""
        return self.cos_table[positions], self.sin_table[positions]

    def for_rows(self, positions: torch.Tensor, lengths: torch.Tensor, key_positions: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Dynamic NTK for rows of a slot cache: (cos, sin) (B, T, r) of the new tokens at
        ``positions`` (B, T) and (key_cos, key_sin) (B, S, r) of every key at ``key_positions``
        (S,), each row with the base of its own length ``lengths`` (B,) (cached + new tokens).
        The cache holds unrotated keys, so every key takes this pass's base, as in ``for_pass``."""
        inv_freq = dynamic_ntk_inv_freq(self.cfg, lengths)[:, None, :]  # (B, 1, r/2): broadcasts over T
        cos, sin = cos_sin(positions, inv_freq)
        key_cos, key_sin = cos_sin(key_positions.expand(len(lengths), -1), inv_freq)  # (B, S, r)
        return cos, sin, key_cos, key_sin

    def uses_length(self, seq_len: int) -> bool:
        """True when cos/sin depend on the total length (dynamic NTK past the original context)."""
        return self.dynamic and dynamic_ntk_base(self.cfg, seq_len) != self.cfg.rope_theta

    def for_pass(
        self,
        total: int,
        positions: torch.Tensor | None,
        past: int,
        attention_mask: torch.Tensor | None,
        key_positions: torch.Tensor | None,
        rotate_cached_keys: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(cos, sin) for one forward pass's new tokens, then (key_cos, key_sin) for every key
        so far when ``rotate_cached_keys`` (else None, None).

        The one place of dynamic NTK under a KV cache: its base depends on the total length, so
        keys rotated at an earlier step would keep a stale base (transformers #25104); the cache
        then holds unrotated keys and all of them are rotated with this step's base.
        ``total`` = cached + new tokens; ``positions`` (B, T) are the new tokens' positions (None:
        ``past..total-1``); ``key_positions`` (B, total) all tokens' (None: ``0..total-1``).
        """
        # Dynamic NTK's base follows each row's real length, not the padded one.
        lengths = attention_mask.sum(-1) if self.dynamic and attention_mask is not None else None
        cos, sin = self(total, positions, start=past, lengths=lengths)
        if not rotate_cached_keys:
            return cos, sin, None, None
        if key_positions is None and positions is not None:
            if past:  # the cached tokens' positions are unknown
                raise RotaryError(
                    "with dynamic NTK and a KV cache pass attention_mask, not position_ids"
                )
            key_positions = positions
        key_cos, key_sin = self(total, key_positions, start=0, lengths=lengths)
        return cos, sin, key_cos, key_sin

    def forward(
        self,
        seq_len: int,
        positions: torch.Tensor | None = None,
        start: int = 0,
        lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for ``positions`` (B, T), or for positions ``start..seq_len-1`` when None.

        ``seq_len`` is the total sequence length (past + new tokens): dynamic NTK's base.
        ``lengths`` (B,), when given, are the rows' real (unpadded) lengths: dynamic NTK then
        takes each row's base from its own length, so padding does not change a row's outputs.
        """
        if self.dynamic and lengths is not None:
            if self.uses_length(int(lengths.max())):
                inv_freq = dynamic_ntk_inv_freq(self.cfg, lengths)
                pos = positions
                if pos is None:
                    pos = torch.arange(start, seq_len, device=lengths.device)
                    pos = pos.expand(len(lengths), -1)  # (B, T)
                return cos_sin(pos, inv_freq[:, None, :])  # (B, 1, r/2) broadcasts over T
        elif self.uses_length(seq_len):
            inv_freq, scale = _dynamic_ntk(self.cfg, seq_len)
            pos = positions
            if pos is None:
                pos = torch.arange(start, seq_len, device=self.inv_freq.device)
            return cos_sin(pos, inv_freq, scale)
        # explicit positions may point past seq_len (position_ids given by the caller)
        need = seq_len
        if positions is not None and positions.numel():
            need = max(seq_len, int(positions.max()) + 1)
        if need > self.table_len:
            self._grow(need)
        if positions is None:
            return self.cos_table[start:seq_len], self.sin_table[start:seq_len]
        return self.cos_table[positions], self.sin_table[positions]


# ---------------------------------------------------------------------------------------------
# The two RoPE layouts, and the row order that turns one into the other
# ---------------------------------------------------------------------------------------------
#
# Which dimensions of a head (d = head_dim) rotate together, and the angle each one gets:
#
#   interleaved (RoFormer, Meta's Llama code): adjacent pairs (x0,x1), (x2,x3), ...
#       angles per dimension  [θ0, θ0, θ1, θ1, ..., θ(d/2-1), θ(d/2-1)]
#   halves (HF Llama, rotary):                 pairs (x0,x(d/2)), (x1,x(d/2+1)), ...
#       angles per dimension  [θ0, θ1, ..., θ(d/2-1), θ0, θ1, ..., θ(d/2-1)]
#
# They are the same function once the rows of W_q and W_k (and their biases) are reordered per
# head: halves row i is interleaved row 2i, halves row i + d/2 is interleaved row 2i+1, so each
# pair keeps its frequency θi. q·k is unchanged by one permutation applied to both q and k, and
# V is not rotated, so it is not permuted. For d = 8: pairs_to_halves(8) = [0, 2, 4, 6, 1, 3, 5, 7].


def pairs_to_halves(head_dim: int) -> torch.Tensor:
    """Row order that turns a head in the interleaved (adjacent-pairs) layout into the halves one.

    ``W_halves = W_pairs[perm]`` for the rows of one head of W_q or W_k.
    """
    return torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))


def halves_to_pairs(head_dim: int) -> torch.Tensor:
    """The inverse of ``pairs_to_halves``: ``W_pairs = W_halves[perm]``."""
    return torch.argsort(pairs_to_halves(head_dim))


def extend_context(model: nn.Module, scaling: str, factor: float) -> None:
    """RoPE scaling at inference: let a trained model read ``factor`` times its context with
    ``scaling`` (linear, dynamic_ntk or yarn), without training. The model's config records it
    (its ``max_seq_len`` becomes the extended length, the trained one ``rope_original_max_seq_len``)."""
    from dataclasses import replace

    cfg = model.config
    if cfg.position != "rope":
        raise RotaryError(f"rope scaling needs a RoPE model; this one uses position={cfg.position}")
    if cfg.rope_scaling != "none":
        raise RotaryError(f"the model already uses rope_scaling={cfg.rope_scaling} (factor "
                          f"{cfg.rope_scaling_factor:g}): it cannot be scaled twice")
    if scaling not in ("linear", "dynamic_ntk", "yarn"):
        raise RotaryError(f"rope scaling must be linear, dynamic_ntk or yarn, got '{scaling}'")
    if not factor > 1.0:
        raise RotaryError(f"the rope scaling factor must be > 1, got {factor}")
    new = replace(cfg, rope_scaling=scaling, rope_scaling_factor=float(factor),
                  rope_original_max_seq_len=cfg.max_seq_len, max_seq_len=int(round(cfg.max_seq_len * factor)))
    new.validate()
    device = model.backbone.embed_tokens.weight.device
    model.config = new
    model.backbone.cfg = new
    model.backbone.rope = RotaryEmbedding(new).to(device)
