"""True dropout reasons: every failed reply is filed under the site its message went to, with
the real cause (the exception's own message, or what Flower's error code means) and the time;
the traceback stays in the audit only."""

from __future__ import annotations

import re

import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.error import Error
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode

from server.run import ServerRun, SiteInfo, TooFewSitesError
from simulations.local_grid import LocalGrid
from tardiff_common import protocol as P
from tardiff_common.pipeline.config import preset

SITES = ("hospital_a", "hospital_b", "hospital_c")
TIME = r"\(\d+ s into the round, at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)"


def ok_reply(msg: Message) -> Message:
    return Message(RecordDict({P.METRICS: MetricRecord({"num-examples": 10}),
                               P.SITE: ConfigRecord({"name": "x", "index": 0})}), reply_to=msg)


class FaultyGrid(LocalGrid):
    """Node 1001 (hospital_b) fails as ``fault`` says ("raise" in-process, "deployed-raise" as a
    SuperNode reports it, "heartbeat": the SuperLink's node-unavailable reply, "silent": no
    reply); the other nodes answer."""

    def __init__(self, fault: str):
        super().__init__(self._handle, 3, {}, first_node_id=1000)
        self.fault = fault

    def _handle(self, msg: Message, context) -> Message:
        if msg.metadata.dst_node_id == 1001 and self.fault == "raise":
            raise RuntimeError("GPU fell off the bus")
        return ok_reply(msg)

    def push_messages(self, messages):
        ids = list(super().push_messages(messages))
        for msg in messages:
            if msg.metadata.dst_node_id != 1001:
                continue
            mid = msg.metadata.message_id
            if self.fault == "silent":
                self._replies.pop(mid)
            elif self.fault in ("heartbeat", "deployed-raise"):
                code, reason = ((ErrorCode.NODE_UNAVAILABLE, "Error: Node Unavailable - no heartbeat")
                                if self.fault == "heartbeat"
                                else (ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                      "<class 'tardiff_common.data.errors.DataError'>:<'records.csv line 7: bad'>"))
                error = Message(Error(code=code, reason=reason), reply_to=msg)
                if self.fault == "heartbeat":  # the SuperLink answers in the lost node's place
                    error.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
                self._replies[mid] = error
        return ids


def run_with(fault: str, tmp_path, **overrides) -> tuple[ServerRun, list[str]]:
    flat = {"federation.min-sites": 1, "federation.round-timeout-s": 0.3, **overrides}
    lines: list[str] = []
    run = ServerRun(grid=FaultyGrid(fault), config=preset("tiny").with_overrides(flat), run_dir=tmp_path,
                    run_name="t", log=lines.append, poll_s=0.05)
    for i, name in enumerate(SITES):
        run.register_site(SiteInfo(1000 + i, name, i, {"train": 10, "guidance": 2, "tuning": 2, "test": 2,
                                                   "train-positives": 1}, ("hr",), 16, [0.0]))
    run.query("classifier", P.HISTOGRAM, RecordDict())
    return run, lines


@pytest.fixture(autouse=True)
def _no_schema(monkeypatch):  # the replies' contents are not the subject here (tests/federated/test_audit_counts.py)
    monkeypatch.setattr(ServerRun, "reply_schema", lambda self, *a, **k: None)


def dropped(run: ServerRun) -> dict[str, str]:
    return run.rounds[-1]["dropped"]


def test_a_raising_client_app_is_reported_with_its_own_message(tmp_path):
    run, lines = run_with("raise", tmp_path)
    assert list(dropped(run)) == ["hospital_b"]
    assert re.fullmatch(r"RuntimeError: GPU fell off the bus " + TIME, dropped(run)["hospital_b"])
    entry = next(e for e in run.audit.entries if e.error)
    assert entry.site == "hospital_b" and entry.reason == "RuntimeError: GPU fell off the bus"
    assert "Traceback (most recent call last)" in entry.error  # the traceback stays in the audit
    assert "Traceback" not in "\n".join(lines)
    assert any(re.fullmatch(r"\[classifier\] round 0: hospital_b failed after \d+\.\d s: RuntimeError: GPU fell off "
                            r"the bus", line) for line in lines)


def test_a_deployed_client_app_error_reads_as_type_and_message(tmp_path):
    run, _ = run_with("deployed-raise", tmp_path)
    assert re.fullmatch(r"DataError: records.csv line 7: bad " + TIME, dropped(run)["hospital_b"])


def test_a_lost_node_is_the_site_it_served_never_a_phantom(tmp_path):
    run, lines = run_with("heartbeat", tmp_path)
    assert list(dropped(run)) == ["hospital_b"]  # not "node-1" (the SuperLink's own id)
    assert re.fullmatch(r"node unavailable: the SuperNode stopped sending heartbeats \(it stopped, crashed or lost its "
                        r"connection\) " + TIME, dropped(run)["hospital_b"])
    assert run.rounds[-1]["sites"] == ["hospital_a", "hospital_c"]
    assert not any("node-1 " in line or "node-1:" in line for line in lines)


def test_a_silent_node_is_reported_with_the_timeout_and_the_time(tmp_path):
    run, _ = run_with("silent", tmp_path)
    assert re.fullmatch(r"no reply within 0.3 s \(federation timeout for classifier; gave up at "
                        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)", dropped(run)["hospital_b"])


def test_too_few_sites_names_the_site_and_its_cause(tmp_path):
    with pytest.raises(TooFewSitesError, match=r"failures: hospital_b: RuntimeError: GPU fell off the bus \("):
        run_with("raise", tmp_path, **{"federation.min-sites": 3})
