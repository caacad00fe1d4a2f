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
query.tune             EMA U-Net, classifier, g, normalizer        per guidance candidate: counts of
                                                                   predicted tuning scores by label
query.generate         EMA U-Net, classifier, g, normalizer,       metrics only
                       the chosen guidance (form, scale)
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

Packed weights (fewer, bigger messages). In deployment every Array of a message is its own
object (own HTTP request) on the way through the SuperLink, so a model's ~100-300 tensors cost
~100-300 requests per message. Model weights and normalizers therefore travel *packed*: one
flat vector per dtype, ``"packed.<dtype>"`` (e.g. ``"packed.float32"``), and, in messages from
the server, the index ``"packed.index"`` (a uint8 array holding JSON ``[[name, dtype, shape,
offset], ...]``, offsets into the vector of that dtype) in the same ArrayRecord.
``from_array_record`` unpacks such a record transparently. A site answers a packed training
message with ``reply_record``: the vectors in the layout of the index it received and *no*
index, so Flower's FedAvg, which averages every array of the reply's single ArrayRecord key by
key, averages the flat vector element by element: bit for bit what it computes tensor by
tensor. The server unpacks the average with its own index (``unpack_record``). Integer
tensors (none in the current models) would travel in their own ``"packed.int64"`` vector,
come back averaged as floats and be rounded to their dtype on unpacking.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.app.error import Error
from flwr.common.constant import ErrorCode

# the U-Net + EMA weights travel joined ("model.<name>", "ema.<name>"), as in a checkpoint's "unet" group
from tardiff_common.checkpoint import DIFFUSION_EMA, DIFFUSION_MODEL, join_diffusion_arrays, split_diffusion_arrays
from tardiff_common.data.normalize import ChannelMoments
from tardiff_common.influence.gradient_sum import GradientSum
from tardiff_common.privacy.accounting import PrivacyLedger
from tardiff_common.serialization import flatten_metrics, unflatten_metrics

__all__ = [
    "STATS",
    "HISTOGRAM",
    "TRAIN_CLASSIFIER",
    "INFLUENCE",
    "TRAIN_DIFFUSION",
    "TUNE",
    "GENERATE",
    "encode_candidate_scores",
    "decode_candidate_scores",
    "to_array_record",
    "from_array_record",
    "PackIndex",
    "to_packed_record",
    "reply_record",
    "unpack_record",
    "spent_record",
    "spent_ops",
    "to_metric_record",
    "from_metric_record",
    "config_from_record",
    "load_ledger",
    "save_ledger",
    "refusal_reply",
    "DIFFUSION_MODEL",
    "DIFFUSION_EMA",
    "join_diffusion_arrays",
    "split_diffusion_arrays",
]

STATS = "query.stats"
HISTOGRAM = "query.histogram"
TRAIN_CLASSIFIER = "train.classifier"
INFLUENCE = "query.influence"
TRAIN_DIFFUSION = "train.diffusion"
TUNE = "query.tune"
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
PRIVACY_SPENT = "privacy.spent"  # server -> site: the DP operations dispatched to this site before
SITE_CONFIG_ERROR = "site configuration error"  # in a phase-0 error reply: the run stops (no retry, no dropping)
PACKED = "packed."  # ArrayRecord keys "packed.<dtype>": one flat vector per dtype
PACK_INDEX = "packed.index"  # ArrayRecord key of the index (uint8 JSON) in server -> site messages


