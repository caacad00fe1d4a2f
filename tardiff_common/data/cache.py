"""Cache of prepared site arrays, so a real source is parsed once and then loads in a blink.

Key: sha256 of (loader name, loader options, cache format version, and for each input file its
resolved path, size in bytes and modification time in ns). Touching or replacing an input
file, or changing an option, gives a new key; stale entries are simply never read again.

Layout, for one site set (the output of one loader call) under ``cache_dir``:

* ``<loader>-<key[:24]>.npz``  — per site ``i``: ``s{i}_x`` float32 [N, C, L], ``s{i}_y`` int64
  [N], ``s{i}_mask`` bool [N, C, L], and every array-valued meta entry as ``s{i}_meta_<name>``
  (e.g. ``stay_ids``); plus ``__token__``, a random id shared with the JSON file.
* ``<loader>-<key[:24]>.json`` — the full key, loader, options, inputs, and per site its name,
  channels, JSON-able meta and ``SiteData.summary()`` (readable by a person).

Both files are written atomically: to a temporary file in the same folder, flushed, then
``os.replace``-d into place; a failure mid-write removes the temporary file, so no partial cache
file is ever left. The token ties the two files together. A cache entry that cannot be read
(corrupted, truncated, mismatched token or key) is reported with ``warnings.warn`` and treated
as absent: the caller rebuilds and overwrites it.

Default folder: ``$TARDIFF_CACHE_DIR`` or ``~/.cache/tardiff``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tardiff_common.data.contract import SiteData

__all__ = ["CACHE_VERSION", "default_cache_dir", "cache_key", "cache_paths", "load_cached", "save_cached"]

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$TARDIFF_CACHE_DIR`` if set, else ``~/.cache/tardiff``."""
    env = os.environ.get("TARDIFF_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tardiff"


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


def cache_key(loader: str, options: dict, inputs: Sequence[str | Path]) -> str:
    """sha256 hex of the loader, its options and each input file's path, size and mtime."""
    files = []
    for p in inputs:
        p = Path(p).resolve()
        st = p.stat()
        files.append([str(p), int(st.st_size), int(st.st_mtime_ns)])
    payload = {"version": CACHE_VERSION, "loader": loader, "options": _jsonable(options), "inputs": files}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_paths(cache_dir: str | Path, loader: str, key: str) -> tuple[Path, Path]:
    """The (npz, json) paths of one cache entry."""
    stem = Path(cache_dir) / f"{loader}-{key[:24]}"
    return stem.with_suffix(".npz"), stem.with_suffix(".json")


def _write_atomic(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temp file next to ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_cached(
    cache_dir: str | Path,
    loader: str,
    key: str,
    sites: Sequence[SiteData],
    *,
    options: dict | None = None,
    inputs: Sequence[str | Path] = (),
) -> Path:
    """Write ``sites`` atomically as one ``.npz`` plus a JSON summary; returns the npz path."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    npz_path, json_path = cache_paths(cache_dir, loader, key)
    token = secrets.token_hex(16)
    arrays: dict[str, np.ndarray] = {"__token__": np.array(token)}
    described = []
    for i, s in enumerate(sites):
        arrays[f"s{i}_x"] = np.asarray(s.x, dtype=np.float32)
        arrays[f"s{i}_y"] = np.asarray(s.y, dtype=np.int64)
        if s.mask is not None:
            arrays[f"s{i}_mask"] = np.asarray(s.mask, dtype=bool)
        meta_json = {}
        meta_arrays = []
        for k, v in s.meta.items():
            if isinstance(v, np.ndarray):
                arrays[f"s{i}_meta_{k}"] = v
                meta_arrays.append(k)
            else:
                meta_json[k] = _jsonable(v)
        described.append(
            {
                "name": s.name,
                "channels": list(s.channels),
                "has_mask": s.mask is not None,
                "meta": meta_json,
                "meta_arrays": meta_arrays,
                "summary": _jsonable(s.summary()),
            }
        )
    summary = {
        "version": CACHE_VERSION,
        "key": key,
        "token": token,
        "loader": loader,
        "options": _jsonable(options or {}),
        "inputs": [str(Path(p).resolve()) for p in inputs],
        "sites": described,
    }
    _write_atomic(npz_path, lambda fh: np.savez(fh, **arrays))
    _write_atomic(json_path, lambda fh: fh.write(json.dumps(summary, indent=1, default=str).encode("utf-8")))
    return npz_path


def load_cached(cache_dir: str | Path, loader: str, key: str) -> list[SiteData] | None:
    """The cached sites for ``key``, or ``None`` if absent or unreadable (then warn)."""
    npz_path, json_path = cache_paths(cache_dir, loader, key)
    if not npz_path.exists() or not json_path.exists():
        return None
    try:
        summary = json.loads(json_path.read_text(encoding="utf-8"))
        if summary.get("key") != key or summary.get("version") != CACHE_VERSION:
            raise ValueError("key or version mismatch")
        with np.load(npz_path, allow_pickle=False) as data:
            if str(data["__token__"]) != summary["token"]:
                raise ValueError("npz and json belong to different writes")
            sites = []
            for i, d in enumerate(summary["sites"]):
                meta = dict(d["meta"])
                for k in d["meta_arrays"]:
                    meta[k] = data[f"s{i}_meta_{k}"]
                sites.append(
                    SiteData(
                        name=d["name"],
                        x=data[f"s{i}_x"],
                        y=data[f"s{i}_y"],
                        channels=tuple(d["channels"]),
                        mask=data[f"s{i}_mask"] if d["has_mask"] else None,
                        meta=meta,
                    )
                )
        return sites
    except Exception as err:  # corrupted / truncated / foreign file: rebuild instead
        warnings.warn(
            f"cache entry {str(npz_path)!r} is unreadable ({type(err).__name__}: {err}); rebuilding",
            stacklevel=3,
        )
        return None
