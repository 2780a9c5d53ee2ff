"""The task table: a new task is one row, and the unchanged loop trains it."""

from __future__ import annotations

import dataclasses

import pytest

from rotary.errors import RotaryError
from rotary.tasks import TASKS, Task, get_task, register_task
from tests.train_support import make_recipe, write_corpus


@pytest.fixture
def copy_task():
    """A toy objective: predict the token at the same position (a causal model sees it)."""
    from rotary.data.lm import prepare_training_data
    from rotary.model import CausalLM

    def make_data(cfg, info):  # the causal LM's shards and windows, read another way
        return prepare_training_data(dataclasses.replace(cfg, task="causal_lm"), info)

    task = register_task(Task(
        "copy_lm", build_model=lambda cfg, head: CausalLM(cfg), causal=True,
        metrics=lambda totals, data: {"accuracy": float(totals[2] / totals[1])},
        make_data=make_data, inputs=lambda batch: {"targets": batch[0]}))
    yield task
    TASKS.pop("copy_lm")


def test_a_new_task_is_one_row_and_trains_through_the_unchanged_loop(copy_task, tmp_path):
    from rotary.run_source import load_model
    from rotary.train.loop import train

    cfg = make_recipe(tmp_path / "run", write_corpus(tmp_path / "corpus", 30), task="copy_lm", max_steps=40,
                      eval_interval=20, checkpoint_interval=20, lr=1e-2, tensorboard=False)
    result = train(cfg)
    assert result.last_eval["accuracy"] > 0.9  # copying is learnable; next-token prediction here is not
    assert result.train_losses[-1][1] < 0.3 * result.train_losses[0][1]
    model, ckpt_dir = load_model(cfg.run_dir)  # the run directory knows the task by its row
    assert type(model).__name__ == "CausalLM" and ckpt_dir.name == "best"


def test_unknown_and_untrainable_tasks_are_one_line_errors(tmp_path):
    with pytest.raises(RotaryError, match="did you mean 'masked_lm'"):
        get_task("masked_ml")
    from rotary.train.loop import train

    with pytest.raises(RotaryError, match="rotary finetune"):
        train(make_recipe(tmp_path / "run", tmp_path, task="classification"))
    assert not (tmp_path / "run").exists()
    with pytest.raises(RotaryError, match="best_metric bits_per_byte is not a metric of masked_lm"):
        make_recipe(tmp_path / "run", tmp_path, task="masked_lm", best_metric="bits_per_byte")


def test_every_verb_reads_the_same_rows():
    from rotary.model import CausalLM, MaskedLM, ModelConfig, SequenceClassifier
    from rotary.tasks import task_of_model

    cfg = ModelConfig(vocab_size=40, d_model=16, n_layer=1, n_head=2, max_seq_len=16)
    for model, name in ((CausalLM(cfg), "causal_lm"), (MaskedLM(cfg), "masked_lm"),
                        (SequenceClassifier(cfg, 3), "classification")):
        assert task_of_model(model).name == name
        rebuilt = get_task(name).build_model(cfg, {"num_labels": 3})
        assert type(rebuilt) is type(model)


def test_accumulated_micro_batches_weigh_by_their_scored_tokens():
    """Two micro-batches of one step scoring 1 and 3 tokens: the step's loss is the mean over the
    4 tokens (weights 1/4 and 3/4), not the mean of the two means; fixed windows keep 1 / accum."""
    import torch

    from rotary.labels import IGNORE_INDEX
    from rotary.tasks import get_task
    from rotary.train.step import micro_batch_weights

    def batch(scored: int):
        targets = torch.full((1, 5), IGNORE_INDEX)
        targets[0, :scored] = 7
        return torch.zeros(1, 5, dtype=torch.long), targets, torch.zeros(1, 5), torch.zeros(1, 5)

    weights = micro_batch_weights(get_task("sft"), [batch(1), batch(3)], 2, torch.device("cpu"))
    assert [float(w) for w in weights] == [0.25, 0.75]
    losses = torch.tensor([2.0, 6.0])  # per-token mean of each micro-batch
    assert float(sum(w * loss for w, loss in zip(weights, losses))) == (1 * 2.0 + 3 * 6.0) / 4
    assert micro_batch_weights(get_task("causal_lm"), [batch(1), batch(3)], 2, torch.device("cpu")) is None
