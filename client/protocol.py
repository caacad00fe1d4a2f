"""The wire protocol between the TarDiff ServerApp and its hospital ClientApps.

Message types (Flower "category.action"), one per phase step:

=====================  ==========================================  ================================
message type           server -> site                              site -> server
=====================  ==========================================  ================================
query.stats            run config                                  channel moments [C] x 3, counts
query.histogram        global moments                              value counts per bin [C, B]
train.classifier       classifier weights, round, pos-weight       weights, num-examples, loss
query.influence        classifier weights                          G_k [P], n_k  (optionally DP)
train.diffusion        U-Net weights + EMA weights, round          both, num-examples, loss
query.generate         EMA U-Net, classifier, g, normalizer        metrics only
=====================  ==========================================  ================================

Record keys inside a message's RecordDict are the constants below. Everything a site sends is
parameters, sums, counts or metrics: never an array with a record dimension (``server.audit``
checks every reply).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

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
]

STATS = "query.stats"
HISTOGRAM = "query.histogram"
TRAIN_CLASSIFIER = "train.classifier"
INFLUENCE = "query.influence"
TRAIN_DIFFUSION = "train.diffusion"
GENERATE = "query.generate"

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
