"""The hospital's Flower ClientApp: one handler per phase step (see ``tardiff_common.protocol``).

Each handler turns the server's message into calls of ``tardiff_common.pipeline.phases`` on
this site's records and answers with parameters, sums, counts or metrics only. Synthetic
records stay on the site's disk.

Privacy (``privacy.*``, docs/PRIVACY.md): with DP on, phase 0 releases noised statistics
(``privacy.dp_statistics``), the influence handler a clipped and noised G_k, and the training
handlers run DP-SGD. The ledger policy (budget check *before* a step, recording, restoring a
ledger lost with the site's state from the DP operations the server lists in
``protocol.PRIVACY_SPENT``) is ``privacy.ledger_policy.SiteLedger``; the handlers here only load
it from and save it to ``context.state`` (``_site_ledger``). A refusal is an error reply naming
site, phase and the epsilon it would reach. Replies carry
the site's epsilon as metrics ("privacy/..."). Training replies are packed like the request
(``protocol.reply_record``: one flat vector, averaged element-wise by FedAvg). With
``privacy.secure-aggregation`` the influence step runs as the SecAgg+ "train" handler below.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from tardiff_common import protocol as P
from tardiff_common.data.normalize import Normalizer, histogram_edges_from_moments
from tardiff_common.diffusion.ema import EMA
from tardiff_common.influence.gradient_sum import GradientSum
from tardiff_common.influence.guidance import Candidate
from tardiff_common.metrics.pooling import strip_histograms
from tardiff_common.pipeline import phases
from tardiff_common.pipeline.benchmark import gbm_benchmark
from tardiff_common.pipeline.config_errors import ConfigError
from tardiff_common.pipeline.evaluation import evaluate_site
from tardiff_common.pipeline.external import EXTERNAL, site_external_result, transform_external
from tardiff_common.pipeline.selection import resolve_guidance, score_candidates_at_site
from tardiff_common.pipeline.validation import PLAN_REFUSED, site_plan_problems
from tardiff_common.privacy.accounting import PrivacyBudgetExceeded, PrivacyLedger
from tardiff_common.privacy.dp_scores import (
    EVALUATION_RELEASE,
    SELECTION_RELEASE,
    dp_evaluation_config,
    release_candidate_scores,
    release_site_metrics,
    score_entry,
    site_score_release,
)
from tardiff_common.privacy.dp_statistics import dp_histogram, dp_moments, statistics_generator
from tardiff_common.privacy.ledger_policy import SiteLedger
from tardiff_common.report.run_folder import write_npz_atomic
from tardiff_common.serialization import load_module_numpy, module_to_numpy, normalizer_from_numpy

from .site import Site, load_site, load_site_external

# Flower's logger has its own console handler; Opacus' import calls logging.basicConfig, which gives
# the root logger a second one, so every Flower line would be printed twice.
logging.getLogger("flwr").propagate = False

# torch.func's forward-mode decompositions still use torch.jit.script internally
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=DeprecationWarning)

app = ClientApp()


# ----------------------------------------------------------------------------- helpers


def _normalizer(msg: Message) -> Normalizer:
    """The global normalizer the server broadcast with ``msg``."""
    return normalizer_from_numpy(P.from_array_record(msg.content[P.NORMALIZER]))


def _on_model_scale(site: Site, normalizer: Normalizer) -> phases.NormalizedSplits:
    """The site's splits as the models see them: imputed (under DP from ``normalizer``) and normalized."""
    return phases.normalize_splits(phases.impute_after_phase0(site.splits, site.config, normalizer), normalizer)


def _normalized(site: Site, msg: Message) -> phases.NormalizedSplits:
    return _on_model_scale(site, _normalizer(msg))


def _classifier(site: Site, arrays: dict[str, np.ndarray]) -> torch.nn.Module:
    model = phases.new_classifier(site.config, site.splits.train.num_channels, site.device)
    load_module_numpy(model, arrays, what="classifier")
    return model


def _site_record(site: Site) -> ConfigRecord:
    return ConfigRecord({"name": site.name, "index": site.index})


def _reply(msg: Message, **records) -> Message:
    return Message(RecordDict(records), reply_to=msg)


