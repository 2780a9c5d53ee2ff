"""The encoder-decoder (Vaswani et al. 2017, and its RoPE twin): a bidirectional encoder and a
causal decoder whose blocks also attend to the encoder's output, from the same ``Backbone`` and
``Block`` as every other rotary model.

Labels follow transformers' seq2seq convention: ``labels`` are the target ids, and the decoder
reads them shifted right behind ``decoder_start_token_id`` (the pad id unless the config says
otherwise), so ``model(src, attention_mask=m, labels=tgt)`` gives the loss that
``MarianMTModel(input_ids=src, attention_mask=m, labels=tgt).loss`` gives with the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from rotary.errors import RotaryError
from rotary.labels import IGNORE_INDEX
from rotary.model.cache import KVCache
from rotary.model.config import ModelConfig
from rotary.model.heads import RotaryModel
from rotary.model.transformer import Backbone
from rotary.ops.fused_cross_entropy import cross_entropy_stats, linear_cross_entropy
from rotary.ops.gemm import Linear


def decoder_config(cfg: ModelConfig) -> ModelConfig:
    """The decoder stack's config: causal, its own depth, and the target vocabulary."""
    return replace(cfg, causal=True, n_layer=cfg.decoder_layers, n_decoder_layer=None,
                   vocab_size=cfg.target_vocab_size, decoder_vocab_size=None)


