"""Checkpoint saves are atomic: a save that fails (or is killed) part-way leaves the previous
checkpoints as they were and no directory under a checkpoint's name; a checkpoint's final
directory appears only once its content is complete."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from rotary import checkpoint as ckpt
from rotary.errors import RotaryError
from rotary.train import keep
from tests.train_support import make_recipe, write_corpus


def content(run: Path, step: int, value: float) -> ckpt.CheckpointContent:
    tok = run / "tok_src"
    tok.mkdir(parents=True, exist_ok=True)
    (tok / "tokenizer.json").write_text('{"kind": "test"}')
    return ckpt.CheckpointContent(
        config={"model_type": "rotary", "task": "causal_lm", "value": value},
        model_state={"w": torch.full((4, 3), value), "b": torch.arange(3.0) + value},
        trainer_state={"step": step, "value": value},
        training_state={"optimizer": {"state": {}, "param_groups": []}, "x": torch.tensor([value])},
        tokenizer_dir=tok,
    )


def save(run: Path, step: int, value: float) -> Path:
    return ckpt.write_checkpoint_dir(run / ckpt.CHECKPOINTS / ckpt.step_dir_name(step), content(run, step, value))


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def entries(run: Path) -> list[str]:
    return sorted(p.name for p in (run / ckpt.CHECKPOINTS).iterdir())


class DiskFull(OSError):
    pass


def boom(*args, **kwargs):
    raise DiskFull(28, "No space left on device")


# Each way a save can fail part-way: the weights, the optimiser state, the tokenizer copy, the
# last JSON file, the manifest written last.
FAILURES = {
    "weights": lambda mp: mp.setattr(ckpt, "save_file", boom),
    "training_state": lambda mp: mp.setattr(torch, "save", boom),
    "tokenizer": lambda mp: mp.setattr(shutil, "copytree", boom),
    "trainer_state": lambda mp: _fail_on_trainer_state(mp),
    "manifest": lambda mp: mp.setattr(ckpt, "write_manifest", boom),
}
DISK_FULL = r"no space left to write .*step-0000004: it needs about [\d.,]+ MB and [\d.,]+ MB are free there"


def _fail_on_trainer_state(mp) -> None:
    real = ckpt.atomic_write_text

    def write(path, text):
        if Path(path).name == "trainer_state.json":
            boom()
        real(path, text)

    mp.setattr(ckpt, "atomic_write_text", write)


def test_a_save_writes_every_file(tmp_path):
    path = save(tmp_path, 2, 1.0)
    assert path == tmp_path / "checkpoints" / "step-0000002" and ckpt.is_complete(path)
    assert {"config.json", "model.safetensors", "trainer_state.json", "training_state.pt",
            "tokenizer/tokenizer.json"} <= set(snapshot(path))
    assert torch.equal(ckpt.load_file(str(path / "model.safetensors"))["w"], torch.full((4, 3), 1.0))
    assert entries(tmp_path) == ["step-0000002"]  # no temp directory left beside it


@pytest.mark.parametrize("where", FAILURES)
def test_a_failed_save_keeps_the_previous_checkpoint_and_leaves_no_partial_one(tmp_path, monkeypatch, where):
    good = save(tmp_path, 2, 1.0)
    before = snapshot(good)
    with monkeypatch.context() as mp:
        FAILURES[where](mp)
        with pytest.raises(RotaryError, match=DISK_FULL) as err:
            save(tmp_path, 4, 2.0)
    assert "\n" not in str(err.value) and "--resume" in str(err.value)  # one line, with the way on
    assert not (tmp_path / "checkpoints" / "step-0000004").exists()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2]
    assert ckpt.latest_checkpoint(tmp_path) == good and snapshot(good) == before
    assert entries(tmp_path) == ["step-0000002"]  # the temp directory was removed too
    # and the next save of that step works
    assert ckpt.is_complete(save(tmp_path, 4, 2.0))


@pytest.mark.parametrize("where", FAILURES)
def test_a_killed_save_leaves_only_a_temp_directory_that_clean_partial_removes(tmp_path, monkeypatch, where):
    """A process killed mid-save runs no cleanup: what it leaves must not look like a checkpoint."""
    good = save(tmp_path, 2, 1.0)
    before = snapshot(good)
    with monkeypatch.context() as mp:
        FAILURES[where](mp)
        mp.setattr(shutil, "rmtree", lambda *a, **k: None)  # no cleanup, as after SIGKILL
        with pytest.raises(RotaryError, match=DISK_FULL):
            save(tmp_path, 4, 2.0)
    assert not (tmp_path / "checkpoints" / "step-0000004").exists()
    left = [n for n in entries(tmp_path) if n != "step-0000002"]
    assert left and all(n.startswith(".tmp-") for n in left), left
    assert ckpt.latest_checkpoint(tmp_path) == good
    removed = keep.clean_partial(tmp_path)
    assert sorted(p.name for p in removed) == sorted(left)
    assert entries(tmp_path) == ["step-0000002"] and snapshot(good) == before


def test_a_failed_resave_of_the_same_step_keeps_the_old_copy(tmp_path, monkeypatch):
    path = save(tmp_path, 4, 1.0)
    before = snapshot(path)
    with monkeypatch.context() as mp:
        mp.setattr(ckpt, "save_file", boom)
        with pytest.raises(RotaryError, match=DISK_FULL):
            save(tmp_path, 4, 2.0)
    assert snapshot(path) == before
    assert entries(tmp_path) == ["step-0000004"]
    # a successful re-save replaces it whole, leaving no .old- directory
    save(tmp_path, 4, 3.0)
    assert ckpt.read_json(path / "trainer_state.json")["value"] == 3.0
    assert torch.equal(ckpt.load_file(str(path / "model.safetensors"))["b"], torch.arange(3.0) + 3.0)
    assert entries(tmp_path) == ["step-0000004"]


@pytest.mark.parametrize("existing", [False, True])
def test_the_final_directory_appears_only_with_its_whole_content(tmp_path, monkeypatch, existing):
    """Nothing is written under the checkpoint's own name: every file goes into a temp directory
    that is renamed into place once complete. Re-saving a step keeps the old copy whole until the
    new one replaces it."""
    target = tmp_path / "checkpoints" / "step-0000004"
    if existing:
        save(tmp_path, 4, 1.0)
    old = snapshot(target) if existing else None
    final_names = set(snapshot(save(tmp_path / "reference", 4, 2.0)))
    events: list[str] = []

    def state_of_target() -> None:
        if existing:  # the old checkpoint stays complete and unchanged while the new one is written
            assert snapshot(target) == old, "the existing checkpoint was modified in place"
        else:
            assert not target.exists(), "the checkpoint directory exists before its content is complete"

    def watch(fn, name):
        def wrapped(*args, **kwargs):
            state_of_target()
            events.append(name)
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(ckpt, "save_file", watch(ckpt.save_file, "save_file"))
    monkeypatch.setattr(torch, "save", watch(torch.save, "torch.save"))
    monkeypatch.setattr(ckpt, "atomic_write_text", watch(ckpt.atomic_write_text, "json"))
    monkeypatch.setattr(shutil, "copytree", watch(shutil.copytree, "copytree"))
    real_replace = os.replace
    moved_in: list[set[str]] = []

    def replace(src, dst, *args, **kwargs):
        if Path(dst) == target:
            moved_in.append(set(snapshot(Path(src))))  # what the checkpoint holds the moment it appears
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    save(tmp_path, 4, 2.0)
    assert {"save_file", "torch.save", "json", "copytree"} <= set(events)
    assert moved_in == [final_names], "the checkpoint must appear by one rename of its complete content"
    assert set(snapshot(target)) == final_names
    assert ckpt.read_json(target / "trainer_state.json")["value"] == 2.0
    assert entries(tmp_path) == ["step-0000004"]


def test_a_training_run_whose_save_fails_resumes_from_the_previous_checkpoint(tmp_path, monkeypatch):
    from rotary.train.loop import train

    corpus = write_corpus(tmp_path / "docs", n_docs=30)

    def recipe():
        return make_recipe(tmp_path / "run", corpus=corpus, max_steps=4, checkpoint_interval=2,
                           eval_interval=100, tensorboard=False, batch_size=2)

    real = ckpt.save_file

    def fail_at_step_4(state, filename, *args, **kwargs):
        if "step-0000004" in str(filename):
            boom()
        return real(state, filename, *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(ckpt, "save_file", fail_at_step_4)
        with pytest.raises(RotaryError, match=DISK_FULL):
            train(recipe())
    run = tmp_path / "run"
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2]
    assert not (run / "checkpoints" / "step-0000004").exists()
    step2 = run / "checkpoints" / "step-0000002"
    assert ckpt.read_json(step2 / "trainer_state.json")["step"] == 2
    res = train(recipe(), resume=True)
    assert (res.step, res.stopped) == (4, "max_steps")
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2, 4]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_an_error_that_is_not_about_space_stays_itself(tmp_path, monkeypatch):
    def bug(*a, **k):
        raise ValueError("a bug, not a full disk")

    monkeypatch.setattr(ckpt, "save_file", bug)
    with pytest.raises(ValueError, match="a bug"):
        save(tmp_path, 4, 1.0)


def test_a_failed_best_publish_keeps_the_old_best_and_a_resume_publishes_it(tmp_path, monkeypatch):
    from rotary.train.loop import train

    corpus = write_corpus(tmp_path / "docs", n_docs=30)

    def recipe():  # every evaluation improves on a fresh model: best/ follows each one
        return make_recipe(tmp_path / "run", corpus=corpus, max_steps=4, checkpoint_interval=2, eval_interval=2,
                           tensorboard=False, batch_size=2, lr=1e-2)

    run = tmp_path / "run"
    real = keep._link_or_copy

    def full_at_step_4(src, dst):
        if "step-0000004" in src:
            boom()
        real(src, dst)

    with monkeypatch.context() as mp:
        mp.setattr(keep, "_link_or_copy", full_at_step_4)
        with pytest.raises(RotaryError, match="no space left to write .*best"):
            train(recipe())
    assert ckpt.read_json(run / "best" / "trainer_state.json")["step"] == 2  # the old best/, whole
    assert ckpt.is_complete(run / "best") and not [p for p in run.iterdir() if p.name.startswith(".tmp-")]
    best_step = ckpt.read_json(run / "checkpoints" / "step-0000004" / "trainer_state.json")["best_eval"]["step"]
    res = train(recipe(), resume=True)
    assert res.step == 4 and best_step == 4
    assert ckpt.read_json(run / "best" / "trainer_state.json")["step"] == 4  # published on resume


@pytest.fixture
def small_filesystem(tmp_path):
    """A 3 MB tmpfs (root on Linux only): a real full disk, whose errors are not OSErrors."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or \
            os.system(f"mount -t tmpfs -o size=3m tmpfs {mount} 2>/dev/null") != 0:
        pytest.skip("needs to mount a tmpfs (root)")
    yield mount
    os.system(f"umount {mount}")