# ----------------------------------------------------------------------------- privacy


@contextmanager
def _site_ledger(site: Site, context: Context, msg_spent: list[str] | None = None) -> Iterator[SiteLedger]:
    """The site's ledger policy (``tardiff_common.privacy.ledger_policy``) loaded from ``context.state``,
    restored from the operations the server dispatched before (``msg_spent``), saved back afterwards
    (also when a step is refused: a restored entry is never lost)."""
    plan = P.load_ledger(context, P.PRIVACY_PLAN).entries if P.PRIVACY_PLAN in context.state.config_records else None
    policy = SiteLedger(site.config, site.name, len(site.splits.train.y), P.load_ledger(context), plan)
    try:
        policy.restore(msg_spent or [])
        yield policy
    finally:
        P.save_ledger(context, policy.ledger)
        if policy.plan_entries is not None:
            P.save_ledger(context, PrivacyLedger(policy.plan_entries), P.PRIVACY_PLAN)


def _spent(msg: Message) -> list[str]:
    record = msg.content.config_records.get(P.PRIVACY_SPENT) if P.PRIVACY_SPENT in msg.content.config_records else None
    return P.spent_ops(record["ops"]) if record is not None else []


def _site_gradient_sum(site: Site, policy: SiteLedger, data: phases.NormalizedSplits,
                       model: torch.nn.Module) -> tuple[GradientSum, dict]:
    """G_k (DP-released when ``privacy.gradient-sum-dp``) and the metrics to send with it."""
    planned = policy.planned("influence")
    if planned is None:
        return phases.guidance_sum(model, data, site.config), {}
    g_sum, clipped = phases.dp_guidance_sum(model, data, site.config, noise_multiplier=planned.noise_multiplier,
                                            site_index=site.index)
    metrics = policy.record([planned], "influence")
    metrics["privacy"]["influence"]["clipped_fraction"] = clipped.clipped_fraction
    return g_sum, metrics


def _dp_session(site: Site, policy: SiteLedger, phase: str, server_round: int):
    """A DP-SGD session for this round of ``phase`` (None when DP-SGD is off for it); checks the budget."""
    planned = policy.planned(phase, f"{phase} round {server_round}")
    return phases.dp_session(site.config, planned, server_round=server_round, site_index=site.index) \
        if planned else None


def _refusals(handler):
    """Turn a ``PrivacyBudgetExceeded`` into an error reply carrying its message."""

    @functools.wraps(handler)
    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except PrivacyBudgetExceeded as err:
            return P.refusal_reply(msg, str(err))

    return wrapped


# ----------------------------------------------------------------------------- phase 0


@app.query("stats")
@_refusals
def stats(msg: Message, context: Context) -> Message:
    """Per-channel moments of the training split + record counts (for the audit and weights)."""
    site = load_site(context)
    try:  # the site's own external cohort (node config external-path) is checked before any training
        load_site_external(site)
    except ValueError as err:
        return P.refusal_reply(msg, f"{P.SITE_CONFIG_ERROR}: {err}")
    train = site.splits.train
    problems = site_plan_problems(site.config, site.name, len(train.y))
    if problems:  # before anything is released: a DP plan this site cannot honour with its own split sizes
        return P.refusal_reply(msg, f"{PLAN_REFUSED}: site {site.name!r}: {ConfigError(problems)}")
    summary = train.summary()
    missing = list(summary["missing_fraction"].values())
    privacy = {}
    with _site_ledger(site, context, _spent(msg)) as policy:
        planned = policy.planned("normalization", "normalization moments")
        if planned is None:
            moments = phases.local_moments(site.splits)
        else:  # noised record-weighted moments; the missing fraction is read off them (post-processing)
            moments = dp_moments(train.x, train.mask, noise_multiplier=planned.noise_multiplier,
                                 generator=statistics_generator(site.config.privacy.reproducible_noise,
                                                                site.config.seed, site.index, 1)).value
            missing = list(np.clip(1.0 - moments.count / max(len(train.y), 1), 0.0, 1.0))
            privacy = P.flatten_metrics(policy.record([planned], "normalization"))
    parts = site.splits.parts()
    counts = {
        **{name: len(part.y) for name, part in parts.items()},
        **{f"{name}-positives": int(part.y.sum()) for name, part in parts.items()},
        "channels": site.splits.train.num_channels,
        "length": site.splits.train.length,
    }
    return _reply(
        msg,
        **{
            P.MOMENTS: P.moments_record(moments),
            P.METRICS: MetricRecord({**counts, "missing-fraction": [float(m) for m in missing], **privacy}),
            P.SITE: ConfigRecord({"name": site.name, "index": site.index,
                                  "channels": list(site.splits.train.channels)}),
        },
    )


