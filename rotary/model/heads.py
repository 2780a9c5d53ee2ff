"""The models: one backbone under a head. Causal LM (decoder) and masked LM (encoder, RoFormer),
with the initialisation, parameter and FLOP accounting every head shares (the sequence
classifier is ``rotary.model.classifier``'s).

Labels follow transformers' conventions (``IGNORE_INDEX`` = -100 marks a position that is not
scored), so a converted checkpoint gives transformers' losses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rotary.errors import RotaryError
from rotary.labels import IGNORE_INDEX
from rotary.model.cache import KVCache
from rotary.model.config import ModelConfig
from rotary.model.positions import LearnedPositions
from rotary.model.transformer import ACTIVATIONS, Backbone, make_norm
from rotary.ops.fused_cross_entropy import cross_entropy_stats, linear_cross_entropy
from rotary.ops.gemm import Linear, linear


class RotaryModel(nn.Module):
    """What every head shares: the backbone, initialisation and accounting."""

    encoder_decoder = False  # Seq2SeqLM: a decoder with a vocabulary of its own is possible
    has_output_bias = False  # CausalLM: a trained bias on the logits (config.output_bias)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        if config.decoder_vocab_size is not None and not self.encoder_decoder:
            raise RotaryError(f"decoder_vocab_size is for an encoder-decoder (task seq2seq), not a "
                              f"{type(self).__name__}: remove it")
        if config.output_bias and not self.has_output_bias:
            raise RotaryError(f"output_bias is for a causal LM, not a {type(self).__name__}: remove it")
        self.config = config
        self.backbone = Backbone(config)

    # -- initialisation (GPT-2 / Llama): N(0, 0.02), residual projections scaled by depth ----
    def init_weights(self) -> None:
        std = self.config.initializer_range
        residual_std = std / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_residual = name.endswith(("attn.o_proj", "mlp.down_proj"))
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_residual else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                if module.weight is not None:
                    nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for module in self.modules():  # learned positions (an encoder-decoder has two tables)
            if isinstance(module, LearnedPositions):
                nn.init.normal_(module.weight, mean=0.0, std=std)
        if self.config.pad_token_id is not None:
            # a seq2seq model's decoder too; with a vocabulary per side the id is the target's only
            decoder = getattr(self, "decoder", None)
            backbones = [decoder]
            if decoder is None or self.config.decoder_vocab_size is None:
                backbones.append(self.backbone)
            with torch.no_grad():
                for backbone in backbones:
                    if backbone is not None:
                        backbone.embed_tokens.weight[self.config.pad_token_id].zero_()

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (tied weights counted once)."""
        params = {id(p): p for p in self.parameters()}
        n = sum(p.numel() for p in params.values())
        if exclude_embeddings:
            n -= self.backbone.embed_tokens.weight.numel()
            if self.backbone.embed_types is not None:
                n -= self.backbone.embed_types.weight.numel()
            pos = self.backbone.embed_positions
            if pos is not None and hasattr(pos, "weight"):
                n -= pos.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None, training: bool = True,
                        predicted_share: float = 1.0) -> float:
        """Matmul FLOPs per token (PaLM appendix B, as nanoGPT's MFU): 6N + 12·L·d·T for
        forward+backward, a third of that for a forward pass alone. N counts every weight a
        token multiplies by, including the output projection, but not embedding lookups.
        ``predicted_share``: the share of positions the output projection runs on (a masked
        LM's fused head projects only its labelled rows)."""
        cfg = self.config
        T = seq_len or cfg.max_seq_len
        n = self.num_parameters(exclude_embeddings=True) + predicted_share * self._output_projection_params()
        flops = 6 * n + 12 * cfg.n_layer * cfg.d_model * T
        return flops if training else flops / 3

    def _output_projection_params(self) -> int:
        return 0

    @property
    def device(self) -> torch.device:
        return self.backbone.embed_tokens.weight.device

    def new_kv_cache(
        self, batch_size: int, max_len: int, dtype: torch.dtype | None = None
    ) -> KVCache:
        return KVCache(self.config, batch_size, max_len, device=self.device,
                       dtype=dtype or self.backbone.embed_tokens.weight.dtype)

    @staticmethod
    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross entropy over positions whose label is not -100 (computed in fp32)."""
        return F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),  # (B*T, vocab)
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
        )


def labelled_rows(h: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states (N, d) and labels (N,) of the positions whose label is not -100."""
    h, labels = h.reshape(-1, h.shape[-1]), labels.reshape(-1)
    keep = labels != IGNORE_INDEX
    return h[keep], labels[keep]


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """transformers' causal-LM convention: position t predicts labels[t + 1]; the last position,
    with nothing after it, is ignored (-100)."""
    return F.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)


def one_target(labels: torch.Tensor | None, targets: torch.Tensor | None) -> torch.Tensor | None:
    """Whichever of ``labels`` / ``targets`` was given (an encoder's are the same thing); both is an error."""
    if labels is not None and targets is not None:
        raise RotaryError("pass labels= (aligned with input_ids, as transformers) or targets= "
                          "(one per position), not both")
    return targets if labels is None else labels


