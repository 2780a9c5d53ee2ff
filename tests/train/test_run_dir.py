"""The run directory as users meet it: damaged checkpoints, convert's output, --resume/--overwrite.

Every mistake here must end in one ``rotary: error:`` line with exit code 2 and leave every file
as it was; none may end in a traceback or lose data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rotary import checkpoint as ckpt
from rotary.cli import main
from tests.train_support import make_recipe, train_losses, write_corpus


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny causal-LM run with checkpoints at steps 2 and 4 and best/."""
    from rotary.train.loop import train

    root = tmp_path_factory.mktemp("run_dir")
    cfg = make_recipe(root / "run", write_corpus(root / "corpus", 30), max_steps=4, eval_interval=2,
                      checkpoint_interval=2, tensorboard=False)
    train(cfg)
    return cfg.run_dir


def tree_digest(path: Path) -> dict[str, str]:
    """Every file under ``path`` with its sha256: what 'nothing was touched' means."""
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("rotary: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- a damaged checkpoint, for each verb that reads one -----------------------------------------

FILES = ("config.json", "model.safetensors", "trainer_state.json", "training_state.pt",
         "tokenizer/tokenizer.json", "manifest.json")
DAMAGES = ("missing", "truncated", "altered", "wrong_kind")
VERBS = ("generate", "convert", "resume")


def damage(ckpt_dir: Path, name: str, how: str) -> None:
    f = ckpt_dir / name
    if how == "missing":
        f.unlink()
        return
    if how == "truncated":
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
        return
    if how == "altered":  # same size, a few bytes changed in the middle
        data = bytearray(f.read_bytes())
        mid = len(data) // 2
        data[mid : mid + 4] = bytes(b ^ 0x55 for b in data[mid : mid + 4])
        f.write_bytes(bytes(data))
        return
    # wrong kind: a well-formed file of another kind, with the manifest rewritten to match, so
    # only the loader's own checks can catch it
    if name == "config.json":
        f.write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    elif name == "model.safetensors":
        save_file({"encoder.weight": torch.zeros(3, 5)}, str(f))
    elif name == "trainer_state.json":
        f.write_text("[1, 2, 3]")
    elif name == "training_state.pt":
        torch.save({"weights": torch.zeros(2)}, f)
    elif name == "tokenizer/tokenizer.json":
        f.write_text(json.dumps({"not": "a tokenizer"}))
    elif name == "manifest.json":
        f.write_text(json.dumps({"format": 1}))
        return
    ckpt.write_manifest(ckpt_dir)


# What each verb reads: a damaged file it never reads is not an error for it (the manifest
# check of generate/convert skips the optimiser state), and a missing manifest is a warning.
NOT_READ = {
    ("generate", "trainer_state.json"), ("generate", "training_state.pt"),
    ("convert", "trainer_state.json"), ("convert", "training_state.pt"),
    # a resumed run reads the tokenizer of its recipe and the config of its recipe; the copies in
    # the checkpoint are for using the model, and only the manifest guards them there
    ("resume", "tokenizer/tokenizer.json:wrong_kind"), ("resume", "config.json:wrong_kind"),
}


def expect_ok(verb: str, name: str, how: str) -> bool:
    if name == "manifest.json" and how == "missing":
        return True
    return (verb, name) in NOT_READ or (verb, f"{name}:{how}") in NOT_READ


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("verb", VERBS)
def test_damaged_checkpoint_is_named_and_nothing_is_written(trained_run, tmp_path, capsys, verb, name, how):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    target = run / ("best" if verb != "resume" else "checkpoints/step-0000004")
    damage(target, name, how)
    before = tree_digest(run)
    out = tmp_path / "out"
    if verb == "generate":
        argv = ["generate", str(run), "--prompt", "Shall", "--max-new-tokens", "3", "--device", "cpu",
                "--no-stream"]
    elif verb == "convert":
        argv = ["convert", str(run), str(out), "--to", "hf"]
    else:
        argv = ["train", str(run / "recipe.yaml"), "--resume", "--output-dir", str(run), "--max-steps", "6",
                "--eval-interval", "100"]
    code, err = run_cli(argv, capsys)
    if expect_ok(verb, name, how):
        assert code == 0, err
        if name == "manifest.json":  # loaded, but not silently
            assert "rotary: warning:" in err and "manifest.json" in err, err
        return
    assert_one_line_error(code, err, Path(name).name if how != "wrong_kind" or name != "config.json" else "")
    if verb != "resume":
        assert tree_digest(run) == before  # nothing in the run changed
        assert not out.exists()
    else:
        assert tree_digest(run) == before  # no log line, no metrics, no recipe rewrite


def test_damage_inside_best_does_not_fall_back_silently(trained_run, tmp_path, capsys):
    """best/ without config.json used to load the latest step without a word."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "best" / "config.json").unlink()
    code, err = run_cli(["generate", str(run), "--prompt", "A", "--max-new-tokens", "2", "--no-stream"], capsys)
    assert_one_line_error(code, err, "best", "config.json missing")
    code, err = run_cli(["generate", str(run), "--prompt", "A", "--max-new-tokens", "2", "--no-stream",
                         "--checkpoint", "latest"], capsys)
    assert code == 0, err


def test_broken_newest_checkpoint_blocks_resume_and_names_the_older_one(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "checkpoints" / "step-0000004" / "model.safetensors").unlink()
    code, err = run_cli(["train", str(run / "recipe.yaml"), "--resume", "--output-dir", str(run),
                         "--max-steps", "6"], capsys)
    assert_one_line_error(code, err, "step-0000004", "model.safetensors", "step-0000002")


def test_skipping_checksums_still_checks_sizes(trained_run, tmp_path):
    from rotary.errors import RotaryError
    from rotary.run_source import load_model

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    damage(run / "best", "model.safetensors", "altered")
    load_model(run, verify=False)  # same size: not checked without sums
    with pytest.raises(RotaryError, match="altered"):
        load_model(run)
    damage(run / "best", "model.safetensors", "truncated")
    with pytest.raises(RotaryError, match="truncated"):
        load_model(run, verify=False)


def test_manifest_lists_every_file_with_size_and_sha256(trained_run):
    best = trained_run / "best"
    files = json.loads((best / "manifest.json").read_text())["files"]
    on_disk = {p.relative_to(best).as_posix() for p in best.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(files) == on_disk and "tokenizer/tokenizer.json" in files
    for name, entry in files.items():
        data = (best / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}



def test_file_grown_after_saving_is_refused_even_without_checksums(tmp_path):
    """A file longer than the manifest says (appended to, or another run's bigger file) is as
    damaged as a truncated one; with checksums off only the size check can see it."""
    from rotary.errors import RotaryError
    from rotary.manifest import verify_checkpoint, write_manifest

    (tmp_path / "model.safetensors").write_bytes(b"x" * 64)
    write_manifest(tmp_path)
    verify_checkpoint(tmp_path, checksums=False)  # as written: fine
    with open(tmp_path / "model.safetensors", "ab") as f:
        f.write(b"tail")
    with pytest.raises(RotaryError, match="68 bytes, 64 when saved .longer than written."):
        verify_checkpoint(tmp_path, checksums=False)

# -- convert never destroys anything --------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_dir(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "hf"
    assert main(["convert", str(trained_run), str(out), "--to", "hf"]) == 0
    return out


def test_convert_refuses_a_run_directory_and_a_notes_folder(trained_run, hf_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "ideas.md").write_text("keep me")
    for target in (run, notes):
        before = tree_digest(target)
        for extra in ([], ["--overwrite"]):
            code, err = run_cli(["convert", str(hf_dir), str(target), "--from-hf", *extra], capsys)
            assert_one_line_error(code, err, str(target))  # a run is never replaced by one checkpoint
            assert target != run or "is a training run" in err
            assert tree_digest(target) == before
        code, err = run_cli(["convert", str(run), str(notes), "--to", "hf", "--overwrite"], capsys)
        assert_one_line_error(code, err, "notes")
        assert (notes / "ideas.md").read_text() == "keep me"


def test_convert_overwrite_replaces_only_a_checkpoint_of_the_same_kind(trained_run, hf_dir, tmp_path, capsys):
    out = tmp_path / "rot"
    assert main(["convert", str(hf_dir), str(out), "--from-hf"]) == 0
    first = tree_digest(out)
    code, err = run_cli(["convert", str(hf_dir), str(out), "--from-hf"], capsys)
    assert_one_line_error(code, err, "--overwrite")
    assert tree_digest(out) == first
    # an HF checkpoint is not the kind --from-hf writes: refused even with --overwrite
    hf_copy = tmp_path / "hf_copy"
    shutil.copytree(hf_dir, hf_copy)
    code, err = run_cli(["convert", str(hf_dir), str(hf_copy), "--from-hf", "--overwrite"], capsys)
    assert_one_line_error(code, err, "hf")
    assert tree_digest(hf_copy) == tree_digest(hf_dir)
    (out / "model.safetensors").write_bytes(b"stale")  # replaced whole, not patched
    assert main(["convert", str(hf_dir), str(out), "--from-hf", "--overwrite"]) == 0
    assert tree_digest(out) == first
    # --to hf over an existing HF checkpoint, on request
    assert main(["convert", str(trained_run), str(hf_copy), "--to", "hf", "--overwrite"]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_convert_never_writes_into_its_source(trained_run, hf_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = tree_digest(run)
    for out in (run, run / "best", run / "export"):
        code, err = run_cli(["convert", str(run), str(out), "--to", "hf", "--overwrite"], capsys)
        assert_one_line_error(code, err, "overlaps the source")
    assert tree_digest(run) == before


def test_convert_from_hf_of_a_rotary_checkpoint_is_one_line(trained_run, tmp_path, capsys):
    code, err = run_cli(["convert", str(trained_run / "best"), str(tmp_path / "o"), "--from-hf"], capsys)
    assert_one_line_error(code, err, "already a rotary checkpoint", "--to hf")


def test_convert_from_hf_keeps_the_tokenizer_so_generate_works(hf_dir, tmp_path, capsys):
    out = tmp_path / "back"
    assert main(["convert", str(hf_dir), str(out), "--from-hf"]) == 0
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    code, err = run_cli(["generate", str(out), "--prompt", "Shall", "--max-new-tokens", "4",
                         "--temperature", "0", "--no-stream"], capsys)
    assert code == 0, err


def test_convert_from_hf_truncated_weights_is_one_line(hf_dir, tmp_path, capsys):
    src = tmp_path / "hf"
    shutil.copytree(hf_dir, src)
    damage(src, "model.safetensors", "truncated")
    code, err = run_cli(["convert", str(src), str(tmp_path / "o"), "--from-hf"], capsys)
    assert_one_line_error(code, err, str(src))
    assert not (tmp_path / "o").exists()


# -- train's --resume and --overwrite --------------------------------------------------------------


def test_resume_and_overwrite_together_are_refused_and_the_run_is_kept(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = tree_digest(run)
    code, err = run_cli(["train", str(run / "recipe.yaml"), "--resume", "--overwrite", "--output-dir",
                         str(run)], capsys)
    assert_one_line_error(code, err, "--resume", "--overwrite")
    assert tree_digest(run) == before


def test_resume_of_nothing_is_an_error_not_a_fresh_start(trained_run, tmp_path, capsys):
    empty = tmp_path / "nothing"
    code, err = run_cli(["train", str(trained_run / "recipe.yaml"), "--resume", "--output-dir", str(empty)],
                        capsys)
    assert_one_line_error(code, err, "nothing to resume")
    assert not empty.exists()


def test_output_dir_that_is_a_file_is_refused(trained_run, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("data")
    code, err = run_cli(["train", str(trained_run / "recipe.yaml"), "--output-dir", str(f)], capsys)
    assert_one_line_error(code, err, "is a file")
    assert f.read_text() == "data"


def test_a_bad_model_value_writes_nothing(tmp_path):
    from rotary.errors import RotaryError
    from rotary.train.loop import train

    cfg = make_recipe(tmp_path / "run", write_corpus(tmp_path / "corpus", 10),
                      model={"preset": "tiny", "max_seq_len": 32, "n_head": 3})
    with pytest.raises(RotaryError):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_resumed_log_window_and_metrics_match_an_uninterrupted_run(tmp_path, monkeypatch):
    """The first line after a resume averages the same steps, and re-done steps are not logged twice."""
    from rotary.train.loop import train
    from tests.train_support import train_interrupted_at

    corpus = write_corpus(tmp_path / "corpus", 30)
    common = dict(max_steps=8, log_interval=4, eval_interval=100, checkpoint_interval=100, tensorboard=False)
    full = make_recipe(tmp_path / "full", corpus, **common)
    train(full)
    part = make_recipe(tmp_path / "part", corpus, **common)
    train_interrupted_at(part, 6, monkeypatch)  # checkpoint at 6, inside the window 5..8
    # a record of a step after the checkpoint, as a kill between log and save leaves it
    with open(part.run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "step": 7, "loss": 9.9}) + "\n")
    train(part, resume=True)
    assert train_losses(part.run_dir) == train_losses(full.run_dir)
    steps = [json.loads(ln)["step"] for ln in (part.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == len(set(zip(steps, [json.loads(ln)["kind"] for ln in
                                              (part.run_dir / "metrics.jsonl").read_text().splitlines()])))
    assert (part.run_dir / "loss.png").stat().st_size > 1000  # `rotary train` draws the curves too


def test_written_files_follow_the_umask(trained_run):
    mask = os.umask(0)
    os.umask(mask)
    expected = 0o666 & ~mask
    for name in ("config.json", "trainer_state.json", "manifest.json", "model.safetensors"):
        mode = (trained_run / "best" / name).stat().st_mode & 0o777
        assert mode == expected, (name, oct(mode))
    assert (trained_run / "recipe.yaml").stat().st_mode & 0o777 == expected


def test_exported_hf_files_follow_the_umask(hf_dir):
    mask = os.umask(0)
    os.umask(mask)
    for f in hf_dir.iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f.name


def test_out_naming_a_file_is_refused_before_any_work(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("keep")
    corpus = write_corpus(tmp_path / "corpus", 5)
    code, err = run_cli(["tokenizer", "train", "--corpus", str(corpus), "--kind", "bpe", "--vocab-size", "300",
                         "--out", str(f)], capsys)
    assert_one_line_error(code, err, "is a file")
    assert f.read_text() == "keep"


def test_a_loss_plot_without_losses_warns_nothing(tmp_path: Path) -> None:
    """A run killed before its first step has a metrics.jsonl with no loss: still a plot, and no
    matplotlib warning ("No artists with labels") on the user's terminal."""
    import warnings

    from rotary.train.logging import plot_losses

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"kind": "config", "step": 0}) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plot_losses(tmp_path).stat().st_size > 1000