@app.query("histogram")
@_refusals
def histogram(msg: Message, context: Context) -> Message:
    """Counts of training values on the grid fixed by the global moments."""
    site = load_site(context)
    global_moments = P.moments_from_record(msg.content[P.MOMENTS])
    privacy = {}
    with _site_ledger(site, context, _spent(msg)) as policy:
        planned = policy.planned("normalization", "normalization histogram")
        if planned is None:
            hist = phases.local_histogram(site.splits, global_moments)
        else:  # coarse record-weighted counts, noised, spread over the fine grid
            train = site.splits.train
            hist = dp_histogram(train.x, train.mask, histogram_edges_from_moments(global_moments),
                                noise_multiplier=planned.noise_multiplier,
                                generator=statistics_generator(site.config.privacy.reproducible_noise,
                                                               site.config.seed, site.index, 2)).value
            privacy = P.flatten_metrics(policy.record([planned], "normalization"))
    return _reply(msg, **{P.HIST: P.histogram_record(hist.counts),
                          P.METRICS: MetricRecord({"num-examples": len(site.splits.train.y), **privacy}),
                          P.SITE: _site_record(site)})


# ----------------------------------------------------------------------------- phase 1


@app.train("classifier")
@_refusals
def train_classifier(msg: Message, context: Context) -> Message:
    """Local epochs of f_theta from the global weights (FedAvg / FedProx round; DP-SGD if enabled)."""
    site = load_site(context)
    data = _normalized(site, msg)
    config = P.config_from_record(msg.content[P.CONFIG])
    server_round = int(config["server-round"])
    model = _classifier(site, P.from_array_record(msg.content[P.ARRAYS]))
    with _site_ledger(site, context, _spent(msg)) as policy:
        session = _dp_session(site, policy, "classifier", server_round)
        stats = phases.classifier_round(model, data, site.config, server_round=server_round, site_index=site.index,
                                        pos_weight=float(config["pos-weight"]),
                                        **({"privacy": session} if session else {}))
        metrics = {"num-examples": len(data.train_y), "loss": stats["loss"]}
        if session:
            metrics.update(P.flatten_metrics(policy.record(session.entries, "classifier")))
    return _reply(msg, **{P.ARRAYS: P.reply_record(module_to_numpy(model), msg.content[P.ARRAYS]),
                          P.METRICS: MetricRecord(metrics),
                          P.SITE: _site_record(site)})


# ----------------------------------------------------------------------------- phase 2


@app.query("influence")
@_refusals
def influence(msg: Message, context: Context) -> Message:
    """G_k = sum of per-example loss gradients over the guidance split, and its count n_k
    (with ``privacy.gradient-sum-dp``: clipped per example and noised, see ``dp_gradient_sum``)."""
    site = load_site(context)
    data = _normalized(site, msg)
    model = _classifier(site, P.from_array_record(msg.content[P.CLASSIFIER]))
    with _site_ledger(site, context, _spent(msg)) as policy:
        g_sum, extra = _site_gradient_sum(site, policy, data, model)
    gradient, count = P.gradient_sum_content(g_sum)
    return _reply(msg, **{P.GRADIENT: gradient,
                          P.METRICS: MetricRecord({**count, **P.flatten_metrics(extra)}),
                          P.SITE: _site_record(site)})