def test_a_real_full_disk_keeps_the_previous_checkpoint_and_resumes_after_space_is_freed(small_filesystem):
    def big(step: int, value: float) -> ckpt.CheckpointContent:
        c = content(small_filesystem, step, value)
        c.model_state["big"] = torch.full((250_000,), value)  # 1 MB of weights
        return c

    first = ckpt.write_checkpoint_dir(small_filesystem / "checkpoints" / ckpt.step_dir_name(2), big(2, 1.0))
    before = snapshot(first)
    filler = small_filesystem / "filler"
    filler.write_bytes(b"x" * (shutil.disk_usage(small_filesystem).free - 200_000))  # ~0.2 MB left
    for where in ("weights", "training_state"):  # safetensors' and torch.save's own disk-full errors
        c = big(4, 2.0)
        if where == "training_state":
            c.model_state = {"w": torch.zeros(1)}
            c.training_state["moments"] = torch.zeros(250_000)
        with pytest.raises(RotaryError, match=DISK_FULL):
            ckpt.write_checkpoint_dir(small_filesystem / "checkpoints" / ckpt.step_dir_name(4), c)
        assert entries(small_filesystem) == ["step-0000002"] and snapshot(first) == before
    filler.unlink()  # space freed: the same save now works
    assert ckpt.is_complete(ckpt.write_checkpoint_dir(small_filesystem / "checkpoints" / ckpt.step_dir_name(4),
                                                      big(4, 2.0)))