class CausalLM(RotaryModel):
    """A decoder LM: ``model(ids)`` -> logits (B, T, vocab).

    ``model(ids, labels=ids)`` is transformers' convention: labels are aligned with
    ``input_ids`` and shifted inside (position t is scored against labels[t + 1], the last
    position is not scored), so ``CausalLM(ids, labels=ids)`` gives the loss that
    ``LlamaForCausalLM(ids, labels=ids).loss`` gives with the same weights.
    ``model(x, targets=y)`` takes targets already shifted, one per position (y[t] = the token
    after x[t], as the loaders produce them and :meth:`loss_fn` expects): the trainer's path,
    where a window of T + 1 tokens yields T scored positions.
    """

    has_output_bias = True

    def __init__(self, config: ModelConfig) -> None:
        if config.tie_embeddings and config.embed_dim != config.d_model:
            raise RotaryError(f"a causal LM cannot tie its output to embeddings of width {config.embed_dim} "
                              f"!= d_model {config.d_model}: set tie_embeddings false or drop embedding_size")
        super().__init__(config)
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embed_tokens.weight
        # zeros until the trainer starts it at the data's log unigram (start_output_bias)
        self.output_bias = nn.Parameter(torch.zeros(config.vocab_size)) if config.output_bias else None
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, last_only: bool = False, labels: torch.Tensor | None = None,
                return_stats: bool = False, targets: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab); or, given ``labels`` (shifted inside, as in transformers) or
        ``targets`` (already shifted), the mean loss over scored positions (label != -100),
        computed without materialising the logits (``rotary.ops.fused_cross_entropy``); with
        ``return_stats`` too, (loss sum, scored tokens, correct argmax) for evaluation.
        ``document_ids`` (B, T): packed rows, attention kept within each document (SFT packing)."""
        one_target(labels, targets)
        if labels is not None:
            targets = shift_labels(labels)
        h = self.backbone(input_ids, attention_mask, token_type_ids, position_ids, kv_cache,
                          document_ids=document_ids)
        if targets is not None:
            # every position is usually scored: no selection, so no host sync or graph break
            h, targets = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
            if return_stats:
                return cross_entropy_stats(h, self.lm_head.weight, self.output_bias, targets)
            return linear_cross_entropy(h, self.lm_head.weight, self.output_bias, targets)
        if last_only:  # generation needs only the last position's logits
            h = h[:, -1:]
        return self.output_logits(h)

    @torch.no_grad()
    def grow_vocab(self, vocab_size: int) -> None:
        """Room for ``vocab_size`` ids (a chat template's new special tokens): the embedding, the
        output head and its bias get new rows at the mean of the old ones (so a new token starts
        as an average token, not as noise), and every old id keeps its weights, so the logits of
        the old ids on any old text are unchanged (the new ones join the softmax)."""
        old = self.config.vocab_size
        if vocab_size <= old:
            return

        def grown(weight: torch.Tensor) -> torch.Tensor:
            extra = weight.mean(0, keepdim=True).expand(vocab_size - old, *weight.shape[1:])
            return torch.cat([weight, extra])

        embed = self.backbone.embed_tokens
        embed.weight = nn.Parameter(grown(embed.weight))
        embed.num_embeddings = vocab_size
        if self.config.tie_embeddings:
            self.lm_head.weight = embed.weight
        else:
            self.lm_head.weight = nn.Parameter(grown(self.lm_head.weight))
        self.lm_head.out_features = vocab_size
        if self.output_bias is not None:
            self.output_bias = nn.Parameter(grown(self.output_bias))
        self.config = self.config.replace(vocab_size=vocab_size)
        self.backbone.cfg = self.config

    def output_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final hidden states (..., d_model) -> logits (..., vocab): the output projection and
        the trained bias if the model has one (generation's engine calls this too)."""
        logits = self.lm_head(h)
        return logits if self.output_bias is None else logits + self.output_bias

    def _output_projection_params(self) -> int:
        return self.lm_head.weight.numel() if self.config.tie_embeddings else 0


class MaskedLMHead(nn.Module):
    """RoFormer/BERT prediction head: dense -> activation -> norm -> decoder (tied) + bias.

    The dense layer maps back to the embeddings' width (HF RoFormer's ``embedding_size``), so a
    tied decoder is the embedding matrix itself."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        e = cfg.embed_dim
        self.dense = Linear(cfg.d_model, e, bias=True)
        self.act = ACTIVATIONS[cfg.head_act]()
        self.norm = make_norm(cfg, e)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        untied = not cfg.tie_embeddings
        self.decoder = Linear(e, cfg.vocab_size, bias=False) if untied else None

    def transform(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(h)))

    def decoder_weight(self, embedding: torch.Tensor) -> torch.Tensor:
        return embedding if self.decoder is None else self.decoder.weight

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return linear(self.transform(h), self.decoder_weight(embedding), self.bias)


class MaskedLM(RotaryModel):
    """An encoder LM (RoFormer): ``model(ids)`` -> logits (B, T, vocab) at every position.

    ``labels`` are per position, as in transformers' masked LMs (no shift): labels[t] is the
    original token at a masked position t, -100 elsewhere. ``targets=`` is the same thing,
    accepted so that one training loop serves both heads.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.head = MaskedLMHead(config)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, return_stats: bool = False,
                targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab); or, given ``labels``, the mean loss over the masked positions.
        Then the head runs on those positions alone (~15% of them), as BERT's pre-training
        code does, and the logits are never materialised. ``return_stats``: as CausalLM's."""
        labels = one_target(labels, targets)
        h = self.backbone(input_ids, attention_mask, token_type_ids, position_ids)
        embedding = self.backbone.embed_tokens.weight
        if labels is not None:
            rows, targets = labelled_rows(h, labels)
            weight = self.head.decoder_weight(embedding)
            loss = cross_entropy_stats if return_stats else linear_cross_entropy
            return loss(self.head.transform(rows), weight, self.head.bias, targets)
        return self.head(h, embedding)

    def _output_projection_params(self) -> int:
        # head.dense is already a (non-embedding) parameter; only the tied decoder is extra
        return self.config.vocab_size * self.config.embed_dim if self.config.tie_embeddings else 0
