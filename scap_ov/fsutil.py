"""Atomic output folders: write into a temporary sibling, rename over the target only on success."""
from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
from pathlib import Path

from scap_ov.errors import ScapError


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty output folder unless ``overwrite`` (checked before any long work)."""
    if out.exists() and not out.is_dir():
        raise ScapError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ScapError(f"output folder {out} exists and is not empty (pass --overwrite to replace it)")


@contextlib.contextmanager
def _sigterm_as_exception():
    """Turn SIGTERM into SystemExit so cleanup runs (SIGINT already raises KeyboardInterrupt)."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def atomic_output_dir(out: Path, overwrite: bool = False):
    """Yield a temporary folder beside ``out``; on success it replaces ``out``, on any failure it vanishes."""
    out = Path(out).absolute()
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        with _sigterm_as_exception():
            yield tmp
            if out.exists():
                old = out.with_name(f".{out.name}.old-{tmp.name[-8:]}")
                out.rename(old)
                tmp.rename(out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: Path):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
