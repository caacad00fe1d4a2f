"""Table I/O of the folder sources: find a table, read only the needed columns, filter ranges.

Every loader module (``eicu.py``, ``mimic3.py``, ``physionet2012.py``) reads its files through
these functions, so a missing file, a missing column or an unreadable/truncated file is always
a ``ValueError`` naming the file (and the column).
"""

from __future__ import annotations

import gzip
import re
import sys
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["READ_ERRORS", "log", "natural_key", "find_table", "csv_columns", "read_csv_table", "filter_ranges"]

# Errors raised by gzip / zlib / tar / CSV readers on unreadable or truncated input.
READ_ERRORS = (
    OSError,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    tarfile.TarError,
    UnicodeDecodeError,
    pd.errors.ParserError,
    pd.errors.EmptyDataError,
)


def log(progress: bool, message: str) -> None:
    """Print a progress line to stderr when ``progress`` is on."""
    if progress:
        print(message, file=sys.stderr, flush=True)


def natural_key(text: str) -> list:
    """Sort key that orders embedded numbers by value: ``"site_10"`` after ``"site_9"``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def find_table(folder: str | Path, name: str, *, parts: bool = False) -> list[Path]:
    """Files of table ``name`` in ``folder``: ``name.csv`` or ``name.csv.gz``, any letter case.

    With ``parts=True`` also split tables ``name_1.csv.gz``, ``name_2.csv.gz``, … (all parts,
    sorted). Raises ``ValueError`` naming the expected file when nothing matches.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"data folder {str(folder)!r} does not exist (looking for {name}.csv[.gz])")
    stem = re.escape(name.lower())
    suffix = r"(?:_?\d+)?" if parts else ""
    pattern = re.compile(rf"^{stem}{suffix}\.csv(?:\.gz)?$")
    found = sorted(
        (p for p in folder.iterdir() if p.is_file() and pattern.match(p.name.lower())),
        key=lambda p: natural_key(p.name.lower()),
    )
    if not found:
        extra = f" (or split parts {name}_1.csv.gz, ...)" if parts else ""
        raise ValueError(f"missing table: expected {name}.csv or {name}.csv.gz in {str(folder)!r}{extra}")
    # Prefer one file per part: if both x.csv and x.csv.gz exist, keep the first listed.
    seen: dict[str, Path] = {}
    for p in found:
        key = p.name.lower().removesuffix(".gz")
        seen.setdefault(key, p)
    return list(seen.values())


def csv_columns(path: Path) -> dict[str, str]:
    """Map lower-case column name -> column name as written in the header of ``path``."""
    try:
        header = pd.read_csv(path, nrows=0)
    except READ_ERRORS as err:
        raise ValueError(f"cannot read {str(path)!r}: {type(err).__name__}: {err}") from err
    return {str(c).strip().lower(): c for c in header.columns}


def read_csv_table(
    path: Path,
    required: Sequence[str],
    *,
    optional: Sequence[str] = (),
    dtype: dict | None = None,
    chunksize: int | None = None,
) -> pd.DataFrame | Iterator[pd.DataFrame]:
    """Read columns ``required`` (+ ``optional`` when present) of a CSV[.gz], names lower-cased.

    Column names are matched case-insensitively. With ``chunksize``, returns an iterator of
    DataFrames (errors while iterating are also re-raised as ``ValueError`` naming the file).
    """
    columns = csv_columns(path)
    missing = [c for c in required if c.lower() not in columns]
    if missing:
        raise ValueError(f"{str(path)!r} lacks column(s) {missing}; found {sorted(columns)[:30]}")
    wanted = [c.lower() for c in required] + [c.lower() for c in optional if c.lower() in columns]
    usecols = [columns[c] for c in wanted]
    rename = {columns[c]: c for c in wanted}
    dtype = {columns[k.lower()]: v for k, v in (dtype or {}).items() if k.lower() in columns}

    def _read(**kw):
        try:
            return pd.read_csv(path, usecols=usecols, dtype=dtype or None, **kw)
        except READ_ERRORS as err:
            raise ValueError(f"cannot read {str(path)!r}: {type(err).__name__}: {err}") from err
        except ValueError as err:  # e.g. a value that does not fit the requested dtype
            raise ValueError(f"cannot read {str(path)!r}: {err}") from err

    if chunksize is None:
        return _read().rename(columns=rename)

    def _chunks() -> Iterator[pd.DataFrame]:
        reader = _read(chunksize=chunksize)
        try:
            for chunk in reader:
                yield chunk.rename(columns=rename)
        except READ_ERRORS as err:
            raise ValueError(f"cannot read {str(path)!r}: {type(err).__name__}: {err}") from err
        except ValueError as err:
            raise ValueError(f"cannot read {str(path)!r}: {err}") from err
        finally:
            reader.close()

    return _chunks()


def filter_ranges(values: pd.Series | np.ndarray, low: float, high: float) -> tuple[np.ndarray, int]:
    """Boolean "keep" array for finite values within [low, high], and the number rejected."""
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    keep = finite & (v >= low) & (v <= high)
    return keep, int((finite & ~keep).sum())
