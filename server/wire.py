"""The schema of every reply a site may send: exact arrays, declared metrics, a small site record.

The server knows what each message type's reply must hold (``tardiff_common.protocol``), so
``MessageAudit.check`` refuses anything else, not only arrays of a record shape:

* **arrays**: exactly the records and names of the schema, each of a listed dtype and exactly
  the shape the server derives from the model and the config (packed weights: one flat vector
  per dtype of the index the server sent; moments [C] x 3; the value histogram [C, B]; G_k
  [P]). The shape and dtype are read from the array's *data*, not from the metadata the site
  wrote beside it. Any other record, name, dtype or shape is refused ([n·C·L], [n, C·L],
  [2n, C, L] alike).
* **metrics**: a metric list is allowed only under a declared name pattern with its declared
  length (``ListRule``); scalars only under the declared names or patterns (matched segment by
  segment: a generation reply may hold exactly ``generation_scalars``' names) and at most
  ``max_scalars`` of them (``privacy/*`` is always allowed: the DP ledger's summary, at most
  ``MAX_PRIVACY_SCALARS``, counted apart).
* **config**: only the ``site`` record, with its declared entries, short strings and no bytes.

Every reply's size is counted by ``reply_bytes``: the array data, every metric value (8 bytes)
and name, every config entry (its UTF-8 text or raw bytes) and name. A reply to a message type
without a schema (``None``: the SecAgg+ stages) is only checked for record-shaped arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from flwr.app import Message

from tardiff_common import protocol as P
from tardiff_common.data.contract import SPLIT_NAMES
from tardiff_common.metrics.histogram_auc import SCORE_BINS
from tardiff_common.pipeline.selection import scored_modes

__all__ = ["ArraySpec", "ListRule", "ReplySchema", "reply_schema", "schema_problems", "reply_bytes",
           "MAX_CONFIG_TEXT", "HISTOGRAM_BINS"]

MAX_CONFIG_TEXT = 256  # characters: the longest string a site record entry may hold (a site or channel name)
HISTOGRAM_BINS = 4096  # phase 0b's bins per channel (``normalize.histogram_edges_from_moments``' default)
REPORTED_SETS = ("real", "unguided", "unguided_2", "tardiff")  # the training sets phase 4 scores
PRIVACY_METRICS = "privacy/*"  # the DP ledger summary a site may add to any reply (scalars)
MAX_PRIVACY_SCALARS = 64  # its scalars, counted apart from a schema's own ``max_scalars``

# the scalar metrics of a generation reply (``pipeline.evaluation.evaluate_site``, flattened)
SCORES = ("auroc", "auprc", "minority_f1")  # metrics.classification.binary_scores
FIDELITY_KEYS = ("context_fid", "discriminative", "discriminative_accuracy", "predictive_mae")
MEMBERSHIP_KEYS = ("mia_auc", "mia_auprc", "mia_f1", "mia_accuracy", "mia_threshold", "dcr_members_median",
                   "dcr_members_p5", "dcr_nonmembers_median", "dcr_nonmembers_p5", "dcr_ratio")


@dataclass(frozen=True)
class ArraySpec:
    """One expected array: its shape and the dtypes it may have."""

    shape: tuple[int, ...]
    dtypes: tuple[str, ...] = ("float32", "float64")


@dataclass(frozen=True)
class ListRule:
    """Metric lists whose flat name matches ``pattern`` (fnmatch) must have ``length`` values."""

    pattern: str
    length: int


@dataclass(frozen=True)
class ReplySchema:
    """What one message type's reply may hold (record key -> contents)."""

    message_type: str
    arrays: dict[str, dict[str, ArraySpec]] = field(default_factory=dict)
    scalars: tuple[str, ...] = ()  # fnmatch patterns of allowed scalar metric names (under P.METRICS)
    lists: tuple[ListRule, ...] = ()
    max_scalars: int = 64
    site_entries: frozenset[str] = frozenset({"name", "index"})  # entries of the P.SITE config record


