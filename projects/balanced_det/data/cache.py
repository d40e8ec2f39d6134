"""Where converted datasets and dataset statistics are written, and how they are written safely."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = ["cache_dir", "atomic_write_json", "atomic_write_bytes", "locked", "build_dir_atomically"]


def cache_dir(*parts: str) -> Path:
    """``$BALANCED_DET_CACHE/<parts>`` (default ``~/.cache/balanced_det``), created if missing."""
    root = os.environ.get("BALANCED_DET_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "balanced_det"
    )
    path = Path(root).expanduser().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``.

    An interruption leaves either the old file or the new one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: os.PathLike, obj: Any, indent: int | None = None) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=indent, sort_keys=False).encode("utf-8"))


@contextlib.contextmanager
def locked(path: os.PathLike) -> Iterator[None]:
    """An exclusive inter-process lock on ``<path>.lock`` (several ranks or runs, one writer)."""
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def build_dir_atomically(final: Path, build_fn) -> Path:
    """Create directory ``final`` by calling ``build_fn(tmp_dir)`` and renaming the result.

    Concurrent callers wait on a lock; a finished directory is never rebuilt or half-written.
    ``final/DONE`` marks completion.
    """
    final = Path(final)
    if (final / "DONE").exists():
        return final
    with locked(final):
        if (final / "DONE").exists():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            build_fn(tmp)
            (tmp / "DONE").write_text("ok\n")
            if final.exists():  # an unfinished directory from an interrupted older run
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final
