"""Resume, retries, deterministic aggregation order and packed weights (in-process, no Ray).

An interrupted run continued with ``output.resume = true`` must end exactly where an
uninterrupted run with the same seed ends: same global models, same metrics.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict
from flwr.app.error import Error
from flwr.serverapp.strategy import FedAvg

from client.app import app as client_app
from server.run import ServerRun, TooFewSitesError
from server.workflow import RunFinishedError, run_federated
from simulations.local_grid import CLIENT_APP_RAISED, LocalGrid
from tardiff_common import protocol as P
from tardiff_common.pipeline.config import RunConfig

from .conftest import run_local, tiny_flat

pytestmark = pytest.mark.slow


def load_state(run_dir) -> dict[str, np.ndarray]:
    with np.load(run_dir / "checkpoint" / "state.npz") as z:
        return {k: z[k] for k in z.files if not k.startswith("__")}


class StopAt(LocalGrid):
    """A grid whose ServerApp is stopped (as Flower stops it on SIGTERM) when it sends the
    ``nth`` message of ``message_type``."""

    def __init__(self, *args, message_type: str, nth: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.message_type, self.nth, self.seen = message_type, nth, 0

    def push_messages(self, messages):
        messages = list(messages)
        for m in messages:
            if m.metadata.message_type == self.message_type:
                self.seen += 1
                if self.seen == self.nth:
                    raise SystemExit(0)
        return super().push_messages(messages)


def _assert_same_run(a_dir, b_dir, a_metrics, b_metrics):
    a, b = load_state(a_dir), load_state(b_dir)
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert json.dumps(a_metrics["tstr"], sort_keys=True) == json.dumps(b_metrics["tstr"], sort_keys=True)
    for site in a_metrics["sites"]:
        same = json.dumps(a_metrics["sites"][site]["tstr"], sort_keys=True)  # NaN-safe comparison
        assert same == json.dumps(b_metrics["sites"][site]["tstr"], sort_keys=True), site


@pytest.mark.parametrize("message_type,nth", [
    (P.TRAIN_DIFFUSION, 4),  # stopped while sending diffusion round 2 (3 sites per round)
    (P.INFLUENCE, 1),  # stopped right after the classifier phase finished
])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, message_type, nth):
    straight, _, _ = run_local(tiny_flat(tmp_path, **{"output.name": "straight"}))

    flat = tiny_flat(tmp_path, **{"output.name": "resumed"})
    grid = StopAt(client_app, 3, flat, message_type=message_type, nth=nth)
    with pytest.raises(SystemExit):
        run_federated(grid, RunConfig().with_overrides(flat), log=lambda *_: None)
    run_dir = tmp_path / "resumed"
    failure = json.loads((run_dir / "checkpoint" / "failure.json").read_text())
    assert failure["kind"] == "stopped" and "output.resume" in failure["error"]
    assert not (run_dir / "metrics.json").exists()

    # a fresh Flower run: new node ids (in another order), fresh site state, same sites
    flat_resume = {**flat, "output.resume": True}
    fresh = LocalGrid(client_app, 3, flat_resume, first_node_id=5000,
                      node_configs=[{"partition-id": 2}, {"partition-id": 0}, {"partition-id": 1}])
    resumed = run_federated(fresh, RunConfig().with_overrides(flat_resume), log=lambda *_: None)

    _assert_same_run(tmp_path / "straight", run_dir, straight, resumed)
    assert len(resumed["resumes"]) == 1 and "SystemExit" in resumed["resumes"][0]["stopped_with"]
    assert (run_dir / "checkpoint" / "failure-1.json").is_file()
    assert resumed["participation"].pop("resume") == [["hospital_a", "hospital_b", "hospital_c"]]
    assert resumed["participation"] == straight["participation"]
    report = (run_dir / "report.md").read_text()
    assert "Resumed (1) after" in report
    # the audit carries on: the first grid's replies plus the second's, every one site-named
    audit = [json.loads(row) for row in (run_dir / "audit.jsonl").read_text().splitlines()]
    assert {row["site"] for row in audit} == {"hospital_a", "hospital_b", "hospital_c"}
    assert any(row["phase"] == "resume" for row in audit)


def test_resume_refuses_a_finished_run_and_a_changed_method(tmp_path):
    flat = tiny_flat(tmp_path)
    grid = StopAt(client_app, 3, flat, message_type=P.TRAIN_DIFFUSION, nth=1)
    with pytest.raises(SystemExit):
        run_federated(grid, RunConfig().with_overrides(flat), log=lambda *_: None)
    changed = {**flat, "output.resume": True, "guidance.scale": 7.0}
    with pytest.raises(ValueError, match="guidance.scale"):
        run_federated(LocalGrid(client_app, 3, changed), RunConfig().with_overrides(changed), log=lambda *_: None)
    same = {**flat, "output.resume": True, "federation.round-timeout-s": 60.0}  # operations may change
    run_federated(LocalGrid(client_app, 3, same), RunConfig().with_overrides(same), log=lambda *_: None)
    with pytest.raises(RunFinishedError, match="already finished"):
        run_federated(LocalGrid(client_app, 3, same), RunConfig().with_overrides(same), log=lambda *_: None)
    # without resume, the folder is refused rather than overwritten
    with pytest.raises(ValueError, match="output.resume=true"):
        run_local(flat)


def test_resume_refuses_a_site_whose_data_changed(tmp_path):
    flat = tiny_flat(tmp_path)
    grid = StopAt(client_app, 3, flat, message_type=P.TRAIN_CLASSIFIER, nth=4)
    with pytest.raises(SystemExit):
        run_federated(grid, RunConfig().with_overrides(flat), log=lambda *_: None)
    # "data.size-scale" is part of the method config, so change the site's data behind the
    # server's back instead: a node that now serves a smaller site under the same name
    again = {**flat, "output.resume": True}
    shrunk = LocalGrid(client_app, 3, again)
    list(shrunk.contexts.values())[2].run_config["data.size-scale"] = 0.06  # the third node's data shrank
    with pytest.raises(ValueError, match="data changed"):
        run_federated(shrunk, RunConfig().with_overrides(again), log=lambda *_: None)


def test_aggregation_does_not_depend_on_node_ids_or_reply_order(tmp_path):
    """Replies are aggregated in site-name order: which node serves which site is irrelevant."""
    a, _, _ = run_local(tiny_flat(tmp_path, **{"output.name": "a"}))
    b, _, _ = run_local(tiny_flat(tmp_path, **{"output.name": "b"}), first_node_id=77,
                        node_configs=[{"partition-id": 1}, {"partition-id": 2}, {"partition-id": 0}])
    _assert_same_run(tmp_path / "a", tmp_path / "b", a, b)


class FailOnce(LocalGrid):
    """The first ``train.classifier`` message to ``hospital_b``'s node comes back as an error."""

    failed = False

    def _deliver(self, msg):
        context = self.contexts[msg.metadata.dst_node_id]
        if (msg.metadata.message_type == P.TRAIN_CLASSIFIER and context.node_config["partition-id"] == 1
                and not self.failed):
            self.failed = True
            return Message(Error(code=CLIENT_APP_RAISED, reason="ConnectionError: site link went down"), reply_to=msg)
        return super()._deliver(msg)