def test_a_full_disk_that_raises_no_oserror_is_named_by_the_free_space(tmp_path, monkeypatch):
    # torch.save on a full disk raises RuntimeError("... unexpected pos ..."), no errno and no
    # "No space" words: only the free-space check can name it (the tmpfs test above needs root)
    def torch_full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")

    real_usage = shutil.disk_usage
    monkeypatch.setattr(torch, "save", torch_full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=10))
    with pytest.raises(RotaryError, match=DISK_FULL):
        save(tmp_path, 4, 1.0)
    assert not (tmp_path / "checkpoints" / "step-0000004").exists()
    monkeypatch.setattr(shutil, "disk_usage", real_usage)  # room enough: the same error is a bug, not space
    with pytest.raises(RuntimeError, match="unexpected pos"):
        save(tmp_path, 4, 1.0)

# -- pruning: every directory named like a checkpoint is complete at every instant -------------

PRUNE_AND_DIE = r"""
import os, shutil, signal, sys
from pathlib import Path
from rotary.train import keep

real = shutil.rmtree

def rmtree_then_die(path, *a, **k):
    # delete the weights of the first directory pruned, then die as from kill -9 mid-delete
    os.unlink(Path(path) / "model.safetensors")
    os.kill(os.getpid(), signal.SIGKILL)

shutil.rmtree = rmtree_then_die
keep.prune_checkpoints(Path(sys.argv[1]), keep=2)
"""


