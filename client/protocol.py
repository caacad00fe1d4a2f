"""The wire protocol between the TarDiff ServerApp and its hospital ClientApps.

Message types (Flower "category.action"), one per phase step:

=====================  ==========================================  ================================
message type           server -> site                              site -> server
=====================  ==========================================  ================================
query.stats            run config                                  channel moments [C] x 3, counts
query.histogram        global moments                              value counts per bin [C, B]
train.classifier       classifier weights, round, pos-weight       weights, num-examples, loss
query.influence        classifier weights                          G_k [P], n_k  (optionally DP)
train                  SecAgg+ stages (flwr secaggplus_mod)        masked (G_k, n_k) / key shares
train.diffusion        U-Net weights + EMA weights, round          both, num-examples, loss
query.generate         EMA U-Net, classifier, g, normalizer        metrics only
=====================  ==========================================  ================================

``train`` (the default action) is used only with ``privacy.secure-aggregation``: Flower's
``SecAggPlusWorkflow`` drives it and ``secaggplus_mod`` on the client turns the site's
(G_k, n_k) into masked integer vectors (see ``server.secagg``).

A site's DP ledger (every Gaussian mechanism it ran: phase, sigma, q, steps, C) lives in its
``context.state`` as the ConfigRecord ``PRIVACY_LEDGER`` (column lists), so the accountant
history survives between messages even when each message starts a fresh ClientApp process.
A site that would exceed ``privacy.max-epsilon`` answers with an error whose reason starts
with "privacy budget exceeded" and names the site, the phase and the epsilon it would reach.

Record keys inside a message's RecordDict are the constants below. Everything a site sends is
parameters, sums, counts or metrics: never an array with a record dimension (``server.audit``
checks every reply).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.app.error import Error
from flwr.common.constant import ErrorCode

from tardiff_common.privacy.accounting import PrivacyLedger
from tardiff_common.serialization import flatten_metrics, unflatten_metrics

__all__ = [
    "STATS",
    "HISTOGRAM",
    "TRAIN_CLASSIFIER",
    "INFLUENCE",
    "TRAIN_DIFFUSION",
    "GENERATE",
    "to_array_record",
    "from_array_record",
    "to_metric_record",
    "from_metric_record",
    "config_from_record",
    "load_ledger",
    "save_ledger",
    "refusal_reply",
]

STATS = "query.stats"
HISTOGRAM = "query.histogram"
TRAIN_CLASSIFIER = "train.classifier"
INFLUENCE = "query.influence"
TRAIN_DIFFUSION = "train.diffusion"
GENERATE = "query.generate"
SECAGG = "train"  # the SecAgg+ stages (Flower's legacy "train" message type)

# record keys
ARRAYS = "arrays"  # the model being trained (FedAvg strategies expect this key)
EMA = "ema"  # EMA weights of the U-Net
CLASSIFIER = "classifier"
NORMALIZER = "normalizer"
MOMENTS = "moments"
HIST = "histogram"
GRADIENT = "gradient"
DIRECTION = "direction"
CONFIG = "config"  # FedAvg strategies put their ConfigRecord under this key
METRICS = "metrics"
SITE = "site"
PRIVACY_LEDGER = "privacy.ledger"  # context.state: the site's DP ledger
PRIVACY_PLAN = "privacy.plan"  # context.state: the site's solved DP schedule (cache)


def to_array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """{name: ndarray} -> ArrayRecord (order kept)."""
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def to_metric_record(nested: dict) -> MetricRecord:
    """Nested metrics -> flat MetricRecord with "a/b/c" keys (numbers and lists of numbers)."""
    return MetricRecord(flatten_metrics(nested))


def from_metric_record(record: MetricRecord) -> dict:
    return unflatten_metrics(dict(record.items()))


def config_from_record(record: ConfigRecord) -> dict[str, object]:
    return dict(record.items())


def load_ledger(context: Context, key: str = PRIVACY_LEDGER) -> PrivacyLedger:
    """The site's DP ledger from ``context.state`` (empty if none yet)."""
    record = context.state.config_records.get(key) if key in context.state.config_records else None
    return PrivacyLedger.from_lists(dict(record.items()) if record is not None else {})


def save_ledger(context: Context, ledger: PrivacyLedger, key: str = PRIVACY_LEDGER) -> None:
    """Store the ledger in ``context.state`` as a ConfigRecord of column lists."""
    context.state.config_records[key] = ConfigRecord(ledger.to_lists())


def refusal_reply(msg: Message, reason: str) -> Message:
    """An error reply (Flower's "ClientApp raised" code) with ``reason`` as given."""
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)
