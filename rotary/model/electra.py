"""ELECTRA's replaced-token detection (Clark et al., 2020), with RoPE in both networks.

A small generator (a masked LM of a quarter of the width) fills the masked positions with
tokens sampled from its own predictions; the discriminator reads that corrupted text and says,
at every real token, whether it is the original. The discriminator learns from every token, not
only the 15% masked, which is why ELECTRA-Small beats BERT-Small at equal compute. The
discriminator is ``backbone``, so fine-tuning takes it exactly as it takes a masked LM's
encoder (``rotary finetune --from RUN``); the generator is thrown away.

The sampled tokens are integers: no gradient flows from the discriminator into the generator
(the two losses share nothing but the sum), as in the paper.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from rotary.labels import IGNORE_INDEX
from rotary.model.config import ModelConfig
from rotary.model.heads import MaskedLM, RotaryModel, labelled_rows, one_target
from rotary.model.transformer import ACTIVATIONS
from rotary.ops.gemm import Linear


def generator_config(config: ModelConfig, fraction: float) -> ModelConfig:
    """The discriminator's config at ``fraction`` of its width (heads of the same size), no dropout
    change; at least one head."""
    n_head = max(1, round(config.n_head * fraction))
    head_dim = config.d_model // config.n_head
    return dataclasses.replace(config, d_model=n_head * head_dim, n_head=n_head, n_kv_head=None,
                               d_ff=max(1, round(config.d_ff * fraction)), embedding_size=None,
                               tie_embeddings=True)


class ElectraPretrainer(RotaryModel):
    """``model(ids, labels=...)`` -> generator MLM loss + ``disc_weight`` x replaced-token BCE.

    ``labels`` are a masked LM's (the original token at a masked position, -100 elsewhere).
    ``model(ids)`` -> the generator's logits (B, T, vocab), so masked-token evaluation reads it as
    it reads a masked LM; :meth:`replaced_logits` -> the discriminator's (B, T).
    """

    def __init__(self, config: ModelConfig, generator_fraction: float = 0.25, disc_weight: float = 50.0) -> None:
        super().__init__(config)  # self.backbone: the discriminator
        self.generator_fraction = float(generator_fraction)
        self.disc_weight = float(disc_weight)
        self.generator = MaskedLM(generator_config(config, self.generator_fraction))
        d = config.d_model
        self.disc_dense = Linear(d, d, bias=True)
        self.disc_act = ACTIVATIONS[config.head_act]()
        self.disc_out = Linear(d, 1, bias=True)
        self.init_weights()

    def replaced_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        token_type_ids: torch.Tensor | None = None,
                        position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T): > 0 where the discriminator thinks the token was replaced."""
        h = self.backbone(input_ids, attention_mask, token_type_ids, position_ids)
        return self.disc_out(self.disc_act(self.disc_dense(h))).squeeze(-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, return_stats: bool = False,
                targets: torch.Tensor | None = None) -> torch.Tensor:
        labels = one_target(labels, targets)
        gen = self.generator
        if labels is None:
            return gen(input_ids, attention_mask, token_type_ids, position_ids)
        h = gen.backbone(input_ids, attention_mask, token_type_ids, position_ids)
        rows, gold = labelled_rows(h, labels)  # the masked positions only: (N, d_gen), (N,)
        gen_logits = gen.head(rows, gen.backbone.embed_tokens.weight).float()  # (N, vocab)
        gen_loss = F.cross_entropy(gen_logits, gold, reduction="sum")
        masked = labels != IGNORE_INDEX
        with torch.no_grad():  # samples from the generator's own distribution: integers, no gradient
            sampled = torch.multinomial(gen_logits.softmax(-1), 1).squeeze(-1)
            corrupted = input_ids.masked_scatter(masked, sampled)
            original = torch.where(masked, labels, input_ids)
            replaced = (corrupted != original).float()  # a sample equal to the original is "original"
            pad = self.config.pad_token_id
            real = (input_ids != pad) if pad is not None else torch.ones_like(masked)
            if attention_mask is not None:
                real = real & attention_mask.bool()
        d_logits = self.replaced_logits(corrupted, attention_mask, token_type_ids, position_ids).float()
        disc_loss = F.binary_cross_entropy_with_logits(d_logits[real], replaced[real], reduction="sum")
        n_masked, n_real = masked.sum(), real.sum()
        if return_stats:
            gen_correct = (gen_logits.argmax(-1) == gold).sum()
            disc_correct = ((d_logits[real] > 0) == (replaced[real] > 0.5)).sum()
            return torch.stack([gen_loss.detach(), n_masked, gen_correct, disc_loss.detach(), n_real,
                                disc_correct, replaced[real].sum()]).double()
        return gen_loss / n_masked.clamp(min=1) + self.disc_weight * disc_loss / n_real.clamp(min=1)

    def flops_per_token(self, seq_len: int | None = None, training: bool = True,
                        predicted_share: float = 1.0) -> float:
        """Both networks (:meth:`RotaryModel.flops_per_token` each): the discriminator on every
        position, the generator on every position but its tied output projection only on the
        masked rows (``predicted_share``); no embedding lookup of either counts."""
        gen = self.generator
        disc_weights = self.num_parameters(exclude_embeddings=True) - gen.num_parameters()  # backbone + disc head
        T = seq_len or self.config.max_seq_len
        flops = 6 * disc_weights + 12 * self.config.n_layer * self.config.d_model * T
        flops += gen.flops_per_token(T, training=True, predicted_share=predicted_share)
        return flops if training else flops / 3


__all__ = ["ElectraPretrainer", "generator_config"]
