"""experiments/finetune_levers.py chooses on validation and reads only the winner's test split.

The fine-tunes are replaced by run directories written here (the real ones are
`rotary finetune` runs, tested in test_finetune.py): this checks the study's own logic.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.fixture()
def levers(monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    for name in ("finetune_levers", "finetune_seeds", "pretraining_levers"):
        sys.modules.pop(name, None)
    import finetune_levers

    return finetune_levers


def fake_finetune(val: dict[str, float], test: dict[tuple[str, int], float], calls: list):
    def run_one(task, init, run, seed, extra):
        arm = run.name.rsplit("-s", 1)[0].removeprefix(f"{task}-")
        calls.append((arm, seed, extra))
        run.mkdir(parents=True)
        evals = [{"kind": "eval", "step": 100 * (i + 1), "accuracy": val[arm] - 0.01 * (2 - i)} for i in range(3)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
        (run / "train.log").write_text("trained 300 steps in 12.5s; run directory: x\n")
        acc = test[(arm, seed)]
        (run / "test_results.json").write_text(json.dumps({
            "examples": 10, "accuracy": acc, "accuracy_95ci": [acc - 0.1, acc + 0.1], "macro_f1": acc,
            "baseline": {"method": "char 1-3-gram TF-IDF + LR", "accuracy": 0.5}}))
    return run_one


def test_the_arm_best_on_validation_wins_and_only_its_test_split_is_read(levers, tmp_path, monkeypatch):
    val = {"defaults": 0.80, "lr-1e-4": 0.83, "llrd-0.8": 0.81}
    # a losing arm's test accuracy is the highest: reading it would show in the table
    test = {("defaults", 1337): 0.99, ("lr-1e-4", 1337): 0.70, ("lr-1e-4", 1338): 0.72, ("llrd-0.8", 1337): 0.98}
    calls: list = []
    monkeypatch.setattr(levers, "run_one", fake_finetune(val, test, calls))
    monkeypatch.setattr(levers, "pretrain", lambda recipe, runs: runs / recipe)
    out = tmp_path / "results"
    argv = ["--arms", "defaults", "lr-1e-4", "llrd-0.8", "--final-seeds", "1337", "1338",
            "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]
    assert levers.main(argv) == 0
    data = json.loads((out / "finetune_levers.json").read_text())
    assert {a: r["val_accuracy"] for a, r in data["arms"].items()} == pytest.approx(val)  # the best eval of each
    assert data["final"]["arm"] == "lr-1e-4" and data["final"]["accuracy"] == [0.70, 0.72]
    assert data["final"]["accuracy_mean"] == pytest.approx(0.71)
    # each arm ran once with its own options; the winner's seed 1337 run was reused, not run again
    assert calls == [("defaults", 1337, []), ("lr-1e-4", 1337, ["--lr", "1e-4"]),
                     ("llrd-0.8", 1337, ["--layer-lr-decay", "0.8"]), ("lr-1e-4", 1338, ["--lr", "1e-4"])]
    md = (out / "finetune_levers.md").read_text()
    assert "**lr-1e-4**" in md and "**0.710**" in md and "0.99" not in md and "0.98" not in md
    assert "test accuracy 0.500 (+0.210 for rotary)" in md
    # a second invocation reuses every finished fine-tune
    calls.clear()
    assert levers.main(argv) == 0 and calls == []