@dataclass
class Seq2SeqCache:
    """What decoding keeps between steps: the decoder's self-attention KV cache, and the encoder
    output's mask and cross-attention keys/values (computed at the first step, once per source)."""

    self_attn: KVCache
    memory_mask: torch.Tensor | None
    cross_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` in that order (beam search): every cached tensor follows."""
        self.self_attn.reorder(index)
        self.cross_kv = {i: (k[index], v[index]) for i, (k, v) in self.cross_kv.items()}
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask[index]


class Seq2SeqLM(RotaryModel):
    """``model(src, attention_mask, labels=tgt)`` -> loss; ``model(src, decoder_input_ids=d)`` ->
    logits (B, T, target vocab). ``backbone`` is the encoder, ``decoder`` the decoder; the output
    projection is tied to the decoder's token embedding when ``tie_embeddings``. With
    ``decoder_vocab_size`` the sides have their own vocabularies (and embeddings)."""

    encoder_decoder = True

    def __init__(self, config: ModelConfig) -> None:
        if config.embed_dim != config.d_model:
            raise RotaryError("an encoder-decoder needs embedding_size = d_model (drop embedding_size)")
        if config.type_vocab_size:
            raise RotaryError("an encoder-decoder has no token types: set type_vocab_size 0")
        if config.attention != "softmax":
            raise RotaryError("an encoder-decoder uses softmax attention (cross-attention has no linear form here)")
        config = replace(config, causal=False)  # the encoder (``backbone``) reads its source bidirectionally
        super().__init__(config)
        self.decoder = Backbone(decoder_config(config), cross=True)
        if config.share_embeddings:
            self.decoder.embed_tokens = self.backbone.embed_tokens
        self.lm_head = Linear(config.d_model, config.target_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.decoder.embed_tokens.weight
        if config.logits_bias:
            # as Marian's final_logits_bias: a buffer, part of the checkpoint, not trained
            self.register_buffer("final_logits_bias", torch.zeros(config.target_vocab_size))
        else:
            self.final_logits_bias = None
        self.label_smoothing = 0.0  # training loss only (the trainer sets it from the recipe)
        self.init_weights()

    @property
    def decoder_start_token_id(self) -> int:
        cfg = self.config
        start = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else cfg.pad_token_id
        if start is None:
            raise RotaryError("the model has neither decoder_start_token_id nor pad_token_id: set one in the config")
        return start

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs from labels: the start token, then labels[:-1], with -100 read as padding."""
        start = torch.full_like(labels[:, :1], self.decoder_start_token_id)
        shifted = torch.cat([start, labels[:, :-1]], dim=1)
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else self.decoder_start_token_id
        return shifted.masked_fill(shifted == IGNORE_INDEX, pad)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's output (B, S, d) for the source; padded positions are masked as keys."""
        return self.backbone(input_ids, attention_mask)

    def decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None,
               *, decoder_attention_mask: torch.Tensor | None = None, cache: Seq2SeqCache | None = None,
               last_only: bool = False) -> torch.Tensor:
        """Decoder hidden states (B, T, d) -> logits (B, T, vocab); with ``cache`` the new tokens
        continue the cached ones and the cross-attention keys/values are reused."""
        h = self.decoder_hidden(decoder_input_ids, memory, memory_mask, decoder_attention_mask, cache)
        if last_only:
            h = h[:, -1:]
        return self.logits(h)

    def decoder_hidden(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None,
                       decoder_attention_mask: torch.Tensor | None = None,
                       cache: Seq2SeqCache | None = None) -> torch.Tensor:
        if cache is not None:
            memory_mask = cache.memory_mask
        return self.decoder(decoder_input_ids, decoder_attention_mask,
                            kv_cache=cache.self_attn if cache is not None else None, memory=memory,
                            memory_mask=memory_mask, cross_kv=cache.cross_kv if cache is not None else None)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        out = self.lm_head(h)
        return out + self.final_logits_bias if self.final_logits_bias is not None else out

    def new_cache(self, memory_mask: torch.Tensor | None, batch_size: int, max_len: int) -> Seq2SeqCache:
        dtype = self.decoder.embed_tokens.weight.dtype
        return Seq2SeqCache(KVCache(self.decoder.cfg, batch_size, max_len, device=self.device, dtype=dtype),
                            memory_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None,
                decoder_attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                return_stats: bool = False) -> torch.Tensor:
        """Logits (B, T, vocab) of the decoder inputs; or, given ``labels`` (and no decoder
        inputs, which are then ``shift_right(labels)``), the mean loss over labels != -100,
        without materialising the logits; ``return_stats``: (loss sum, scored tokens, correct)."""
        if decoder_input_ids is None:
            if labels is None:
                raise RotaryError("pass labels= (the target ids) or decoder_input_ids=")
            decoder_input_ids = self.shift_right(labels)
        memory = self.encode(input_ids, attention_mask)
        h = self.decoder_hidden(decoder_input_ids, memory, attention_mask, decoder_attention_mask)
        if labels is None:
            return self.logits(h)
        h, targets = h.reshape(-1, h.shape[-1]), labels.reshape(-1)
        if return_stats:
            return cross_entropy_stats(h, self.lm_head.weight, self.final_logits_bias, targets)
        if self.training and self.label_smoothing:
            keep = targets != IGNORE_INDEX  # smoothing needs every logit: only the scored rows
            return F.cross_entropy(self.logits(h[keep]).float(), targets[keep], label_smoothing=self.label_smoothing)
        return linear_cross_entropy(h, self.lm_head.weight, self.final_logits_bias, targets)

    @staticmethod
    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        params = {id(p): p for p in self.parameters()}
        n = sum(p.numel() for p in params.values())
        if exclude_embeddings:
            embeddings = {id(m.weight): m.weight for b in (self.backbone, self.decoder)
                          for m in (b.embed_tokens, b.embed_positions) if m is not None and hasattr(m, "weight")}
            n -= sum(w.numel() for w in embeddings.values())
        return n

    def flops_per_token(self, seq_len: int | None = None, training: bool = True,
                        predicted_share: float = 1.0) -> float:
        """6N + 12·d·T per self- and cross-attention layer, N without embedding lookups (as
        :meth:`RotaryModel.flops_per_token`), T the source/target length alike."""
        cfg = self.config
        T = seq_len or cfg.max_seq_len
        n = self.num_parameters(exclude_embeddings=True) + predicted_share * self._output_projection_params()
        attention_layers = cfg.n_layer + 2 * cfg.decoder_layers
        flops = 6 * n + 12 * attention_layers * cfg.d_model * T
        return flops if training else flops / 3

    def _output_projection_params(self) -> int:
        return self.lm_head.weight.numel() if self.config.tie_embeddings else 0