def to_array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """{name: ndarray} -> ArrayRecord (order kept), one Array per entry."""
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> {name: ndarray}; a packed record with its index is unpacked."""
    if PACK_INDEX in record:
        return PackIndex.from_array(record[PACK_INDEX].numpy()).unpack(
            {k: a.numpy() for k, a in record.items() if k != PACK_INDEX})
    return {name: array.numpy() for name, array in record.items()}


# ----------------------------------------------------------------------------- packing


@dataclass(frozen=True)
class PackIndex:
    """Layout of packed arrays: (name, dtype, shape, offset into the flat vector of that dtype)."""

    entries: tuple[tuple[str, str, tuple[int, ...], int], ...]

    @classmethod
    def of(cls, arrays: dict[str, np.ndarray]) -> PackIndex:
        offsets: Counter = Counter()
        entries = []
        for name, value in arrays.items():
            value = np.asarray(value)
            dtype = value.dtype.name
            entries.append((str(name), dtype, tuple(int(d) for d in value.shape), offsets[dtype]))
            offsets[dtype] += int(value.size)
        return cls(tuple(entries))

    def sizes(self) -> dict[str, int]:
        """{dtype: length of its flat vector}."""
        sizes: dict[str, int] = {}
        for _, dtype, shape, offset in self.entries:
            sizes[dtype] = max(sizes.get(dtype, 0), offset + int(np.prod(shape, dtype=np.int64)))
        return sizes

    def expected(self) -> dict[str, tuple[int, ...]]:
        """{"packed.<dtype>": (length,)}: the arrays a packed reply must hold (for ``server.audit``)."""
        return {PACKED + dtype: (n,) for dtype, n in self.sizes().items()}

    @property
    def names(self) -> list[str]:
        return [e[0] for e in self.entries]

    def pack(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{name: ndarray} in this layout -> {"packed.<dtype>": flat vector}; names and shapes must match."""
        if set(arrays) != set(self.names) or len(arrays) != len(self.entries):
            diff = sorted(set(arrays) ^ set(self.names))
            raise ValueError(f"packed arrays: names do not match the index (differ: {diff[:3]})")
        vectors = {dtype: np.empty(n, dtype=dtype) for dtype, n in self.sizes().items()}
        for name, dtype, shape, offset in self.entries:
            value = np.asarray(arrays[name])
            if tuple(value.shape) != shape:
                raise ValueError(f"packed arrays: {name!r} has shape {value.shape}, the index says {shape}")
            vectors[dtype][offset:offset + value.size] = value.reshape(-1)
        return {PACKED + dtype: v for dtype, v in vectors.items()}

    def unpack(self, vectors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{"packed.<dtype>": flat vector} -> {name: ndarray} (integer tensors averaged as floats are rounded)."""
        sizes = self.sizes()
        if set(vectors) != {PACKED + d for d in sizes}:
            raise ValueError(f"packed record has {sorted(vectors)}, the index needs {sorted(PACKED + d for d in sizes)}")
        for dtype, n in sizes.items():
            if np.asarray(vectors[PACKED + dtype]).shape != (n,):
                raise ValueError(f"packed vector {PACKED + dtype} has shape {np.shape(vectors[PACKED + dtype])}, "
                                 f"the index needs ({n},)")
        out = {}
        for name, dtype, shape, offset in self.entries:
            flat = np.asarray(vectors[PACKED + dtype])
            part = flat[offset:offset + int(np.prod(shape, dtype=np.int64))].reshape(shape)
            if flat.dtype != np.dtype(dtype):
                part = np.rint(part) if np.issubdtype(np.dtype(dtype), np.integer) else part
                part = part.astype(dtype)
            out[name] = part
        return out

    def to_array(self) -> np.ndarray:
        text = json.dumps([[n, d, list(s), o] for n, d, s, o in self.entries], separators=(",", ":"))
        return np.frombuffer(text.encode(), dtype=np.uint8).copy()

    @classmethod
    def from_array(cls, array: np.ndarray) -> PackIndex:
        rows = json.loads(np.asarray(array, dtype=np.uint8).tobytes().decode())
        return cls(tuple((str(n), str(d), tuple(int(x) for x in s), int(o)) for n, d, s, o in rows))


def to_packed_record(arrays: dict[str, np.ndarray], index: PackIndex | None = None) -> ArrayRecord:
    """{name: ndarray} -> ArrayRecord {"packed.<dtype>": vector, "packed.index": index} (server -> site)."""
    index = index or PackIndex.of(arrays)
    return to_array_record({**index.pack(arrays), PACK_INDEX: index.to_array()})


def reply_record(arrays: dict[str, np.ndarray], request: ArrayRecord) -> ArrayRecord:
    """A site's weights for its reply: packed in the layout of the ``request`` record (without
    the index) when the request was packed, else one Array per tensor."""
    if PACK_INDEX in request:
        return to_array_record(PackIndex.from_array(request[PACK_INDEX].numpy()).pack(arrays))
    return to_array_record(arrays)


def unpack_record(record: ArrayRecord, index: PackIndex) -> dict[str, np.ndarray]:
    """A packed reply (or FedAvg's average of packed replies) -> {name: ndarray} with the server's ``index``."""
    return index.unpack({k: a.numpy() for k, a in record.items() if k != PACK_INDEX})


# ----------------------------------------------------------------------------- DP operations spent


MOMENT_KEYS = ("count", "total", "total_sq")  # ArrayRecord keys of ChannelMoments, each [C]
GRADIENT_SUM_KEY = "sum"  # ArrayRecord key of G_k [P] in a query.influence reply
GRADIENT_COUNT_KEY = "count"  # MetricRecord key of n_k in the same reply
DIRECTION_KEY = "g"  # ArrayRecord key of g = G / ||G|| [P]
HISTOGRAM_KEY = "counts"  # ArrayRecord key of a site's value counts [C, B]


def moments_record(moments: ChannelMoments) -> ArrayRecord:
    """Per-channel count, sum and sum of squares ([C] each) as one ArrayRecord."""
    return to_array_record(dict(zip(MOMENT_KEYS, moments.to_arrays(), strict=True)))


def moments_from_record(record: ArrayRecord) -> ChannelMoments:
    arrays = from_array_record(record)
    return ChannelMoments.from_arrays([arrays[k] for k in MOMENT_KEYS])


def histogram_record(counts: np.ndarray) -> ArrayRecord:
    return to_array_record({HISTOGRAM_KEY: counts})


def histogram_from_record(record: ArrayRecord) -> np.ndarray:
    return from_array_record(record)[HISTOGRAM_KEY]


def gradient_sum_content(g_sum: GradientSum) -> tuple[ArrayRecord, dict[str, int]]:
    """(ArrayRecord with G_k [P], the metrics entry with n_k) of a query.influence reply."""
    return to_array_record({GRADIENT_SUM_KEY: g_sum.to_numpy()}), {GRADIENT_COUNT_KEY: int(g_sum.count)}


def gradient_sum_from_content(content) -> GradientSum:
    """The GradientSum of a query.influence reply's RecordDict (float64 total)."""
    total = from_array_record(content[GRADIENT])[GRADIENT_SUM_KEY]
    return GradientSum(torch.as_tensor(np.asarray(total, dtype=np.float64)), int(content[METRICS][GRADIENT_COUNT_KEY]))


def direction_record(direction: np.ndarray) -> ArrayRecord:
    return to_array_record({DIRECTION_KEY: np.asarray(direction)})


def direction_from_record(record: ArrayRecord) -> np.ndarray:
    return from_array_record(record)[DIRECTION_KEY]


def spent_record(ops: list[str]) -> ConfigRecord:
    """The DP operations ("<phase>:<round>") the server dispatched to a site before this message."""
    return ConfigRecord({"ops": ",".join(ops)})


def spent_ops(text: object) -> list[str]:
    """"classifier:1,classifier:2,influence:0" -> ["classifier:1", ...] ("" -> [])."""
    return [op for op in str(text or "").split(",") if op]


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


# ----------------------------------------------------------------------------- guidance selection


def encode_candidate_scores(scores: dict[str, dict]) -> MetricRecord:
    """A site's ``score_candidates_at_site`` result -> MetricRecord: per tuning row i (in the
    run's ``tuning_rows`` order) "tuning/<i>/influence" and "tuning/<i>/<mode>" = the per-seed [2, bins]
    histograms flattened (seed-major): counts of predicted scores, never a record or a score."""
    flat: dict[str, object] = {}
    for i, row in enumerate(scores.values()):
        flat[f"tuning/{i}/influence"] = float(row["influence"])
        flat[f"tuning/{i}/context_fid"] = float(row["context_fid"])
        for mode in (m for m in ("tsrtr", "tstr") if m in row):  # under DP "tstr" only
            flat[f"tuning/{i}/{mode}"] = [int(v) for v in np.asarray(row[mode], dtype=np.int64).reshape(-1)]
    return MetricRecord(flat)


def decode_candidate_scores(record: MetricRecord, rows: list, seeds: int, bins: int,
                            modes: tuple[str, ...] = ("tsrtr",)) -> dict[str, dict]:
    """Inverse of ``encode_candidate_scores`` given the run's tuning rows (``selection.tuning_rows``:
    (label, candidate, draw)), seeds, bins and scored ``modes`` (``selection.scored_modes``); a row
    with no counts is one the site did not score (``selection.scored_rows``); raises ValueError when
    a histogram has the wrong size or a row carries a mode that was not asked for."""
    out = {}
    for i, (label, candidate, _) in enumerate(rows):
        row = {"form": candidate.form, "scale": candidate.scale, "influence": float(record[f"tuning/{i}/influence"]),
               "context_fid": float(record[f"tuning/{i}/context_fid"])}
        extra = [m for m in ("tsrtr", "tstr") if m not in modes and f"tuning/{i}/{m}" in record]
        if extra:
            raise ValueError(f"tuning reply: candidate {label} carries {extra[0]} counts, expected only {list(modes)}")
        for mode in modes:
            if f"tuning/{i}/{mode}" not in record:
                continue  # not scored at this site (the Context-FID gate)
            values = np.asarray(record[f"tuning/{i}/{mode}"], dtype=np.int64)
            if values.size != seeds * 2 * bins:
                raise ValueError(f"tuning reply: candidate {label} {mode} has {values.size} counts, "
                                 f"expected {seeds} x 2 x {bins}")
            row[mode] = values.reshape(seeds, 2, bins).tolist()
        out[label] = row
    return out
