"""The reply schemas (``server.wire``): crafted replies that carry records in any shape are
refused, declared ones pass, and every byte received is counted."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server.audit import MessageAudit, RecordShapedReplyError
from server.wire import HISTOGRAM_BINS, reply_bytes, reply_schema
from tardiff_common import protocol as P
from tardiff_common.metrics.histogram_auc import SCORE_BINS
from tardiff_common.pipeline.config import preset

N, C, L = 86, 3, 16  # the site's records and their layout
NUM_PARAMS = 641  # the classifier's parameters (G_k [P])
CONFIG = preset("tiny")


def reply(message_type: str, records: dict) -> Message:
    """A reply from node 7 to a ``message_type`` message carrying ``records``."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as in simulations.local_grid
    query = Message(RecordDict(), dst_node_id=7, message_type=message_type)
    return Message(RecordDict(records), reply_to=query)


def influence_reply(**extra) -> Message:
    records = {P.GRADIENT: P.to_array_record({P.GRADIENT_SUM_KEY: np.zeros(NUM_PARAMS, dtype=np.float32)}),
               P.METRICS: MetricRecord({P.GRADIENT_COUNT_KEY: N}),
               P.SITE: ConfigRecord({"name": "hospital_a", "index": 0})}
    for key, value in extra.items():
        records[key] = value
    return reply(P.INFLUENCE, records)


def check(message: Message):
    audit = MessageAudit()
    audit.register_site(7, "hospital_a", [60, 9, 8, 9, N], channels=C, length=L)
    schema = reply_schema(message.metadata.message_type, channels=C, config=CONFIG,
                          expected_arrays={P.GRADIENT: {P.GRADIENT_SUM_KEY: (NUM_PARAMS,)}}, tuning_rows=4)
    return audit.check("influence", 0, message, schema)


def test_a_conforming_reply_passes_and_every_byte_is_counted():
    message = influence_reply()
    entry = check(message)
    array = message.content[P.GRADIENT][P.GRADIENT_SUM_KEY]
    names = len("gradient") + len("sum") + len("metrics") + len("count") + len("site") + len("name") + len("index")
    assert entry.bytes == len(array.data) + 8 + len("hospital_a") + 8 + names


@pytest.mark.parametrize("shape", [(N * C * L,), (N, C * L), (2 * N, C, L), (N, C, L), (C, L, N)])
def test_an_extra_array_of_any_shape_is_refused(shape):
    arrays = {P.GRADIENT_SUM_KEY: np.zeros(NUM_PARAMS, dtype=np.float32), "leak": np.zeros(shape, dtype=np.float32)}
    with pytest.raises(RecordShapedReplyError, match=r"gradient/leak is not expected"):
        check(influence_reply(**{P.GRADIENT: P.to_array_record(arrays)}))


def test_an_extra_array_record_is_refused():
    leak = P.to_array_record({"x": np.zeros((N * C * L,), dtype=np.float32)})
    with pytest.raises(RecordShapedReplyError, match=r"unexpected array record 'leak'"):
        check(influence_reply(leak=leak))


def test_a_parameter_of_the_wrong_size_or_dtype_is_refused():
    for value, match in [(np.zeros(N * C * L, dtype=np.float32), r"expected float32/float64 \(641,\)"),
                         (np.zeros(NUM_PARAMS, dtype=np.int64), r"is int64 \(641,\)")]:
        with pytest.raises(RecordShapedReplyError, match=match):
            check(influence_reply(**{P.GRADIENT: P.to_array_record({P.GRADIENT_SUM_KEY: value})}))


def test_the_shape_is_read_from_the_data_not_the_metadata():
    message = influence_reply(**{P.GRADIENT: P.to_array_record({P.GRADIENT_SUM_KEY: np.zeros(N * C * L)})})
    array = message.content[P.GRADIENT][P.GRADIENT_SUM_KEY]
    array.shape = (NUM_PARAMS,)  # a site that lies about its array
    with pytest.raises(RecordShapedReplyError, match=r"\(4128,\), expected"):
        check(message)


def test_a_metric_list_of_record_values_is_refused():
    metrics = MetricRecord({P.GRADIENT_COUNT_KEY: N, "values": [0.0] * (N * C * L)})
    with pytest.raises(RecordShapedReplyError, match=r"'values' is a list of 4128 values; no list is declared"):
        check(influence_reply(**{P.METRICS: metrics}))


