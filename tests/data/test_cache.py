"""Prepared-array cache: round trip, keys, corruption fallback, atomic writes."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from tardiff_common.data import cache
from tardiff_common.data.contract import SiteData
from tardiff_common.data.registry import load_sites


def _sites():
    rng = np.random.default_rng(0)
    out = []
    for k, n in enumerate((5, 3)):
        x = rng.normal(size=(n, 2, 4)).astype(np.float32)
        out.append(
            SiteData(
                name=f"site{k}",
                x=x,
                y=np.arange(n) % 2,
                channels=("a", "b"),
                mask=x > 0,
                meta={
                    "source": "t",
                    "stay_ids": np.arange(n) + 10 * k,
                    "dropped": {"no_vitals": k},
                    "fill_median": {"a": 1.5},
                },
            )
        )
    return out


def _files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_round_trip(tmp_path):
    sites = _sites()
    cache.save_cached(tmp_path, "t", "k" * 64, sites, options={"task": "mortality"})
    back = cache.load_cached(tmp_path, "t", "k" * 64)
    assert [s.name for s in back] == ["site0", "site1"]
    for a, b in zip(sites, back, strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.meta["stay_ids"], b.meta["stay_ids"])
        assert b.channels == ("a", "b") and b.meta["dropped"] == a.meta["dropped"]
    assert _files(tmp_path) == sorted(p.name for p in cache.cache_paths(tmp_path, "t", "k" * 64))
    assert cache.load_cached(tmp_path, "t", "z" * 64) is None  # absent


def test_key_depends_on_loader_options_and_files(tmp_path):
    f = tmp_path / "input.csv"
    f.write_text("a\n1\n")
    base = cache.cache_key("eicu", {"task": "mortality"}, [f])
    assert base == cache.cache_key("eicu", {"task": "mortality"}, [f])
    assert base != cache.cache_key("mimic3", {"task": "mortality"}, [f])
    assert base != cache.cache_key("eicu", {"task": "los"}, [f])
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert base != cache.cache_key("eicu", {"task": "mortality"}, [f])
    touched = cache.cache_key("eicu", {"task": "mortality"}, [f])
    f.write_text("a\n12\n")  # size changes
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert touched != cache.cache_key("eicu", {"task": "mortality"}, [f])


def test_default_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TARDIFF_CACHE_DIR", str(tmp_path / "here"))
    assert cache.default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("TARDIFF_CACHE_DIR")
    assert cache.default_cache_dir().parts[-2:] == (".cache", "tardiff")


@pytest.mark.parametrize("which", ["npz", "json"])
def test_corrupted_entry_is_ignored_with_a_warning(tmp_path, which):
    cache.save_cached(tmp_path, "t", "k" * 64, _sites())
    npz, js = cache.cache_paths(tmp_path, "t", "k" * 64)
    target = npz if which == "npz" else js
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])  # truncated
    with pytest.warns(UserWarning, match="unreadable"):
        assert cache.load_cached(tmp_path, "t", "k" * 64) is None


def test_mismatched_npz_and_json_are_rejected(tmp_path):
    cache.save_cached(tmp_path, "t", "k" * 64, _sites())
    npz, _ = cache.cache_paths(tmp_path, "t", "k" * 64)
    old = npz.read_bytes()
    cache.save_cached(tmp_path, "t", "k" * 64, _sites())
    npz.write_bytes(old)  # npz from an earlier write next to a newer json
    with pytest.warns(UserWarning, match="different writes"):
        assert cache.load_cached(tmp_path, "t", "k" * 64) is None


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    def broken_savez(fh, **arrays):
        fh.write(b"PK\x03\x04 partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        cache.save_cached(tmp_path, "t", "k" * 64, _sites())
    assert _files(tmp_path) == []


def test_failure_mid_write_keeps_the_previous_entry(tmp_path, monkeypatch):
    cache.save_cached(tmp_path, "t", "k" * 64, _sites())
    before = {p: p.read_bytes() for p in cache.cache_paths(tmp_path, "t", "k" * 64)}
    monkeypatch.setattr(np, "savez", lambda fh, **a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        cache.save_cached(tmp_path, "t", "k" * 64, _sites())
    assert {p: p.read_bytes() for p in before} == before
    assert len(_files(tmp_path)) == 2
    assert cache.load_cached(tmp_path, "t", "k" * 64) is not None


# ---------------------------------------------------------------------------------------------
# Through load_sites (fixture data)
# ---------------------------------------------------------------------------------------------


def _load(folder, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_sites("eicu", folder, site_by="hospital", min_site_records=0, **kw)


def test_load_sites_uses_and_rebuilds_the_cache(eicu_tables, tmp_path):
    folder = eicu_tables()
    cdir = tmp_path / "cache"
    first = _load(folder, cache_dir=cdir)
    assert len(_files(cdir)) == 2
    # A cached load must not touch the raw files: make the vitals unreadable, then load.
    vit = folder / "vitalPeriodic.csv.gz"
    raw = vit.read_bytes()
    st = vit.stat()
    junk = b"\x1f\x8b garbage"
    vit.write_bytes(junk + b"\0" * (len(raw) - len(junk)))  # same size ...
    os.utime(vit, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and same mtime: same key
    second = _load(folder, cache_dir=cdir)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.x, b.x)
    vit.write_bytes(raw)
    os.utime(vit, ns=(st.st_atime_ns, st.st_mtime_ns))
    # Corrupt the cached npz: the next load warns, rebuilds and overwrites it.
    npz = next(p for p in cdir.iterdir() if p.suffix == ".npz")
    npz.write_bytes(b"not an npz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        third = load_sites("eicu", folder, site_by="hospital", min_site_records=0, cache_dir=cdir)
    assert any("unreadable" in str(w.message) for w in caught)
    np.testing.assert_array_equal(third[0].x, first[0].x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fourth = load_sites("eicu", folder, site_by="hospital", min_site_records=0, cache_dir=cdir)
    assert not [w for w in caught if "unreadable" in str(w.message)]  # rewritten entry is clean
    np.testing.assert_array_equal(fourth[0].mask, first[0].mask)


def test_load_sites_with_failing_cache_write_warns_and_returns_data(eicu_tables, tmp_path, monkeypatch):
    cdir = tmp_path / "cache"

    def broken_savez(fh, **arrays):
        fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sites = load_sites("eicu", eicu_tables(), site_by="hospital", min_site_records=0, cache_dir=cdir)
    assert any("could not write the cache" in str(w.message) for w in caught)
    assert sites and _files(cdir) == []


def test_cache_dir_none_writes_nothing(eicu_tables, tmp_path, monkeypatch):
    monkeypatch.setenv("TARDIFF_CACHE_DIR", str(tmp_path / "env-cache"))
    _load(eicu_tables(), cache_dir=None)
    assert _files(tmp_path / "env-cache") == []
    _load(eicu_tables())  # default: $TARDIFF_CACHE_DIR
    assert len(_files(tmp_path / "env-cache")) == 2


def test_changed_input_gives_a_fresh_build(eicu_tables, tmp_path):
    folder = eicu_tables()
    cdir = tmp_path / "cache"
    _load(folder, cache_dir=cdir)
    _load(folder, cache_dir=cdir, task="los")  # new options -> new entry
    assert len(_files(cdir)) == 4
    eicu_tables(folder, vitals=[(1, 0, 80, 12, 95), (2, 0, 81, 13, 96), (4, 0, 82, 14, 97), (6, 0, 83, 15, 98)])
    sites = _load(folder, cache_dir=cdir)
    by_id = {int(sid): s.x[i, 0, 0] for s in sites for i, sid in enumerate(s.meta["stay_ids"])}
    assert by_id == {1: 80.0, 2: 81.0, 4: 82.0, 6: 83.0}