def test_retry_recovers_a_transient_failure_and_drop_records_it(tmp_path):
    retry, _, _ = run_local(tiny_flat(tmp_path, **{"output.name": "retry", "federation.on-site-failure": "retry",
                                                   "federation.retry-wait-s": 1.0}), grid_class=FailOnce)
    first = retry["participation_rounds"][[r["phase"] for r in retry["participation_rounds"]].index("classifier")]
    assert first["retries"] == 1 and first["sites"] == ["hospital_a", "hospital_b", "hospital_c"]
    assert first["dropped"] == {}
    straight, _, _ = run_local(tiny_flat(tmp_path, **{"output.name": "straight"}))
    _assert_same_run(tmp_path / "retry", tmp_path / "straight", retry, straight)

    drop, _, _ = run_local(tiny_flat(tmp_path, **{"output.name": "drop"}), grid_class=FailOnce)
    assert drop["participation"]["classifier"][0] == ["hospital_a", "hospital_c"]
    assert drop["participation"]["classifier"][1] == ["hospital_a", "hospital_b", "hospital_c"]
    row = [r for r in drop["participation_rounds"] if r["phase"] == "classifier"][0]
    assert "site link went down" in row["dropped"]["hospital_b"]
    assert re.search(r"\| classifier \| 1 \| train.classifier \| hospital_a, hospital_c \| hospital_b: ConnectionError: "
                     r"site link went down \(\d+ s into the round, at [\d-]+ [\d:]+ UTC\) \| 0 \|",
                     (tmp_path / "drop" / "report.md").read_text())

    with pytest.raises(TooFewSitesError, match="hospital_b"):
        run_local(tiny_flat(tmp_path, **{"output.name": "strict", "federation.min-sites": 3}), grid_class=FailOnce)


# ----------------------------------------------------------------------------- packed weights


def _model_arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"conv.weight": rng.normal(size=(4, 3, 5)).astype(np.float32),
            "conv.bias": rng.normal(size=(4,)).astype(np.float32),
            "head.weight": rng.normal(size=(1, 4)).astype(np.float32),
            "steps": np.array(seed * 10, dtype=np.int64)}


def test_pack_index_round_trip_and_layout_checks():
    arrays = _model_arrays(0)
    index = P.PackIndex.of(arrays)
    record = P.to_packed_record(arrays)
    assert set(record) == {"packed.float32", "packed.int64", P.PACK_INDEX}
    back = P.from_array_record(record)
    assert list(back) == list(arrays)
    for k in arrays:
        assert back[k].dtype == arrays[k].dtype
        np.testing.assert_array_equal(back[k], arrays[k])
    assert P.PackIndex.from_array(index.to_array()) == index
    reply = P.reply_record(arrays, record)
    assert P.PACK_INDEX not in reply and set(reply) == {"packed.float32", "packed.int64"}
    with pytest.raises(ValueError, match="conv.bias"):
        index.pack({**arrays, "conv.bias": np.zeros(5, np.float32)})
    with pytest.raises(ValueError, match="names do not match"):
        index.pack({k: v for k, v in arrays.items() if k != "steps"})


