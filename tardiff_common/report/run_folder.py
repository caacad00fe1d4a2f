"""Run folders that appear whole or not at all.

``atomic_run_folder(path)`` yields a hidden sibling staging folder
(``.<name>.partial-<pid>-<random>``); on success it is renamed to ``path`` in one step, on any
error or SIGTERM it is deleted, so a crashed run never leaves a half-written report behind. A
staging folder left by a process that no longer runs (SIGKILL, power loss) is removed by the
next ``atomic_run_folder`` in the same parent folder. An existing ``path`` is never overwritten (no data is lost).
``write_json_atomic`` / ``write_bytes_atomic`` / ``write_npz_atomic`` do the same for single
files (checkpoints, a site's synthetic data).
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["atomic_run_folder", "remove_stale_partials", "write_json_atomic", "write_bytes_atomic", "write_npz_atomic", "to_jsonable"]


@contextmanager
def atomic_run_folder(path: str | os.PathLike) -> Iterator[Path]:
    final = Path(path)
    if final.exists():
        raise ValueError(f"run folder {str(final)!r} already exists; choose another --out (nothing was overwritten)")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(final.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-{os.getpid()}-", dir=final.parent))
    previous = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM -> SystemExit, so the cleanup runs
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield staging
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def remove_stale_partials(parent: Path) -> list[Path]:
    """Delete the ``.<name>.partial-<pid>-*`` folders in ``parent`` whose process is gone; returns them."""
    removed = []
    for folder in parent.glob(".*.partial-*"):
        pid = folder.name.rsplit(".partial-", 1)[1].split("-", 1)[0]
        if folder.is_dir() and not (pid.isdigit() and _alive(int(pid))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def to_jsonable(obj: object, *, keep_nonfinite: bool = False) -> object:
    """numpy scalars/arrays and tuples -> plain JSON types; NaN/inf -> None (strict JSON has no
    NaN), or kept as floats with ``keep_nonfinite`` (Python's json writes and reads them back)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, keep_nonfinite=keep_nonfinite) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, keep_nonfinite=keep_nonfinite) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), keep_nonfinite=keep_nonfinite)
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj) and not keep_nonfinite:
        return None
    return obj


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, obj: object) -> None:
    write_bytes_atomic(path, (json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n").encode())


def write_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` that replaces ``path`` in one step (never a truncated file)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())