def test_a_bytes_blob_in_a_config_record_is_refused_and_counted():
    blob = bytes(16 * 1024)
    message = influence_reply(**{P.SITE: ConfigRecord({"name": "hospital_a", "index": 0, "note": blob})})
    assert reply_bytes(message) > 16 * 1024
    with pytest.raises(RecordShapedReplyError, match=r"config site/note is not expected; config site/note holds "
                                                     r"16384 raw bytes"):
        check(message)
    with pytest.raises(RecordShapedReplyError, match=r"unexpected config record 'extra'"):
        check(influence_reply(extra=ConfigRecord({"x": "y"})))


def test_declared_score_histograms_pass_even_when_their_length_equals_a_split_size():
    length = len(CONFIG.evaluation.seeds) * 2 * SCORE_BINS
    schema = reply_schema(P.GENERATE, channels=C, config=CONFIG)
    audit = MessageAudit()
    audit.register_site(7, "hospital_a", [length, 9, 8, 9, length + 26], channels=C, length=L)
    ok = reply(P.GENERATE, {P.METRICS: MetricRecord({"tstr/tardiff/histograms": [0] * length,
                                                     "tstr/tardiff/values/auroc": [0.5] * len(CONFIG.evaluation.seeds),
                                                     "tstr/tardiff/auroc": 0.5})})
    audit.check("generation", 0, ok, schema)
    bad = reply(P.GENERATE, {P.METRICS: MetricRecord({"tstr/tardiff/labels": [0] * length})})
    with pytest.raises(RecordShapedReplyError, match="no list is declared"):
        audit.check("generation", 0, bad, schema)


def test_the_histogram_reply_must_be_c_by_bins():
    schema = reply_schema(P.HISTOGRAM, channels=C, config=CONFIG)
    audit = MessageAudit()
    good = reply(P.HISTOGRAM, {P.HIST: P.histogram_record(np.zeros((C, HISTOGRAM_BINS))),
                               P.METRICS: MetricRecord({"num-examples": N})})
    audit.check("normalization", 0, good, schema)
    bad = reply(P.HISTOGRAM, {P.HIST: P.histogram_record(np.zeros((N, C * L))),
                              P.METRICS: MetricRecord({"num-examples": N})})
    with pytest.raises(RecordShapedReplyError, match=r"histogram/counts is float64 \(86, 48\), expected"):
        audit.check("normalization", 0, bad, schema)


def test_a_stats_reply_is_checked_against_the_channels_it_declares():
    schema = reply_schema(P.STATS, channels=None, config=CONFIG)
    moments = {k: np.zeros(C) for k in P.MOMENT_KEYS}
    site = ConfigRecord({"name": "hospital_a", "index": 0, "channels": ["hr", "map", "spo2"]})
    metrics = MetricRecord({"train": 60, "train-positives": 3, "length": L, "missing-fraction": [0.0] * C})
    MessageAudit().check("normalization", 0, reply(P.STATS, {P.MOMENTS: P.to_array_record(moments),
                                                             P.METRICS: metrics, P.SITE: site}), schema)
    moments["total"] = np.zeros(N * C)
    with pytest.raises(RecordShapedReplyError, match=r"moments/total is float64 \(258,\), expected float64 \(3,\)"):
        MessageAudit().check("normalization", 0, reply(P.STATS, {P.MOMENTS: P.to_array_record(moments),
                                                                 P.METRICS: metrics, P.SITE: site}), schema)


@pytest.mark.parametrize("name", ["leak", "tstr/tardiff/record_17", "tstr/tardiff/auroc/extra",
                                  "fidelity/tardiff/x", "tsrtr/tardiff/0.5/auroc", "membership/other/mia_auc"])
def test_a_generation_reply_holds_only_the_declared_scalar_names(name):
    """Declared names pass (one per evaluated set, score, TSRTR ratio of the config ...); any other
    scalar name is refused, also one under a declared prefix (the tiny config has ratio 1 only)."""
    schema = reply_schema(P.GENERATE, channels=C, config=CONFIG)
    audit = MessageAudit()
    audit.register_site(7, "hospital_a", [60, 9, 8, 9, N], channels=C, length=L)
    declared = {"tstr/tardiff/auroc": 0.5, "tsrtr/unguided/1/ci95/auprc": 0.1, "tstr/real/runs": 1,
                "fidelity/unguided_2/context_fid": 1.0, "membership/tardiff/dcr_ratio": 1.0,
                "influence/real_train": 0.0, "global_classifier/minority_f1": 0.2, "synthetic-records": 10,
                "test_size": 9, "privacy/influence/clipped_fraction": 0.0}
    audit.check("generation", 0, reply(P.GENERATE, {P.METRICS: MetricRecord(declared)}), schema)
    with pytest.raises(RecordShapedReplyError, match=f"metric '{name}' is not expected"):
        audit.check("generation", 0, reply(P.GENERATE, {P.METRICS: MetricRecord({**declared, name: 0.5})}), schema)
