"""Small functions compiled by Inductor on the CPU, for the elementwise work around a GEMM.

In eager PyTorch each elementwise op is its own pass over memory; on a 2-core CPU a chain of
them over a (rows x vocab) or (B, H, T, T) tensor costs more than the GEMMs beside it. Inductor
fuses such a chain into one loop. Compiling a whole model does that too but takes a minute on
2 cores; compiling a few small functions takes seconds, once per shape.

Inductor's CPU backend builds C++, so this needs a C++ compiler: ``available`` says whether one
is on PATH (a machine fact, read once at import), and callers keep their eager path for when it
is not. ``enabled`` is a switch for benchmarks (an A/B in one process) and for
``ROTARY_INDUCTOR_KERNELS=0``.
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable)

ENV = "ROTARY_INDUCTOR_KERNELS"


def has_cpp_compiler() -> bool:
    """Whether a C++ compiler that Inductor can call is on PATH (``$CXX``, g++, c++, clang++)."""
    return any(shutil.which(c) for c in (os.environ.get("CXX") or "", "g++", "c++", "clang++") if c)


# Read once, at import: a compiled model's trace can neither call shutil nor read os.environ.
available = has_cpp_compiler()
enabled = os.environ.get(ENV, "1") != "0"
failed: str | None = None  # set when a compilation failed here: every caller returns to its eager path


def active() -> bool:
    """Whether callers should use their compiled kernels now."""
    return available and enabled and failed is None


def describe() -> str:
    """One phrase for the trainer's log: whether the kernels run, and why not."""
    if not available:
        return "eager (no C++ compiler for Inductor)"
    if failed is not None:
        return f"eager (compiling failed: {failed})"
    return "compiled" if enabled else f"eager ({ENV}=0)"


def kernel(fn: F, isolate: bool = False) -> F:
    """``fn`` compiled: first for the shapes it meets, then, if they change (a last partial
    chunk, a masked LM's varying count of labelled rows), once more with those sizes symbolic.

    ``isolate``: this compiled copy keeps its own graphs and its own recompile budget. Without
    it every ``torch.compile`` of one function shares Dynamo's limit (8 graphs); a process that
    compiles many differently-shaped models (a sweep, a notebook) would exhaust it and then run
    ``fn`` eager without a word, so that a run's numbers would depend on what ran before it.

    Inside a model that is itself being compiled, ``fn`` is traced as plain code (the outer
    compilation fuses it). If compiling fails here (a broken toolchain), one warning says so, this
    call runs ``fn`` eager and :func:`active` turns false, so that callers go back to their own
    eager paths: the numbers are the same, only slower.
    """
    compiled = torch.compile(fn, isolate_recompiles=isolate)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        global failed
        if torch.compiler.is_compiling() or failed is not None:
            return fn(*args, **kwargs)
        try:
            return compiled(*args, **kwargs)
        except Exception as err:  # Inductor's errors have no common base class
            failed = f"{fn.__name__}: {type(err).__name__}"
            warnings.warn(f"rotary: compiling {fn.__name__} failed ({type(err).__name__}); training goes on "
                          f"with the eager kernels ({ENV}=0 skips the attempt)", stacklevel=2)
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]