def test_fedavg_of_packed_replies_equals_fedavg_tensor_by_tensor():
    """Flower's FedAvg on one flat vector per site is FedAvg on the tensors, bit for bit."""
    sites = [_model_arrays(s) for s in (1, 2, 3)]
    counts = [50, 7, 300]
    index = P.PackIndex.of(sites[0])
    request = P.to_packed_record(sites[0], index)

    def replies(records):
        out = []
        for i, (record, n) in enumerate(zip(records, counts)):
            content = {P.ARRAYS: record, P.METRICS: MetricRecord({"num-examples": n})}
            msg = Message(RecordDict(content), dst_node_id=i + 1, message_type=P.TRAIN_CLASSIFIER)
            out.append(Message(RecordDict(content), reply_to=msg))
        return out

    strategy = FedAvg()
    packed, _ = strategy.aggregate_train(1, replies([P.reply_record(s, request) for s in sites]))
    plain, _ = strategy.aggregate_train(1, replies([P.to_array_record(s) for s in sites]))
    unpacked = P.unpack_record(packed, index)
    for key, value in P.from_array_record(plain).items():
        if sites[0][key].dtype.kind == "f":
            np.testing.assert_array_equal(unpacked[key], value, err_msg=key)
        else:  # integers come back averaged as floats and rounded to their dtype
            assert unpacked[key].dtype == np.int64
            assert unpacked[key] == np.rint(sum(s[key] * n for s, n in zip(sites, counts)) / sum(counts))


def test_resumed_dp_run_counts_every_dispatched_dp_operation(tmp_path):
    """With DP, a resumed run's sites start with empty ledgers (fresh state). They count again
    every DP operation the server dispatched before the interruption, including the round that
    was in flight (the server cannot know whether the site computed and released it), so the
    reported epsilon never falls below what may have been released: here one diffusion round
    more than an uninterrupted run, and every reported total is Opacus' epsilon of the ledger."""
    from collections import Counter

    from tardiff_common.privacy.accounting import epsilon_of

    dp = {"privacy.gradient-sum-dp": True, "privacy.dp-sgd-classifier": True, "privacy.dp-sgd-diffusion": True,
          "privacy.reproducible-noise": True, "privacy.noise-multiplier": 2.0, "privacy.sgd-noise-multiplier": 1.0}
    straight, _, _ = run_local(tiny_flat(tmp_path, **dp, **{"output.name": "straight"}))

    flat = tiny_flat(tmp_path, **dp, **{"output.name": "resumed"})
    with pytest.raises(SystemExit):  # stopped while diffusion round 2 is being sent
        run_federated(StopAt(client_app, 3, flat, message_type=P.TRAIN_DIFFUSION, nth=4), RunConfig().with_overrides(flat),
                      log=lambda *_: None)
    assert (tmp_path / "resumed" / "checkpoint" / "privacy_dispatched.json").is_file()
    again = {**flat, "output.resume": True}
    fresh = LocalGrid(client_app, 3, again, first_node_id=9000)
    resumed = run_federated(fresh, RunConfig().with_overrides(again), log=lambda *_: None)

    def totals(metrics):
        return {r["site"]: r["epsilon"] for r in metrics["privacy"] if r["phase"] == "total"}

    delta = RunConfig().with_overrides(again).privacy.delta
    for context in fresh.contexts.values():
        ledger = P.load_ledger(context)
        assert Counter(e.phase for e in ledger.entries) == {"normalization": 2, "classifier": 2, "influence": 1,
                                                            "diffusion": 3, "selection": 1, "evaluation": 1}
        site = next(name for name, info in client_site_names(fresh).items() if info is context)
        assert totals(resumed)[site] == pytest.approx(epsilon_of(ledger.entries, delta), rel=1e-6)
        assert totals(resumed)[site] > totals(straight)[site]
    # the models and metrics are still those of the uninterrupted run
    _assert_same_run(tmp_path / "straight", tmp_path / "resumed", straight, resumed)


def client_site_names(grid: LocalGrid) -> dict:
    """{site name: its node's Context} of an in-process grid."""
    from client.site import load_site

    return {load_site(context).name: context for context in grid.contexts.values()}


def test_each_phase_waits_with_its_own_timeout(tmp_path, monkeypatch):
    timeouts = {}
    exchange = ServerRun._exchange

    def recording(self, messages, timeout):  # how long the server waits, per message type
        timeouts[messages[0].metadata.message_type] = timeout
        return exchange(self, messages, timeout)

    monkeypatch.setattr(ServerRun, "_exchange", recording)
    run_local(tiny_flat(tmp_path, **{"federation.round-timeout-s": 30.0, "federation.phase-timeouts": "generation=600"}))
    assert timeouts[P.GENERATE] == 600 and timeouts[P.TRAIN_DIFFUSION] == 30
    assert timeouts[P.TRAIN_CLASSIFIER] == 30 and timeouts[P.STATS] == 30