def reply_schema(message_type: str, *, channels: int | None, config=None,
                 expected_arrays: dict[str, dict[str, tuple[int, ...]]] | None = None,
                 tuning_rows: int = 0) -> ReplySchema | None:
    """The schema of a reply to ``message_type``.

    ``channels``: C of the run's data (``None`` before phase 0 registered the sites; the stats
    reply is then checked against the C it declares itself); ``config``: the ``RunConfig``
    (evaluation and tuning seeds); ``expected_arrays``: {record key: {name: shape}} of the
    parameters the server sent (packed weights, G_k); ``tuning_rows``: candidates + null of 3b.
    Returns ``None`` for a message type without a schema (SecAgg+).
    """
    arrays = {key: {name: _parameter_spec(name, shape) for name, shape in names.items()}
              for key, names in (expected_arrays or {}).items()}
    if message_type == P.STATS:
        c = channels if channels is not None else -1  # -1: the C the reply declares
        return ReplySchema(message_type, arrays={P.MOMENTS: {k: ArraySpec((c,), ("float64",)) for k in P.MOMENT_KEYS}},
                           scalars=(*SPLIT_NAMES, *(f"{s}-positives" for s in SPLIT_NAMES), "channels", "length"),
                           lists=(ListRule("missing-fraction", c),),
                           site_entries=frozenset({"name", "index", "channels"}))
    if message_type == P.HISTOGRAM:
        return ReplySchema(message_type, arrays={P.HIST: {P.HISTOGRAM_KEY: ArraySpec((int(channels), HISTOGRAM_BINS),
                                                                                    ("float64", "int64"))}},
                           scalars=("num-examples",))
    if message_type in (P.TRAIN_CLASSIFIER, P.TRAIN_DIFFUSION):
        return ReplySchema(message_type, arrays=arrays, scalars=("num-examples", "loss"))
    if message_type == P.INFLUENCE:
        return ReplySchema(message_type, arrays=arrays, scalars=(P.GRADIENT_COUNT_KEY,))
    if message_type == P.TUNE:
        counts = len(config.guidance.tuning_seeds) * 2 * SCORE_BINS
        return ReplySchema(message_type, scalars=("tuning/*/influence", "tuning/*/context_fid"),
                           lists=tuple(ListRule(f"tuning/*/{mode}", counts) for mode in scored_modes(config)),
                           max_scalars=2 * max(tuning_rows, 1))
    if message_type == P.GENERATE:
        seeds = len(config.evaluation.seeds)
        names = generation_scalars(config)
        return ReplySchema(message_type, scalars=names, max_scalars=len(names),
                           lists=(ListRule("*/values/*", seeds), ListRule("*histograms", seeds * 2 * SCORE_BINS)))
    return None


def generation_scalars(config) -> tuple[str, ...]:
    """Every scalar name a generation reply may hold (``evaluate_site``'s metrics, flattened):
    per evaluated set its TSTR / TSRTR summaries (mean, 95 % CI, number of runs) for each TSRTR
    ratio of the config, fidelity and membership scores, the mean influence; the global
    classifier's scores; the test and synthetic record counts; the gradient-boosting summary on the
    site's test split; and, for a site with an external cohort (node config ``external-path``), its
    counts and the same summaries on it. Nothing else."""
    ratios = [f"{r:g}" for r in config.evaluation.tsrtr_ratios]

    def summary(prefix: str) -> list[str]:  # metrics.summary.summarize_runs' scalars
        return [*(f"{prefix}/{m}" for m in SCORES), *(f"{prefix}/ci95/{m}" for m in SCORES), f"{prefix}/runs"]

    names = ["test_size", "synthetic-records", "influence/real_train", *(f"global_classifier/{m}" for m in SCORES),
             *summary("baselines/gbm/site"), "external/cohort/records", "external/cohort/positives",
             *summary("external/gbm")]
    for s in REPORTED_SETS:
        for prefix in (f"tstr/{s}", *(f"tsrtr/{s}/{r}" for r in ratios)):
            names += summary(prefix) + summary(f"external/{prefix}")
        names += [f"influence/{s}", *(f"fidelity/{s}/{k}" for k in (*FIDELITY_KEYS, *MEMBERSHIP_KEYS)),
                  *(f"membership/{s}/{k}" for k in MEMBERSHIP_KEYS)]
    return tuple(names)


def _scalar_allowed(name: str, pattern: str) -> bool:
    """``pattern`` matched segment by segment ("/"): a "*" never spans a "/"."""
    parts, want = name.split("/"), pattern.split("/")
    return len(parts) == len(want) and all(fnmatchcase(a, b) for a, b in zip(parts, want))


def _parameter_spec(name: str, shape: tuple[int, ...]) -> ArraySpec:
    """A parameter the server sent: a packed vector keeps its dtype ("packed.<dtype>")."""
    if name.startswith(P.PACKED):
        return ArraySpec(tuple(shape), (name[len(P.PACKED):],))
    return ArraySpec(tuple(shape))


