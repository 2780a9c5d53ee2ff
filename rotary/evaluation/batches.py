"""The trainer's evaluation: the summed (loss, count, correct) statistics of every task, and its metrics.

The model's head computes the sums chunk by chunk (no tokens x vocab logits); ranks add their
sums; the task's row in ``rotary.tasks`` turns them into its metrics (bits per byte for a
causal LM, masked-token accuracy for an MLM, accuracy for a classifier).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rotary.errors import RotaryError
from rotary.precision import resolved
from rotary.tasks import Task, get_task
from rotary.train.distributed import DistInfo, all_reduce_sum
from rotary.train.step import autocast_context, model_inputs


@torch.no_grad()
def evaluation_totals(model: nn.Module, task: Task, batches: Any, precision: str, info: DistInfo) -> torch.Tensor:
    """(sum of losses, scored count, correct argmax, ...) over ``batches``, summed over ranks
    (every rank runs the same number of batches: a rank short of rows gets a padding batch)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # a head may append more counts (a confusion matrix)
    for batch in batches:
        x, kwargs = model_inputs(task, batch, info.device)
        with autocast_context(precision, info.device):
            stats = model(x, **kwargs, return_stats=True).cpu()
        if len(stats) > len(totals):
            totals = torch.cat([totals, torch.zeros(len(stats) - len(totals), dtype=torch.float64)])
        totals += stats
    model.train(was_training)
    all_reduce_sum(totals, info)
    return totals


def evaluate(model: nn.Module, data: Any, cfg: Any, info: DistInfo, max_batches: int | None) -> dict[str, float]:
    """Validation metrics of ``cfg.task`` over ``data.eval_batches``: loss and count, plus the
    task's own (perplexity and bits per byte, accuracy, ...)."""
    task = get_task(cfg.task)
    precision = resolved(cfg.precision, info.device)
    totals = evaluation_totals(model, task, data.eval_batches(max_batches, info), precision, info)
    if totals[1] == 0:
        raise RotaryError("the validation split is too small for one evaluation batch: lower seq_len or add data")
    loss = float(totals[0] / totals[1])
    out: dict[str, float] = {"loss": loss}
    extra = task.metrics(totals, data)
    if "perplexity" in extra:  # the order of the log line: loss, perplexity, tokens, the rest
        out["perplexity"] = extra.pop("perplexity")
    out[task.count_name] = int(totals[1])
    out.update(extra)
    return out
