"""The caches attention reads and writes while decoding.

``KVCache``: every row of a batch at one shared length (the HF-style ``model(ids, kv_cache=...)``
API, the encoder-decoder's decoder and beam search). ``SlotCache``: independent rows, each at
its own length, for the decode engine's continuous batching. Both keep dynamic NTK's keys
unrotated and linear attention's running sums instead of keys and values.
"""

from __future__ import annotations

import torch

from rotary.errors import RotaryError
from rotary.model.config import ModelConfig


class KVCache:
    """Keys and values of every layer, preallocated for ``max_len`` positions.

    With dynamic NTK scaling the RoPE base depends on the sequence length, so keys rotated at
    an earlier length would be stale (transformers #25104). The cache then stores keys *before*
    rotation (``stores_unrotated_keys``) and attention rotates all of them with the current base
    at every step (``RotaryEmbedding.for_pass``). This makes the first layer exact; deeper layers'
    cached K/V were computed from hidden states of an earlier step's base, which only
    recomputing the whole prefix would avoid.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.linear = cfg.attention == "linear"
        if self.linear:
            # linear attention keeps running sums instead of keys and values, in fp32, whatever the length
            L, KV, hd = cfg.n_layer, cfg.kv_heads, cfg.head_dim
            work = torch.float64 if dtype == torch.float64 else torch.float32
            self.state = torch.zeros(L, batch_size, KV, hd, hd, device=device, dtype=work)  # sum of R phi(k) v^T
            self.key_sum = torch.zeros(L, batch_size, KV, hd, device=device, dtype=work)  # sum of phi(k)
            self.k = self.v = self.key_sum[:, :, :, None]  # (L, B, KV, 1, hd): batch size and device only
        else:
            shape = (cfg.n_layer, batch_size, cfg.kv_heads, max_len, cfg.head_dim)  # (L, B, KV, S, hd)
            self.k = torch.zeros(shape, device=device, dtype=dtype)
            self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # positions filled so far
        self.stores_unrotated_keys = cfg.position == "rope" and cfg.rope_scaling == "dynamic_ntk"

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def check_room(self, new_tokens: int) -> None:
        if self.length + new_tokens > self.max_len:
            raise RotaryError(
                f"KV cache holds {self.max_len} positions but {self.length + new_tokens} are "
                "needed: create the cache with a larger max_len"
            )

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's (B, KV, T, hd) keys/values; return all keys/values so far."""
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def linear_state(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Linear attention's running sums for ``layer`` (None before the first token)."""
        if self.length == 0:
            return None, None
        return self.state[layer], self.key_sum[layer]

    def set_linear_state(self, layer: int, state: torch.Tensor, key_sum: torch.Tensor) -> None:
        self.state[layer] = state
        self.key_sum[layer] = key_sum

    def advance(self, new_tokens: int) -> None:
        self.length += new_tokens

    def reset(self) -> None:
        self.length = 0

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index``, in that order (beam search and batch pruning)."""
        if self.linear:
            self.state, self.key_sum = self.state[:, index], self.key_sum[:, index]
            self.k = self.v = self.key_sum[:, :, :, None]
            return
        self.k = self.k[:, index]
        self.v = self.v[:, index]


class SlotCache:
    """A cache of independent rows ("slots") for continuous batching: each row has its own
    length, so a sequence can start in a free row while the others keep decoding.

    One buffer per layer, so that a compiled step updates each in place (a slice of one big
    buffer would make the compiler copy all of it every step): keys and values (B, KV, S, hd),
    or for linear attention its running sums, the state (B, KV, hd, hd) and the key sum (B, KV,
    hd) in fp32, whatever the length. ``lengths`` (B,) counts each row's filled positions; the
    caller (``rotary.infer.engine``) sets it and keeps a host copy, so no pass needs a host sync. A
    row's new tokens are written at positions ``lengths[row]`` onwards; positions past a row's
    length hold stale values that the mask hides and later tokens overwrite. :meth:`window`
    gives a pass only the rows and positions in use.

    With dynamic NTK the keys are stored before rotation (``stores_unrotated_keys``) and every
    pass rotates them with each row's base for its own length, as ``KVCache`` does.
    """

    per_row = True

    def __init__(self, cfg: ModelConfig, slots: int, max_len: int, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        flags = self.kind(cfg)
        self.linear, self.stores_unrotated_keys = flags["linear"], flags["unrotated_keys"]
        L, KV, hd = cfg.n_layer, cfg.kv_heads, cfg.head_dim
        if self.linear:
            work = torch.float64 if dtype == torch.float64 else torch.float32
            self.k = [torch.zeros(slots, KV, hd, hd, device=device, dtype=work) for _ in range(L)]  # sum R phi(k) v^T
            self.v = [torch.zeros(slots, KV, hd, device=device, dtype=work) for _ in range(L)]  # sum phi(k)
        else:
            self.k = [torch.zeros(slots, KV, max_len, hd, device=device, dtype=dtype) for _ in range(L)]
            self.v = [torch.zeros(slots, KV, max_len, hd, device=device, dtype=dtype) for _ in range(L)]
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)
        self.max_len = max_len
        self.key_positions = torch.arange(max_len, device=device)
        self.full_rows = False  # True: every row's keys fill the window (then no mask is needed)
        self._index = None  # where this pass writes, computed by its first layer

    @staticmethod
    def kind(cfg: ModelConfig) -> dict[str, bool]:
        """What a cache for ``cfg`` holds: linear attention's running sums, and unrotated keys."""
        return dict(linear=cfg.attention == "linear",
                    unrotated_keys=cfg.position == "rope" and cfg.rope_scaling == "dynamic_ntk")

    @classmethod
    def of(cls, k: list[torch.Tensor], v: list[torch.Tensor], lengths: torch.Tensor, *, linear: bool = False,
           unrotated_keys: bool = False, full_rows: bool = False, max_len: int | None = None) -> SlotCache:
        """A cache over existing per-layer buffers (keys and values, or linear attention's state
        and key sum) and lengths (B,): a pass writes into them."""
        cache = object.__new__(cls)
        cache.k, cache.v, cache.lengths = list(k), list(v), lengths
        cache.linear, cache.stores_unrotated_keys = linear, unrotated_keys
        cache.max_len = (max_len or 0) if linear else k[0].shape[2]  # linear attention reads no positions
        cache.key_positions = torch.arange(cache.max_len, device=lengths.device)
        cache.full_rows = full_rows
        cache._index = None
        return cache

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]

    def window(self, rows: int, positions: int, full_rows: bool = False) -> SlotCache:
        """The first ``rows`` rows and ``positions`` positions as a cache sharing this one's
        storage (views: a pass over it writes here). ``full_rows`` says every row holds exactly
        ``positions - 1`` tokens, so a one-token pass attends to everything and needs no mask."""
        if rows == self.batch_size and positions == self.max_len and not full_rows:
            return self
        flags = dict(linear=self.linear, unrotated_keys=self.stores_unrotated_keys, full_rows=full_rows)
        if self.linear:  # running sums have no positions
            return SlotCache.of([s[:rows] for s in self.k], [z[:rows] for z in self.v], self.lengths[:rows],
                                max_len=positions, **flags)
        return SlotCache.of([k[:rows, :, :positions] for k in self.k], [v[:rows, :, :positions] for v in self.v],
                            self.lengths[:rows], **flags)

    def put_rows(self, rows: torch.Tensor, other: SlotCache) -> None:
        """Copy every row of ``other`` (a prefill's cache) into rows ``rows`` (n,) of this one."""
        for layer in range(len(self.k)):
            if self.linear:
                self.k[layer][rows] = other.k[layer]
                self.v[layer][rows] = other.v[layer]
            else:
                T = other.max_len
                self.k[layer][rows, :, :T] = other.k[layer]
                self.v[layer][rows, :, :T] = other.v[layer]

    def check_room(self, new_tokens: int) -> None:  # the engine checks lengths on the host
        return None

    def advance(self, new_tokens: int) -> None:  # the engine sets lengths itself
        return None

    def positions(self, new_tokens: int) -> torch.Tensor:
        """(B, T): each row's new tokens continue from its own length."""
        return self.lengths[:, None] + torch.arange(new_tokens, device=self.lengths.device)

    def mask(self, new_tokens: int, new_mask: torch.Tensor | None) -> torch.Tensor | None:
        """bool (B, 1, T, S): a new token sees its row's cached keys and the new ones up to itself,
        minus new positions that ``new_mask`` (B, T) marks as padding; always itself. None when
        nothing needs hiding (one new token per row, every row filling the window), and for
        linear attention, which takes the padding as ``key_padding`` instead."""
        if self.linear or (self.full_rows and new_tokens == 1 and new_mask is None):
            return None
        j = self.key_positions[None, None, :]  # (1, 1, S)
        q = self.positions(new_tokens)[:, :, None]  # (B, T, 1)
        allowed = j <= q
        if new_mask is not None:
            offset = j - self.lengths[:, None, None]  # (B, 1, S): key j is new token number `offset`
            is_new = (offset >= 0) & (offset < new_tokens)
            real = new_mask.bool().gather(1, offset[:, 0].clamp(0, new_tokens - 1))[:, None, :]  # (B, 1, S)
            allowed = (allowed & (real | ~is_new)) | (j == q)
        return allowed[:, None]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, KV, T, hd) keys/values at each row's positions; return the row buffers."""
        if layer == 0 or getattr(self, "_index", None) is None:  # the same positions for every layer
            B, KV, T, hd = k.shape
            idx = self.positions(T).clamp(max=self.max_len - 1)  # a finished row may sit at the end
            self._index = idx[:, None, :, None].expand(B, KV, T, hd)
        idx = self._index
        self.k[layer].scatter_(2, idx, k)
        self.v[layer].scatter_(2, idx, v)
        return self.k[layer], self.v[layer]

    def linear_state(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear attention's running sums of ``layer`` (zeros for a row that has no tokens yet)."""
        return self.k[layer], self.v[layer]

    def set_linear_state(self, layer: int, state: torch.Tensor, key_sum: torch.Tensor) -> None:
        self.k[layer].copy_(state)  # in place: the buffers may be views of the engine's cache
        self.v[layer].copy_(key_sum)