def test_a_process_killed_while_pruning_leaves_no_half_deleted_checkpoint(tmp_path):
    import subprocess
    import sys

    for step in (1, 2, 3, 4):
        save(tmp_path, step, float(step))
    kept = {s: snapshot(tmp_path / "checkpoints" / ckpt.step_dir_name(s)) for s in (3, 4)}
    proc = subprocess.run([sys.executable, "-c", PRUNE_AND_DIE, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr  # really killed, mid-delete
    step_dirs = [n for n in entries(tmp_path) if ckpt.STEP_DIR.match(n)]
    assert all(ckpt.is_complete(tmp_path / "checkpoints" / n) for n in step_dirs), step_dirs
    for n in step_dirs:  # and each loads: nothing named step-* is damaged
        ckpt.check_complete(tmp_path / "checkpoints" / n)
    assert {s for s, _ in ckpt.list_checkpoints(tmp_path)} == {3, 4}
    # the trash is hidden and the next run's cleanup removes it
    hidden = [n for n in entries(tmp_path) if not ckpt.STEP_DIR.match(n)]
    assert hidden and all(n.startswith(".old-step-") for n in hidden), hidden
    keep.clean_partial(tmp_path)
    assert entries(tmp_path) == ["step-0000003", "step-0000004"]
    assert {s: snapshot(tmp_path / "checkpoints" / ckpt.step_dir_name(s)) for s in (3, 4)} == kept


def test_pruning_removes_half_deleted_debris_older_than_the_kept_checkpoints(tmp_path):
    """What an older rotary's non-atomic prune left (a step dir with files gone) goes at the next prune."""
    for step in (1, 2, 3, 4):
        save(tmp_path, step, float(step))
    (tmp_path / "checkpoints" / "step-0000001" / "model.safetensors").unlink()
    keep.prune_checkpoints(tmp_path, keep=3)
    assert entries(tmp_path) == ["step-0000002", "step-0000003", "step-0000004"]
    keep.prune_checkpoints(tmp_path, keep=1)
    assert entries(tmp_path) == ["step-0000004"]
    with pytest.raises(ValueError):
        keep.prune_checkpoints(tmp_path, keep=0)


def test_an_incomplete_checkpoint_newer_than_the_kept_ones_is_not_pruned(tmp_path):
    """A broken newest step is reported on resume (never silently skipped), so prune leaves it."""
    for step in (1, 2, 3):
        save(tmp_path, step, float(step))
    (tmp_path / "checkpoints" / "step-0000003" / "model.safetensors").unlink()
    keep.prune_checkpoints(tmp_path, keep=1)
    assert entries(tmp_path) == ["step-0000002", "step-0000003"]


def test_checkpoints_past_seven_digits_sort_by_step_not_by_name(tmp_path):
    # step-10000000 sorts before step-9999999 as a string: latest and prune must go by the number
    for step in (9_999_998, 9_999_999, 10_000_000):
        save(tmp_path, step, 1.0)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [9_999_998, 9_999_999, 10_000_000]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-10000000"
    keep.prune_checkpoints(tmp_path, keep=1)
    assert entries(tmp_path) == ["step-10000000"]