# -- a failed setup leaves the directory as it was --------------------------------------------------


def test_overwrite_with_a_failing_recipe_keeps_the_old_run(trained_run, tmp_path, capsys):
    """--overwrite sets the old run aside and deletes it only once the new run is set up: a recipe
    whose data fails (a masked LM on a BPE tokenizer, found after the tokenizer is trained) keeps it."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = tree_digest(run)
    code, err = run_cli(["train", str(run / "recipe.yaml"), "--task", "masked_lm", "--overwrite", "--output-dir",
                         str(run)], capsys)
    assert_one_line_error(code, err, "[MASK]", "--data.tokenizer.kind wordpiece")
    assert tree_digest(run) == before
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in trained_run.iterdir())


def test_a_failed_first_run_leaves_nothing_the_corrected_rerun_reuses(trained_run, tmp_path, capsys):
    run = tmp_path / "new"
    code, err = run_cli(["train", str(trained_run / "recipe.yaml"), "--task", "masked_lm", "--output-dir",
                         str(run)], capsys)
    assert_one_line_error(code, err, "[MASK]")
    assert not run.exists()  # no tokenizer/ nor data/ of the failed run
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    code, err = run_cli(["train", str(trained_run / "recipe.yaml"), "--task", "masked_lm", "--output-dir",
                         str(run)], capsys)
    assert code == 2
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]  # the user's own file stays


def test_overwrite_never_deletes_what_is_not_a_run(tmp_path, capsys):
    """A data/ and eval.json of the user's own (or a killed setup's tokenizer/) in a directory with
    no recipe.yaml and no checkpoints are not a run: --overwrite refuses and deletes nothing."""
    out = tmp_path / "proj"
    (out / "data").mkdir(parents=True)
    (out / "data" / "corpus.txt").write_text("mine")
    (out / "eval.json").write_text("{}")
    before = tree_digest(out)
    corpus = write_corpus(tmp_path / "corpus", 30)
    code, err = run_cli(["train", "--data.corpus", str(corpus), "--model.preset", "tiny", "--seq-len", "32",
                         "--output-dir", str(out), "--overwrite"], capsys)
    assert_one_line_error(code, err, "holds data, eval.json but no run", "nothing was deleted")
    assert tree_digest(out) == before


def test_overwrite_recovers_from_a_killed_overwrite(trained_run, tmp_path):
    """kill -9 after the set-aside: the old run sits in .replaced-run/, the new one's partial
    tokenizer beside it. --overwrite replaces both and leaves neither behind."""
    from rotary.train.loop import train

    run = tmp_path / "run"
    (run / ".replaced-run").mkdir(parents=True)
    shutil.copytree(trained_run / "checkpoints", run / ".replaced-run" / "checkpoints")
    (run / "tokenizer").mkdir()
    (run / "tokenizer" / "tokenizer.json").write_text("{half written")
    cfg = make_recipe(run, write_corpus(tmp_path / "corpus", 30), max_steps=1, eval_interval=100,
                      checkpoint_interval=100, tensorboard=False)
    train(cfg, overwrite=True)
    assert json.loads((run / "tokenizer" / "tokenizer.json").read_text())["model"]
    assert not [p.name for p in run.iterdir() if p.name.startswith((".replaced", ".old-"))]


def test_interrupted_setup_of_an_overwrite_is_restored_or_named(trained_run, tmp_path, monkeypatch, capsys):
    """Ctrl-C while the new run's data is made puts the old run back; a kill -9 there leaves it in
    .replaced-run/, which the next run names instead of ignoring."""
    import rotary.train.loop as loop

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = tree_digest(run)
    cfg = make_recipe(run, write_corpus(tmp_path / "corpus", 30), max_steps=1, eval_interval=100, tensorboard=False)

    def interrupted(*args, **kwargs):
        (run / "data").mkdir(exist_ok=True)
        (run / "data" / "half-written.bin").write_bytes(b"\0")
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_build", interrupted)
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, overwrite=True)
    assert tree_digest(run) == before and not (run / ".replaced-run").exists()

    (run / ".replaced-run").mkdir()  # as a kill -9 after the set-aside leaves it
    code, err = run_cli(["train", str(run / "recipe.yaml"), "--resume", "--output-dir", str(run)], capsys)
    assert_one_line_error(code, err, ".replaced-run", "--overwrite")


def test_shards_without_a_validation_split_are_refused_by_name(trained_run, tmp_path, capsys):
    """prepare --val-fraction 0 is allowed (a warning); training on those shards said 'use a
    shorter seq_len or more data', which fixes nothing."""
    shards = tmp_path / "shards"
    code = main(["prepare", "--corpus", str(write_corpus(tmp_path / "corpus", 30)), "--tokenizer",
                 str(trained_run / "tokenizer"), "--out", str(shards), "--val-fraction", "0", "--no-progress"])
    assert code == 0 and "`rotary train` cannot use these shards" in capsys.readouterr().out
    code, err = run_cli(["train", "--data.shards", str(shards), "--model.preset", "tiny", "--seq-len", "32",
                         "--output-dir", str(tmp_path / "run")], capsys)
    assert_one_line_error(code, err, "empty validation split", "--val-fraction 0")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, needles", [
    (["finetune", "shakespeare", "--from", "{run}"], ["trains task classification", "`rotary train shakespeare`"]),
    (["finetune", "--from", "{run}", "--data.corpus", "{labelled}", "--seq-len", "64"], ["pass --seq-len 32"]),
    (["train", "--init-from", "{tmp}/none"], ["init_from: no such run", "train that run first"]),
    (["train", "--resume", "--output-dir", "{tmp}/none"], ["{tmp}/none does not exist", "drop --resume"]),
    (["train", "--resume", "--output-dir", "{run}/train.log"], ["train.log is a file"]),
    (["prepare", "--corpus", "{labelled}", "--tokenizer", "{run}", "--out", "{tmp}/out"],
     ["its tokenizer is {run}/tokenizer"]),
    (["convert", "{run}/train.log", "{tmp}/out", "--to", "hf"], ["train.log is a file"]),
    (["generate", "{run}", "--prompt", "the " * 20, "--max-new-tokens", "60", "--rope-scaling", "linear",
      "--factor", "2"], ["--rope-scaling linear with a --factor above 2"]),  # not the flags already given
    (["eval", "{run}", "--corpus", "{labelled}", "--split", "test"], ["has no split 'test'", "--split val"]),
    (["classify", "{run}", "--text", "a"], ["not a classifier: use `rotary generate` or `rotary serve` on it"]),
    (["translate", "{run}", "--text", "a"], ["not a translation (seq2seq) run: use `rotary generate`"]),
    (["train", "--model.n-layer", "0"], ["model.n_layer must be positive"]),  # was "ModelConfig: n_layer"
])
def test_each_mistake_names_its_fix(argv, needles, trained_run, tmp_path, capsys):
    labelled = tmp_path / "reviews.jsonl"
    labelled.write_text("".join(json.dumps({"text": f"text {i}", "label": i % 2}) + "\n" for i in range(40)))
    fill = {"{run}": str(trained_run), "{tmp}": str(tmp_path), "{labelled}": str(labelled)}

    def filled(text: str) -> str:
        for key, value in fill.items():
            text = text.replace(key, value)
        return text

    argv = [filled(a) for a in argv]
    if argv[0] in ("train", "finetune") and "--output-dir" not in argv:
        argv += ["--output-dir", str(tmp_path / "run")]
    before = tree_digest(trained_run)
    code, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, *map(filled, needles))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reviews.jsonl"]  # nothing written
    assert tree_digest(trained_run) == before


def test_converting_an_unsupported_transformers_model_names_its_type(tmp_path, capsys):
    hf = tmp_path / "gpt2"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "gpt2"}')  # no "architectures": was "architecture None"
    code, err = run_cli(["convert", str(hf), str(tmp_path / "out"), "--from-hf"], capsys)
    assert_one_line_error(code, err, "a gpt2 model (model_type) is not convertible")
    assert not (tmp_path / "out").exists()
