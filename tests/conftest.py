"""Shared fixtures. Data-layer fixtures are prefixed ``data_`` (small tokenizers, trained once per session)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from rotary.ops import inductor

# The processes tests start (CLI runs, DDP workers, studies) train a few steps each, where
# compiling the CPU kernels (seconds per process) costs more than it saves: they run eager.
# The test processes themselves keep the kernels as the user's environment set them
# (tests/ops/test_cpu_kernels.py switches them on and off itself); pytest-xdist's workers inherit
# this process's environment, so the user's setting travels to them under another name.
_KERNELS_IN_TESTS = "ROTARY_TESTS_INDUCTOR_KERNELS"
os.environ.setdefault(_KERNELS_IN_TESTS, os.environ.get(inductor.ENV, "1"))
inductor.enabled = os.environ[_KERNELS_IN_TESTS] != "0"
os.environ[inductor.ENV] = "0"
# The classifier baselines the fine-tunes print are cached: in a directory of this run, never the
# user's ~/.cache (a result cached by other code would hide a bug in the fitting).
os.environ["ROTARY_BASELINE_CACHE"] = tempfile.mkdtemp(prefix="rotary-test-baselines-")


# pytest-xdist's --dist loadfile (the Makefile's) hands whole files to the workers in collection
# order. The files that take a minute or more go first (longest first, as measured with
# --durations=0), so that the suite does not end on one worker running a long file while the
# other has nothing left. Every other file keeps its place; tests keep their order within a file.
LONGEST_FILES_FIRST = (
    "train/test_distributed.py", "cli/test_studies.py", "cli/test_workflow.py", "infer/test_translation.py",
    "train/test_finetune.py", "ops/test_compilation.py", "test_notebooks.py", "train/test_train.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = Path(__file__).resolve().parent
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}

    def place(item: pytest.Item) -> int:
        path = Path(str(item.fspath)).resolve()
        return rank.get(path.relative_to(tests).as_posix(), len(rank)) if path.is_relative_to(tests) else len(rank)

    items.sort(key=place)  # stable


@pytest.fixture(scope="session")
def data_bpe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer (vocab 1024) trained on four Shakespeare works."""
    from rotary.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("data_tok") / "bpe"
    train_tokenizer("shakespeare", "bpe", 1024, out, max_documents=4)
    return out


@pytest.fixture(scope="session")
def data_wordpiece_jieba_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A WordPiece tokenizer with jieba words (vocab 3000) trained on 300 People's Daily articles."""
    from rotary.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("data_tok") / "wordpiece-jieba"
    train_tokenizer("peoples-daily", "wordpiece", 3000, out, jieba=True, max_documents=300)
    return out


@pytest.fixture(scope="session")
def data_char_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A character tokenizer (vocab 1500) trained on 300 People's Daily articles."""
    from rotary.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("data_tok") / "char"
    train_tokenizer("peoples-daily", "char", 1500, out, max_documents=300)
    return out
