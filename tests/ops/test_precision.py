"""``precision: auto`` decides from machine facts: CPU flags, the GPU's bf16 support."""

from __future__ import annotations

import pytest
import torch

from rotary import precision
from rotary.errors import RotaryError


@pytest.mark.parametrize("flags,want", [
    ({"avx512f", "amx_tile", "amx_bf16", "avx512_bf16"}, "bf16"),  # Sapphire Rapids and later
    ({"avx512f", "avx512_bf16"}, "bf16"),  # Cooper Lake, Zen 4/5
    ({"avx2", "avx512f"}, "fp32"),  # Skylake-SP: bf16 would be emulated
    (set(), "fp32"),  # no /proc/cpuinfo (macOS) or an ARM CPU without the flags
])
def test_auto_on_cpu_follows_the_cpus_flags(flags, want, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    chosen, why = precision.resolve("auto", torch.device("cpu"))
    assert chosen == want and why.startswith("auto: ")
    assert (("amx_bf16" in why or "avx512_bf16" in why) if want == "bf16" else "neither" in why)


@pytest.mark.parametrize("supported,want", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_follows_the_gpus_bf16_support(supported, want, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Some GPU")
    assert precision.resolve("auto", torch.device("cuda", 0)) == (
        want, f"auto: Some GPU {'supports bf16' if supported else 'has no bf16'}")


def test_an_explicit_precision_is_kept_and_other_devices_stay_fp32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    for p in ("fp32", "bf16", "fp16"):
        assert precision.resolved(p, torch.device("cpu")) == p
    assert precision.resolved("auto", torch.device("mps")) == "fp32"


def test_this_machines_flags_are_read():
    """On Linux the flags line is found (the choice above is made from it)."""
    from pathlib import Path

    if not Path("/proc/cpuinfo").exists():
        pytest.skip("no /proc/cpuinfo")
    precision.cpu_flags.cache_clear()
    assert precision.cpu_flags(), "no flags read from /proc/cpuinfo"


def test_unknown_precision_is_a_recipe_error():
    from rotary.train.config import load_recipe

    with pytest.raises(RotaryError, match="precision"):
        load_recipe(None, {"precision": "bf32"})
