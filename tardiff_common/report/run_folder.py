"""Run folders that appear whole or not at all.

``atomic_run_folder(path)`` yields a hidden sibling staging folder; on success it is renamed
to ``path`` in one step, on any error it is deleted, so a crashed run never leaves a
half-written report behind. An existing ``path`` is never overwritten (no data is lost).
``write_json_atomic`` / ``write_bytes_atomic`` / ``write_npz_atomic`` do the same for single
files (checkpoints, a site's synthetic data).
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["atomic_run_folder", "write_json_atomic", "write_bytes_atomic", "write_npz_atomic", "to_jsonable"]


@contextmanager
def atomic_run_folder(path: str | os.PathLike) -> Iterator[Path]:
    final = Path(path)
    if final.exists():
        raise ValueError(f"run folder {str(final)!r} already exists; choose another --out (nothing was overwritten)")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield staging
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
