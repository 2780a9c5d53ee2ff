"""The RoPE studies (experiments/*.py) in their --quick modes: the same code as the full runs on
a tiny budget, each writing its table (.md + .json) and plot; resumable drivers skip what is done.

Studies 1, 3 and 6 share their models, so they share one runs directory here as in the full mode.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "experiments"

pytestmark = pytest.mark.slow


def study(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(EXPERIMENTS / script), "--quick", *args], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def results(out: Path, stem: str) -> tuple[dict, str]:
    data = json.loads((out / f"{stem}.json").read_text())
    text = (out / f"{stem}.md").read_text()
    assert "--quick budget" in text and data["cpu"]
    return data, text


def finite(values) -> list[float]:
    vals = [v for v in values if v is not None]
    assert vals and all(math.isfinite(v) for v in vals)
    return vals


@pytest.fixture(scope="module")
def positions(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    runs, out = root / "runs", root / "out"
    study("position_ablation.py", "--schemes", "rope", "alibi", "linear-rope", "--seeds", "1",
          "--runs-dir", str(runs), "--out", str(out))
    return runs, out


def test_position_ablation(positions):
    runs, out = positions
    data, text = results(out, "position_ablation")
    assert set(data["rows"]) == {"rope", "alibi", "linear-rope"}
    for row in data["rows"].values():
        finite([row["bits_per_byte"]["mean"], row["sliding_bits_per_byte"]["mean"], row["grad_norm_max"]["mean"]])
    assert "| linear-rope |" in text and (out / "position_ablation_curves.png").stat().st_size > 10_000
    # a second call trains nothing and gives the same table
    again = study("position_ablation.py", "--schemes", "rope", "alibi", "linear-rope", "--seeds", "1",
                  "--runs-dir", str(runs), "--out", str(out))
    assert "[study] trained" not in again
    assert json.loads((out / "position_ablation.json").read_text())["rows"] == data["rows"]


def test_a_run_cut_short_is_resumed_not_restarted(positions):
    runs, out = positions
    (runs / "alibi-s1" / "study_done.json").unlink()  # as if the driver was killed after training
    log = study("position_ablation.py", "--schemes", "alibi", "--seeds", "1", "--runs-dir", str(runs),
                "--out", str(out / "again"))
    assert "[study] trained" in log
    assert "already reached max_steps" in (runs / "alibi-s1" / "train.log").read_text()


def test_length_extrapolation(positions):
    runs, out = positions
    study("length_extrapolation.py", "--schemes", "rope", "alibi", "--seeds", "1", "--runs-dir", str(runs),
          "--out", str(out))
    data, text = results(out, "length_extrapolation")
    table = data["table"]
    for name in ("rope", "alibi", "rope+pi", "rope+dynamic-ntk", "rope+yarn", "pi-ft4L", "yarn-ft4L", "rope-ft4L"):
        assert len(finite(v for values in table[name].values() for v in values)) == 5
    # the fine-tuned models really carry their scaling
    cfg = json.loads((runs / "pi-ft4L-s1" / "checkpoints").iterdir().__next__().joinpath("config.json").read_text())
    assert cfg["model"]["rope_scaling"] == "linear" and cfg["model"]["rope_scaling_factor"] == 4.0
    assert (out / "length_extrapolation.png").is_file()


def test_learned_positions_are_shown_as_unable_to_extrapolate(positions):
    runs, out = positions
    study("length_extrapolation.py", "--schemes", "learned", "--seeds", "1", "--runs-dir", str(runs),
          "--out", str(out / "learned"))
    data, text = results(out / "learned", "length_extrapolation")
    values = data["table"]["learned"]
    first, *rest = values.values()
    assert first[0] is not None and all(v == [None] for v in rest)
    assert "| learned | " in text and "| — |" in text


def test_long_term_decay(positions):
    runs, out = positions
    study("long_term_decay.py", "--schemes", "rope", "alibi", "--seeds", "1", "--runs-dir", str(runs),
          "--out", str(out))
    data, _ = results(out, "long_term_decay")
    bound = data["bound"]["10000.0"]
    assert bound[0] > bound[-1]  # the bound decays with distance
    assert set(data["measured"]) == {"rope", "alibi"}
    finite(data["measured"]["rope"][str(8 * data["context"])])


def test_mlm_position_ablation(tmp_path):
    study("mlm_position_ablation.py", "--seeds", "1", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path))
    data, _ = results(tmp_path, "mlm_position_ablation")
    assert set(data["rows"]) == {"rope", "learned", "none"}
    for row in data["rows"].values():
        assert 0.0 <= row["top1_accuracy"]["mean"] <= row["top5_accuracy"]["mean"] <= 1.0


def test_passkey(tmp_path):
    study("passkey.py", "--schemes", "rope", "learned", "--seeds", "1", "--runs-dir", str(tmp_path / "runs"),
          "--out", str(tmp_path))
    data, text = results(tmp_path, "passkey")
    assert set(data["grid"]) == {"rope", "rope+yarn", "learned"}
    rope = data["grid"]["rope"]
    assert len(rope) == 5 and all(len(row) == 5 and all(0.0 <= v <= 1.0 for v in row) for row in rope)
    learned = data["grid"]["learned"]
    assert all(row[0] is not None and row[1:] == [None] * 4 for row in learned)
    (mixture_file,) = (tmp_path / "runs").glob("mixture-*.jsonl")  # named by its budget
    mixture = mixture_file.read_text().splitlines()
    assert any("The pass key is" in line for line in mixture) and any("pass key" not in line for line in mixture)


def test_linear_attention_speed(tmp_path):
    study("linear_attention_speed.py", "--out", str(tmp_path))
    data, text = results(tmp_path, "linear_attention_speed")
    assert {(r["kind"], r["T"]) for r in data["rows"]} == {(k, t) for k in ("softmax", "linear") for t in (64, 256)}
    for r in data["rows"]:
        finite([r["train_s"], r["prefill_s"], r["decode_ms"]])


def test_translation_seeds(tmp_path):
    study("translation_seeds.py", "--seeds", "1", "2", "--beam", "2", "--runs-dir", str(tmp_path / "runs"),
          "--out", str(tmp_path))
    data, text = results(tmp_path, "translation_seeds")
    assert set(data["rows"]) == {"rope", "sinusoidal"}
    for scheme, row in data["rows"].items():  # the table's figures are its runs' own sacrebleu scores
        cached = [json.loads((tmp_path / "runs" / f"{scheme}-s{s}" / "test_beam2.json").read_text())
                  for s in (1, 2)]
        assert [r["bleu"] for r in row["seeds"]] == [c["bleu"] for c in cached]
        assert row["bleu"]["n"] == 2 and row["bleu"]["mean"] == pytest.approx(sum(c["bleu"] for c in cached) / 2)
        assert row["chrf"]["mean"] == pytest.approx(sum(c["chrf"] for c in cached) / 2)
    assert "Sample translations" in text and "| rope |" in text
    # one tokenizer and one set of prepared pairs for every run
    import yaml

    second = yaml.safe_load((tmp_path / "runs" / "sinusoidal-s2" / "recipe.yaml").read_text())
    assert second["data"]["shards"].endswith("rope-s1/data")
