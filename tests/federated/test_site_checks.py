"""Phase 0 refuses a site below two records in any split, naming it, before any training."""

from __future__ import annotations

import pytest

from server.run import ServerRun, SiteInfo
from tardiff_common.pipeline.config import preset


def info(counts: dict[str, int]) -> SiteInfo:
    return SiteInfo(1000, "hospital_tiny", 0, counts, ("hr",), 16, [0.0])


def test_a_site_with_one_record_in_a_split_is_refused_by_name(tmp_path):
    run = ServerRun(grid=None, config=preset("tiny"), run_dir=tmp_path, run_name="t")
    with pytest.raises(ValueError, match=r"site 'hospital_tiny' has too few records: guidance = 1, test = 0; every "
                                         r"split needs at least 2"):
        run.register_site(info({"train": 5, "guidance": 1, "tuning": 2, "test": 0}))
    assert run.sites == {}
    run.register_site(info({"train": 2, "guidance": 2, "tuning": 2, "test": 2}))
    assert run.registered["hospital_tiny"].counts["train"] == 2