@app.train(mods=[secaggplus_mod])
def secure_influence(msg: Message, context: Context) -> Message:
    """The influence step under SecAgg+ (``privacy.secure-aggregation``; see ``server.secagg``).

    Flower's ``secaggplus_mod`` runs the protocol's setup, key-sharing and unmasking stages and
    calls this handler only in the "collect masked vectors" stage, with a legacy FitIns: the
    classifier and normalizer arrays (names in the config) and a public ``scale``. The site
    answers with one vector s * [G_k, n_k] (weight 1); the mod quantizes and masks it and
    strips the plain vector from the reply, so the server only ever learns the sum over sites.
    A budget refusal raises, so the site counts as dropped out (SecAgg+ recovers the sum of the others).
    """
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    cfg = dict(fitins.config)
    arrays = parameters_to_ndarrays(fitins.parameters)
    cls_names = str(cfg["classifier-names"]).split(",")
    norm_names = str(cfg["normalizer-names"]).split(",")
    classifier = dict(zip(cls_names, arrays[: len(cls_names)], strict=True))
    normalizer = dict(zip(norm_names, arrays[len(cls_names):], strict=True))
    site = load_site(context)
    data = _on_model_scale(site, normalizer_from_numpy(normalizer))
    with _site_ledger(site, context, P.spent_ops(cfg.get(P.PRIVACY_SPENT, ""))) as policy:
        g_sum, extra = _site_gradient_sum(site, policy, data, _classifier(site, classifier))
    scale = float(cfg["scale"])
    vector = np.concatenate([g_sum.to_numpy() * scale, [g_sum.count * scale]])
    metrics = {k: float(v) for k, v in P.flatten_metrics(extra).items()}
    metrics["site-index"] = site.index
    fitres = FitRes(status=Status(code=Code.OK, message=""), parameters=ndarrays_to_parameters([vector]),
                    num_examples=1, metrics=metrics)
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)


# ----------------------------------------------------------------------------- phase 3


@app.train("diffusion")
@_refusals
def train_diffusion(msg: Message, context: Context) -> Message:
    """Local epochs of eps_phi from the global weights, carrying the global EMA along (DP-SGD if
    enabled; the EMA of DP weights is post-processing)."""
    site = load_site(context)
    data = _normalized(site, msg)
    config = P.config_from_record(msg.content[P.CONFIG])
    model_arrays, ema_arrays = P.split_diffusion_arrays(P.from_array_record(msg.content[P.ARRAYS]))
    unet = phases.unet_with_weights(site.config, data.in_channels, site.device, model_arrays)
    ema = EMA(unet, site.config.diffusion_train.ema_decay,
              shadow=phases.unet_with_weights(site.config, data.in_channels, site.device, ema_arrays, what="U-Net EMA"))
    server_round = int(config["server-round"])
    with _site_ledger(site, context, _spent(msg)) as policy:
        session = _dp_session(site, policy, "diffusion", server_round)
        stats = phases.diffusion_round(unet, ema, data, site.config, server_round=server_round,
                                       site_index=site.index, **({"privacy": session} if session else {}))
        metrics = {"num-examples": len(data.train_y), "loss": stats["loss"]}
        if session:
            metrics.update(P.flatten_metrics(policy.record(session.entries, "diffusion")))
    arrays = P.join_diffusion_arrays(module_to_numpy(unet), module_to_numpy(ema.shadow))
    return _reply(msg, **{P.ARRAYS: P.reply_record(arrays, msg.content[P.ARRAYS]),
                          P.METRICS: MetricRecord(metrics),
                          P.SITE: _site_record(site)})


# ----------------------------------------------------------------------------- phase 4


def _generator_models(site: Site, msg: Message, in_channels: int) -> phases.SamplingModels:
    """The EMA U-Net, theta* and g the server broadcast for phases 3b and 4."""
    unet = phases.unet_with_weights(site.config, in_channels, site.device, P.from_array_record(msg.content[P.ARRAYS]),
                                    what="U-Net EMA")
    classifier = _classifier(site, P.from_array_record(msg.content[P.CLASSIFIER]))
    direction = torch.as_tensor(P.direction_from_record(msg.content[P.DIRECTION]))
    return phases.SamplingModels(unet, classifier, direction)


