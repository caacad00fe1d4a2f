"""One typed configuration for a whole TarDiff run, centralized or federated.

``RunConfig`` nests the method's own config dataclasses (classifier, U-Net, training,
sampling, guidance) plus the run-level sections below. It maps one-to-one onto flat keys

    "<section>.<field-with-hyphens>" = value        e.g.  "guidance.scale" = 100.0

which is exactly how Flower flattens a ``[tool.flwr.app.config]`` table with sub-tables, and
how ``tardiff centralized --set guidance.scale=50`` overrides a value. Tuples are written as
comma-separated strings ("1,2,4,4") and ``None`` as "none" (Flower config values are scalars).
Every key is checked when it is read: unknown keys (with close matches), unreadable values and
the rules of ``pipeline.validation`` raise one ``ConfigError`` (a ``ValueError``) that lists
each problem with its key, so a typo or an impossible setting fails before any work starts.
``--set`` values are typed by TOML's rules first (``pipeline.overrides``). The defaults live
here only: each section's are its dataclass's own, and pyproject's table is generated from
them (``pipeline.app_config``, ``scripts/sync_app_config.py``).

Presets: ``tiny`` (seconds, for tests), ``default`` (a few CPU minutes), ``paper`` (the public
code's U-Net and GRU classifier and the paper's step counts; the paper's s = 100 is one of its
guidance candidates, chosen only if it wins on the tuning split), ``paper-small`` (``paper``
with a lighter U-Net).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

import numpy as np

from ..diffusion.sampling import SamplingConfig
from ..influence.guidance import GuidanceConfig
from ..models.classifier import ClassifierConfig
from ..models.unet1d import UNet1DConfig
from ..privacy.config import PrivacyConfig
from ..training.classifier import ClassifierTrainConfig
from ..training.diffusion import DiffusionTrainConfig
from .config_errors import ConfigError, Problem, raise_if_any
from .phase_list import TIMEOUT_PHASES

__all__ = [
    "DataConfig",
    "DiffusionConfig",
    "GenerationConfig",
    "EvaluationConfig",
    "FederationConfig",
    "OutputConfig",
    "PrivacyConfig",
    "RunConfig",
    "preset",
    "PRESETS",
    "derive_seed",
    "ConfigError",
]


@dataclass(frozen=True)
class DataConfig:
    """Where records come from. ``source="synthetic"`` is the embedded generator."""

    source: str = "synthetic"
    path: str = ""
    task: str = "mortality"
    site_by: str = "default"
    num_hospitals: int = 3
    length: int = 0  # time steps; 0 = the source's own (synthetic/physionet2012 48, eicu 288, eicu_yaib/mimic3 24)
    channels: str = ""  # comma-separated variables of the source ("" = its default set), e.g. "HR,GCS,Lactate"
    hold_out: str = ""  # comma-separated site names left out of training (e.g. an eICU region), for external validation
    size_scale: float = 1.0
    data_seed: int = 0
    split_seed: int = 0
    split_fractions: tuple[float, ...] = (0.7, 0.1, 0.1, 0.1)  # train, guidance, tuning, test
    normalizer: str = "pit"
    min_site_records: int = 20
    small_sites: str = "drop"  # sites below min_site_records: "drop" them or "pool" them into one site "other"


@dataclass(frozen=True)
class DiffusionConfig:
    schedule: str = "sqrt_linear"
    num_steps: int = 200


@dataclass(frozen=True)
class GenerationConfig:
    """How many synthetic records (``ratio`` x real training size) and with which labels:
    "balanced" (half positive) or "prevalence" (the real training prevalence)."""

    ratio: float = 1.0
    label_mode: str = "balanced"
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.label_mode not in ("balanced", "prevalence"):
            raise ValueError(f"generation.label-mode must be 'balanced' or 'prevalence', got {self.label_mode!r}")
        if self.ratio <= 0:
            raise ValueError(f"generation.ratio must be > 0, got {self.ratio}")


@dataclass(frozen=True)
class EvaluationConfig:
    """Downstream model trained for TSTR / TSRTR (fresh per seed), evaluated on the real test split;
    ``fidelity`` picks the fidelity metrics' settings ("default", "tiny" for tests, "off").
    ``patience`` > 0: training stops once that many epochs in a row have not lowered the loss on
    the tuning split and keeps the best epoch (``epochs`` is then the maximum); 0 = fixed epochs."""

    classifier: str = "cnn"
    hidden: int = 32
    num_layers: int = 3
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    seeds: tuple[int, ...] = (0, 1, 2)
    tsrtr_ratios: tuple[float, ...] = (0.5, 1.0)
    fidelity: str = "default"
    patience: int = 3
    external_path: str = ""  # folder of a second cohort of data.source, scored into the "external" section

    def __post_init__(self) -> None:
        if self.fidelity not in ("off", "tiny", "default"):
            raise ValueError(f"evaluation.fidelity must be 'off', 'tiny' or 'default', got {self.fidelity!r}")
        if self.patience < 0:
            raise ValueError(f"evaluation.patience must be >= 0, got {self.patience}")

    def classifier_config(self) -> ClassifierConfig:
        return ClassifierConfig(kind=self.classifier, hidden=self.hidden, num_layers=self.num_layers,
                                bidirectional=True)

    def train_config(self) -> ClassifierTrainConfig:
        return ClassifierTrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)


@dataclass(frozen=True)
class FederationConfig:
    """Round structure. The centralized pipeline follows the same schedule (rounds of local
    epochs with a fresh optimizer each round), so one-site FedAvg equals it exactly.

    Fault tolerance (federated runs, docs/DEPLOY.md): a round waits ``round-timeout-s`` for the
    sites' replies (per phase overridable: ``phase-timeouts = "generation=3600,diffusion=1800"``,
    seconds; see ``timeout_for``); a site that fails (error reply, or no reply in time) is dropped from that
    round (``on-site-failure = "drop"``) or first sent the round's message again, up to
    ``max-retries`` times, once it is connected again (waiting up to ``retry-wait-s``;
    ``"retry"``). A round with fewer than ``min-sites`` replies stops the run."""

    classifier_rounds: int = 3
    diffusion_rounds: int = 6
    strategy: str = "fedavg"
    proximal_mu: float = 0.0
    num_sites: int = 0
    min_sites: int = 1
    wait_for_sites_s: float = 120.0
    round_timeout_s: float = 900.0
    on_site_failure: str = "drop"
    max_retries: int = 1
    retry_wait_s: float = 120.0
    phase_timeouts: str = ""

    def __post_init__(self) -> None:
        self.phase_timeout_map()  # validates
        if self.strategy not in ("fedavg", "fedprox"):
            raise ValueError(f"federation.strategy must be 'fedavg' or 'fedprox', got {self.strategy!r}")
        if self.strategy == "fedprox" and self.proximal_mu <= 0:
            raise ValueError("federation.strategy 'fedprox' needs federation.proximal-mu > 0")
        if self.on_site_failure not in ("drop", "retry"):
            raise ValueError(f"federation.on-site-failure must be 'drop' or 'retry', got {self.on_site_failure!r}")
        if self.max_retries < 0:
            raise ValueError(f"federation.max-retries must be >= 0, got {self.max_retries}")
        if self.round_timeout_s <= 0 or self.retry_wait_s < 0:
            raise ValueError("federation.round-timeout-s must be > 0 and federation.retry-wait-s >= 0")

    def phase_timeout_map(self) -> dict[str, float]:
        """``phase-timeouts`` as {phase: seconds}; "" -> {}."""
        out: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in self.phase_timeouts.split(","))):
            phase, sep, value = item.partition("=")
            phase = phase.strip()
            if not sep or phase not in TIMEOUT_PHASES:
                raise ValueError(f"federation.phase-timeouts: {item!r} is not <phase>=<seconds> with a phase "
                                 f"in {list(TIMEOUT_PHASES)}")
            try:
                seconds = float(value)
            except ValueError:
                seconds = -1.0
            if not seconds > 0:
                raise ValueError(f"federation.phase-timeouts: {item!r} needs a number of seconds > 0")
            out[phase] = seconds
        return out

    def timeout_for(self, phase: str) -> float:
        """Seconds one round of ``phase`` waits for replies: its ``phase-timeouts`` entry, else ``round-timeout-s``."""
        return self.phase_timeout_map().get(phase, self.round_timeout_s)


@dataclass(frozen=True)
class OutputConfig:
    """Where runs are written: ``<dir>/<name>`` (``name`` empty = a timestamp). ``baseline``:
    a centralized run folder (relative to the run folder) the federated report compares with.
    ``resume`` (federated runs): continue the interrupted run in ``<dir>/<name>`` from its last
    checkpoint instead of refusing a folder that holds one (docs/DEPLOY.md, "Resume").
    ``baseline_wait``: seconds the federated report waits for the baseline's metrics.json to
    appear (the main job runs both halves at once; 0 = do not wait)."""

    dir: str = "runs"
    name: str = ""
    baseline: str = "centralized"
    resume: bool = False
    baseline_wait: float = 0.0


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    device: str = "auto"
    threads: int = 1  # torch CPU threads of this process (each site's, in a federation)
    output: OutputConfig = field(default_factory=OutputConfig)
    data: DataConfig = field(default_factory=DataConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    classifier_train: ClassifierTrainConfig = field(default_factory=ClassifierTrainConfig)
    unet: UNet1DConfig = field(default_factory=UNet1DConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    diffusion_train: DiffusionTrainConfig = field(default_factory=DiffusionTrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)  # DP and secure aggregation, all off

    # ------------------------------------------------------------------ flat key mapping

    def to_flat(self) -> dict[str, object]:
        """{"section.field-name": scalar} for every leaf (tuples joined by commas, None -> "none")."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                for sub in fields(value):
                    out[f"{_key(f.name)}.{_key(sub.name)}"] = _encode(getattr(value, sub.name))
            else:
                out[_key(f.name)] = _encode(value)
        return out

    def with_overrides(self, flat: Mapping[str, object], *, validate: bool = True) -> RunConfig:
        """A copy with flat keys applied and (``validate``) checked by
        ``pipeline.validation.validate_config``. Raises ``ConfigError`` listing every unknown key
        (with close matches), unreadable value and refused section value, else every rule the
        result breaks; each problem names its key."""
        from .overrides import close_keys

        hints = _type_hints(RunConfig)
        by_key = {_key(f.name): f.name for f in fields(self)}
        problems: list[Problem] = []
        top: dict[str, object] = {}
        sections: dict[str, dict[str, object]] = {}
        for key, raw in flat.items():
            key = str(key)
            head, _, tail = key.partition(".")
            name = by_key.get(head)
            current = getattr(self, name) if name else None
            sub_fields = {_key(sf.name): sf.name for sf in fields(current)} if dataclasses.is_dataclass(current) else {}
            if name and not tail and sub_fields:
                problems.append(Problem(key, f"config key {key!r} names a section; use {key}.<field>"))
                continue
            if name is None or (tail and tail not in sub_fields):
                near = close_keys(key, self.to_flat())
                hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else ""
                problems.append(Problem(key, f"unknown config key {key!r}{hint}"))
                continue
            try:
                if not tail:
                    top[name] = _decode(raw, hints[name], key)
                else:
                    field_name = sub_fields[tail]
                    value = _decode(raw, _type_hints(type(current))[field_name], key)
                    sections.setdefault(name, {})[field_name] = value
            except ValueError as err:
                problems.append(Problem(key, str(err)))
        updates: dict[str, object] = dict(top)
        for name, changes in sections.items():
            section = getattr(self, name)
            try:
                updates[name] = replace(section, **changes)
            except (TypeError, ValueError) as err:  # the section's own checks: blame the keys that fail alone
                blamed = []
                for field_name, value in changes.items():
                    try:
                        replace(section, **{field_name: value})
                    except (TypeError, ValueError) as alone:
                        blamed.append(Problem(f"{_key(name)}.{_key(field_name)}", str(alone)))
                problems.extend(blamed or [Problem(_key(name), str(err))])
        result = replace(self, **updates)  # sections that failed above keep their current values
        if validate:
            from .validation import config_problems

            named = {p.key for p in problems}
            problems += [p for p in config_problems(result) if p.key not in named]
        raise_if_any(problems)
        return result

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@functools.cache
def _type_hints(cls: type) -> dict:
    """``typing.get_type_hints`` of a config class, once per class: every message of a federated
    run reads its run config, and resolving the hints per key took ~60 ms a message."""
    return typing.get_type_hints(cls)