def schema_problems(schema: ReplySchema, reply: Message) -> list[str]:
    """Everything in ``reply`` (an ok reply) that ``schema`` does not allow; [] if it conforms."""
    content = reply.content
    problems: list[str] = []
    declared_c = _declared_channels(content) if schema.message_type == P.STATS else None
    for key in sorted(set(content.array_records) - set(schema.arrays)):
        problems.append(f"unexpected array record {key!r}")
    for key, names in schema.arrays.items():
        if key not in content.array_records:
            problems.append(f"array record {key!r} is missing")
            continue
        record = content.array_records[key]
        for name in sorted(set(record.keys()) ^ set(names)):
            problems.append(f"{key}/{name} is {'not expected' if name in record else 'missing'}")
        for name, spec in names.items():
            if name not in record:
                continue
            value = record[name].numpy()  # the data's own shape and dtype, not the metadata beside it
            shape = tuple(declared_c if d == -1 else d for d in spec.shape)
            if tuple(value.shape) != shape or value.dtype.name not in spec.dtypes:
                problems.append(f"{key}/{name} is {value.dtype.name} {tuple(value.shape)}, expected "
                                f"{'/'.join(spec.dtypes)} {shape}")
    for key in sorted(set(content.metric_records) - {P.METRICS}):
        problems.append(f"unexpected metric record {key!r}")
    scalars = privacy = 0
    for name, value in (content.metric_records[P.METRICS].items() if P.METRICS in content.metric_records else []):
        if isinstance(value, list):
            rule = next((r for r in schema.lists if fnmatchcase(name, r.pattern)), None)
            want = None if rule is None else (declared_c if rule.length == -1 else rule.length)
            if rule is None:
                problems.append(f"metric {name!r} is a list of {len(value)} values; no list is declared under that name")
            elif len(value) != want:
                problems.append(f"metric {name!r} is a list of {len(value)} values, expected {want}")
        elif fnmatchcase(name, PRIVACY_METRICS):
            privacy += 1
        else:
            scalars += 1
            if not any(_scalar_allowed(name, p) for p in schema.scalars):
                problems.append(f"metric {name!r} is not expected")
    if scalars > schema.max_scalars:
        problems.append(f"{scalars} scalar metrics, at most {schema.max_scalars} expected")
    if privacy > MAX_PRIVACY_SCALARS:
        problems.append(f"{privacy} privacy metrics, at most {MAX_PRIVACY_SCALARS} expected")
    problems += _config_problems(schema, reply)
    return problems


def _declared_channels(content) -> int | None:
    site = content.config_records.get(P.SITE) if P.SITE in content.config_records else None
    channels = site.get("channels") if site is not None else None
    return len(channels) if isinstance(channels, list) else None


def _config_problems(schema: ReplySchema, reply: Message) -> list[str]:
    problems = []
    for key, record in reply.content.config_records.items():
        if key != P.SITE:
            problems.append(f"unexpected config record {key!r}")
            continue
        for name, value in record.items():
            if name not in schema.site_entries:
                problems.append(f"config {key}/{name} is not expected")
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, bytes):
                    problems.append(f"config {key}/{name} holds {len(item)} raw bytes")
                elif isinstance(item, str) and len(item) > MAX_CONFIG_TEXT:
                    problems.append(f"config {key}/{name} holds a {len(item)}-character string "
                                    f"(at most {MAX_CONFIG_TEXT})")
            if isinstance(value, list) and len(value) > MAX_CONFIG_TEXT:
                problems.append(f"config {key}/{name} is a list of {len(value)} values")
    return problems


def reply_bytes(reply: Message) -> int:
    """Bytes a reply carries: array data, 8 per metric value, config text / raw bytes, every name."""
    if reply.has_error():
        return len(str(reply.error.reason).encode())
    total = 0
    for key, record in reply.content.array_records.items():
        total += len(key.encode()) + sum(len(name.encode()) + len(array.data) for name, array in record.items())
    for key, record in reply.content.metric_records.items():
        total += len(key.encode())
        for name, value in record.items():
            total += len(name.encode()) + 8 * (len(value) if isinstance(value, list) else 1)
    for key, record in reply.content.config_records.items():
        total += len(key.encode())
        for name, value in record.items():
            total += len(name.encode()) + sum(_config_value_bytes(v) for v in (value if isinstance(value, list) else [value]))
    return total


def _config_value_bytes(value: object) -> int:
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, str):
        return len(value.encode())
    return 8  # int, float, bool
