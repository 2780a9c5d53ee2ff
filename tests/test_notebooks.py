"""The notebooks of notebooks/ run top to bottom, every cell, at smoke size.

Each one is executed with nbclient in a fresh ``python3`` Jupyter kernel (ipykernel, from the dev
extra), with ``ROTARY_NOTEBOOK_SIZE=smoke`` and a temporary working directory, so their runs never
land in the repository; a failing cell fails the test with the cell and its traceback. nbclient
rather than nbmake: the working directory, the environment and the check of which interpreter ran
the kernel are set here, in the suite's own file, and ``pytest tests`` (the Makefile's command,
pyproject's testpaths) collects it with nothing else to configure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IDS = [p.name for p in NOTEBOOKS]


def test_the_notebooks_are_there():
    """An empty parametrization would skip the tests below silently: the set is pinned here."""
    assert IDS == ["train_roformer.ipynb", "usage.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    nbformat.validate(nb)
    assert nb.nbformat == 4 and nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"stored outputs in {path.name}: strip them"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_at_smoke_size(path, tmp_path, monkeypatch):
    monkeypatch.setenv("ROTARY_NOTEBOOK_SIZE", "smoke")
    # the kernel (and the processes it starts) import this checkout's rotary, whatever is installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
    assert f"python {sys.executable}\n" in printed, "the python3 kernel is not this interpreter"
    assert (tmp_path / "runs").is_dir()