def _key(name: str) -> str:
    return name.replace("_", "-")


def _encode(value: object) -> object:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return value


def _decode(raw: object, hint: object, key: str) -> object:
    """Convert a TOML / CLI scalar to the annotated type (int, float, bool, str, tuples, Optional)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if type(None) in args and isinstance(raw, str) and raw.strip().lower() in ("none", "null", ""):
            return None
        for option in inner[:-1]:  # e.g. float | str: the first type that reads the value
            try:
                return _decode(raw, option, key)
            except ValueError:
                pass
        return _decode(raw, inner[-1], key)
    try:
        if origin is tuple:
            items = raw if isinstance(raw, (list, tuple)) else [s for s in str(raw).split(",") if s.strip()]
            return tuple(_decode(item, args[0], key) for item in items)
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("true", "1", "yes"):
                return True
            if text in ("false", "0", "no"):
                return False
            raise ValueError(raw)
        if hint is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw)
        if hint is float:
            return float(raw)
        if hint is str:
            return str(raw)
    except (TypeError, ValueError):
        raise ValueError(f"cannot read {raw!r} as {getattr(hint, '__name__', hint)}") from None
    raise ValueError(f"unsupported type {hint} for config key {key!r}")


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from (run seed, phase, round, site, ...), stable across machines."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)


def _tiny() -> RunConfig:
    return RunConfig(
        data=DataConfig(length=16, size_scale=0.12),
        classifier=ClassifierConfig(kind="gru", hidden=8, num_layers=1),
        classifier_train=ClassifierTrainConfig(epochs=1, batch_size=32),
        unet=UNet1DConfig.tiny(),
        diffusion=DiffusionConfig(num_steps=20),
        diffusion_train=DiffusionTrainConfig(epochs=1, batch_size=32),
        sampling=SamplingConfig(num_inference_steps=4),
        guidance=GuidanceConfig(scale="auto", candidates="paper:10,x0:0.1"),
        evaluation=EvaluationConfig(hidden=8, num_layers=1, epochs=1, seeds=(0,), tsrtr_ratios=(1.0,), fidelity="tiny"),
        federation=FederationConfig(classifier_rounds=2, diffusion_rounds=2),
    )


def _paper() -> RunConfig:
    """The public code's U-Net (22.6 M parameters) and GRU classifier, the paper's step counts."""
    return RunConfig(
        data=DataConfig(length=288),
        classifier=ClassifierConfig.paper(),
        classifier_train=ClassifierTrainConfig(epochs=5),
        unet=UNet1DConfig.paper(),
        diffusion=DiffusionConfig(schedule="sqrt_linear", num_steps=200),
        diffusion_train=DiffusionTrainConfig(epochs=20, lr=1e-4, batch_size=64),
        sampling=SamplingConfig(num_inference_steps=50),
        guidance=GuidanceConfig(candidates="paper:30,paper:100,normalized:0.3,x0:0.05,x0:0.2,filter:0.25"),
        evaluation=EvaluationConfig(classifier="gru", hidden=256, num_layers=2, epochs=20, seeds=(0, 1, 2),
                                    tsrtr_ratios=(0.2, 0.4, 0.6, 0.8, 1.0)),
        federation=FederationConfig(classifier_rounds=4, diffusion_rounds=20),
    )


def _paper_small() -> RunConfig:
    """``paper`` with a lighter U-Net of the same depth (13.2 M parameters, ``UNet1DConfig.paper_small``)."""
    return replace(_paper(), unet=UNet1DConfig.paper_small())


PRESETS = {"tiny": _tiny, "default": RunConfig, "paper": _paper, "paper-small": _paper_small}


def preset(name: str) -> RunConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
