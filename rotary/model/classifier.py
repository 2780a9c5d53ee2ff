"""Sequence (pair) classification on the shared backbone: transformers' RoFormer and Llama heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rotary.errors import RotaryError
from rotary.labels import IGNORE_INDEX
from rotary.model.config import ModelConfig
from rotary.model.heads import RotaryModel
from rotary.model.transformer import ACTIVATIONS
from rotary.ops.gemm import Linear


class SequenceClassifier(RotaryModel):
    """Sentence (pair) classification: ``model(ids)`` -> logits (B, num_labels).

    Two head layouts, chosen by ``pooling``:

    * ``"cls"`` / ``"mean"`` (encoders): transformers' RoFormerClassificationHead. Take the first
      token's hidden state or the mean over real tokens, then dropout -> dense -> activation ->
      dropout -> projection to the labels.
    * ``"last"`` (decoders): transformers' LlamaForSequenceClassification. A causal token sees
      only what precedes it, so the last real token (by ``attention_mask``) is the one that has
      read the whole text; one bias-free ``score`` projection maps it to the labels.
    """

    POOLINGS = ("cls", "mean", "last")

    def __init__(self, config: ModelConfig, num_labels: int, pooling: str | None = None) -> None:
        super().__init__(config)
        if pooling is None:  # what the backbone's attention reads best: a decoder's end, an encoder's [CLS]
            pooling = "last" if config.causal else "cls"
        if pooling not in self.POOLINGS:
            raise RotaryError(f"pooling must be one of {', '.join(self.POOLINGS)}, got '{pooling}'")
        if pooling == "cls" and config.causal:
            raise RotaryError("pooling cls on a decoder pools a token that has seen only itself: use pooling "
                              "last (or mean) for a causal backbone")
        if num_labels < 1:
            raise RotaryError(f"num_labels must be at least 1, got {num_labels}")
        self.num_labels = num_labels
        self.pooling = pooling
        self.drop = nn.Dropout(config.dropout)
        if pooling == "last":
            self.score = Linear(config.d_model, num_labels, bias=False)
        else:
            self.dense = Linear(config.d_model, config.d_model)
            self.act = ACTIVATIONS[config.head_act]()
            self.out_proj = Linear(config.d_model, num_labels)
        self.init_weights()

    def pool(self, h: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, d) -> (B, d)."""
        if self.pooling == "cls":
            return h[:, 0]
        if self.pooling == "last":
            if attention_mask is None:
                return h[:, -1]
            positions = torch.arange(h.shape[1], device=h.device)
            last = (positions * attention_mask.to(positions.dtype)).argmax(dim=-1)  # rightmost real token
            return h[torch.arange(h.shape[0], device=h.device), last]
        if attention_mask is None:
            return h.mean(dim=1)
        m = attention_mask.to(h.dtype)[..., None]
        return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, d) -> logits (B, num_labels)."""
        if self.pooling == "last":
            return self.score(pooled)
        x = self.drop(pooled)
        x = self.drop(self.act(self.dense(x)))
        return self.out_proj(x)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, return_stats: bool = False) -> torch.Tensor:
        """Logits (B, num_labels); with ``labels`` (B,) the mean loss over rows whose label is not
        -100; with ``return_stats`` too, float64 (3 + L*L,): loss sum, scored rows, correct, and
        the confusion counts (true x predicted, row-major) that macro-F1 needs."""
        h = self.backbone(input_ids, attention_mask, token_type_ids, position_ids)
        if attention_mask is None and self.pooling == "last" and self.config.pad_token_id is not None:
            # as transformers' LlamaForSequenceClassification: without a mask, the pad id marks the end
            attention_mask = (input_ids != self.config.pad_token_id).long()
        logits = self.project(self.pool(h, attention_mask))
        if labels is None:
            return logits
        if not return_stats:
            if not bool((labels != IGNORE_INDEX).any()):  # a padding batch (evaluation): no rows
                return logits.sum() * 0.0
            return self.loss_fn(logits, labels)
        keep = labels != IGNORE_INDEX
        logits, labels = logits[keep].float(), labels[keep]
        n = self.num_labels
        losses = F.cross_entropy(logits, labels, reduction="sum") if len(labels) else logits.sum() * 0.0
        pred = logits.argmax(-1)
        confusion = torch.bincount(labels * n + pred, minlength=n * n).to(torch.float64)
        head = torch.stack([losses.double(), torch.tensor(float(len(labels)), dtype=torch.float64,
                                                          device=logits.device),
                            (pred == labels).sum().double()])
        return torch.cat([head, confusion])

    @staticmethod
    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] == 1:  # regression, as transformers does for num_labels == 1
            return F.mse_loss(logits.float().squeeze(-1), labels.float())
        return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)