@app.query("tune")
@_refusals
def tune(msg: Message, context: Context) -> Message:
    """Sample every guidance candidate, train evaluation classifiers on train + candidate (and
    candidate only), and return the counts of their predicted scores on the tuning split by label
    (with DP on: noised as one Gaussian release, ``privacy.dp_scores``)."""
    site = load_site(context)
    data = _normalized(site, msg)
    models = _generator_models(site, msg, data.in_channels)
    with _site_ledger(site, context, _spent(msg)) as policy:
        planned = policy.planned("selection", "selection")
        config = dp_evaluation_config(site.config) if planned else site.config
        scores = score_candidates_at_site(models, data, config, site_index=site.index)
        privacy = {}
        if planned:
            scores, k = release_candidate_scores(scores, site_score_release(site.config, planned.noise_multiplier, site.index, SELECTION_RELEASE))
            privacy = P.flatten_metrics(policy.record([score_entry("selection", planned.noise_multiplier, k)],
                                                      "selection"))
    record = P.encode_candidate_scores(scores)
    return _reply(msg, **{P.METRICS: MetricRecord({**dict(record.items()), **privacy}), P.SITE: _site_record(site)})


def _gbm_rows(site: Site, external) -> dict[str, dict]:
    """The gradient-boosting benchmark on the site's own splits (original units), scored on its test
    split ("site") and its external cohort; {} when its training split holds a single class."""
    tests = {"site": site.splits.test, **({EXTERNAL: external} if external is not None else {})}
    try:
        return gbm_benchmark(site.splits, tests, site.config.evaluation.seeds)
    except ValueError:
        return {}


@app.query("generate")
@_refusals
def generate(msg: Message, context: Context) -> Message:
    """Sample guided and unguided sets locally, keep them on this site's disk, return metrics
    (with DP on: only what ``privacy.dp_scores.release_site_metrics`` releases)."""
    site = load_site(context)
    config = P.config_from_record(msg.content[P.CONFIG])
    chosen = Candidate(str(config["guidance-form"]), float(config["guidance-scale"]))
    site = replace(site, config=resolve_guidance(site.config, chosen))
    normalizer = _normalizer(msg)
    data = _on_model_scale(site, normalizer)
    models = _generator_models(site, msg, data.in_channels)
    synthetic, influence_means = phases.generate_synthetic_sets(models, data, site.config, site_index=site.index)
    write_npz_atomic(
        site.output_dir(str(config["run-name"])) / "synthetic.npz",
        **{f"{name}_x": normalizer.inverse_transform(x) for name, (x, _) in synthetic.items()},
        **{f"{name}_y": y for name, (_, y) in synthetic.items()},
    )
    external = load_site_external(site)
    other_tests = None
    if external is not None:  # the site's medians (under DP: the normalizer's) and the global normalizer
        external, external_x = transform_external(external, site.splits.train, normalizer,
                                                  dp=site.config.privacy.any_dp)
        other_tests = {EXTERNAL: (external_x, external.y)}
    with _site_ledger(site, context, _spent(msg)) as policy:
        planned = policy.planned("evaluation", "evaluation")
        config = dp_evaluation_config(site.config) if planned else site.config
        metrics = evaluate_site(models.classifier, synthetic, data, config, site_index=site.index,
                                influence=influence_means, other_tests=other_tests)
        gbm = {} if planned else _gbm_rows(site, external)  # fitted on records: withheld under DP
        if planned:  # one release of every test split's counts (the external cohort's too)
            metrics, k = release_site_metrics(metrics, site_score_release(site.config, planned.noise_multiplier, site.index,
                                                                     EVALUATION_RELEASE))
            policy.record([score_entry("evaluation", planned.noise_multiplier, k)], "evaluation")
        metrics["baselines"] = {"gbm": {"site": gbm["site"]}} if gbm else {}
        if external is not None:
            by_test = strip_histograms(metrics.pop("other_tests"))
            metrics[EXTERNAL] = site_external_result(external, by_test[EXTERNAL], (gbm or {}).get(EXTERNAL))
        metrics["privacy"] = policy.summary()
    return _reply(msg, **{P.METRICS: P.to_metric_record(metrics), P.SITE: _site_record(site)})

