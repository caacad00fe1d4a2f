"""Checks of a whole ``RunConfig`` when it is read, before any work starts.

``validate_config(config)`` runs every rule below and raises one ``ConfigError`` listing every
problem with its flat key; ``RunConfig.with_overrides`` calls it, so the CLI, the studies, the
ServerApp (before phase 0) and the ClientApp all check the same rules without asking:

* ranges: counts >= 1 (steps, epochs, rounds, batch sizes, threads, ...), rates > 0,
  fractions in their interval, seeds >= 0;
* names: sampler, noise schedule, classifiers, guidance selection metric, device;
* cross-field rules: DDIM's ``sampling.num-inference-steps`` <= ``diffusion.num-steps``;
  ``federation.min-sites`` <= ``federation.num-sites`` (when known);
  ``privacy.target-epsilon`` <= ``privacy.max-epsilon``; DP-SGD is not combined with FedProx;
  with any DP mechanism on, ``generation.label-mode`` must be "balanced" ("prevalence" would
  release the training split's exact positive rate through the synthetic sets);
* privacy plan: without DP-SGD every DP release (phase-0 statistics, gradient sum) is one
  Gaussian step with q = 1, so the site's plan (``privacy.plan.plan_site``) needs no data: its
  sigma is solved once with Opacus' accountant, and an unreachable target or a plan above
  ``privacy.max-epsilon`` is refused. DP-SGD's schedule depends on each site's training size;
  then only what holds at every size is checked here (the gradient-sum release alone must reach
  the target; with RDP, the target must lie above the accountant's floor, its epsilon as
  sigma -> infinity), and ``check_against_data`` solves the full plan per site.

``check_against_data(config, channels=..., train_sizes=...)`` (``check_sites`` for loaded
sites) adds the rules that need the loaded data: ``unet.in-channels`` equal to the data's
channel count or "auto", and a reachable target epsilon within the budget at every site's
training size (the site's full plan, ``privacy.plan.plan_site``).

``site_plan_problems(config, site, train_size)``: the same plan check for one federated site,
which runs it at the start of phase 0 with its own split size and refuses (``PLAN_REFUSED``)
before releasing anything; the server stops the run with that message.

``unsupported_options(config, mode)`` names the options a run mode cannot honour
(``refuse_unsupported`` raises them) so that nothing the run does not do is recorded as on.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping

import torch

from ..diffusion.samplers import SAMPLERS
from ..diffusion.schedule import SCHEDULES
from ..models.classifier import CLASSIFIERS
from .config import RunConfig
from .config_errors import Problem, raise_if_any

__all__ = [
    "validate_config",
    "config_problems",
    "check_against_data",
    "unsupported_options",
    "refuse_unsupported",
    "check_sites",
    "site_plan_problems",
    "PLAN_REFUSED",
    "RUN_MODES",
]

RUN_MODES = ("centralized", "federated")
PLAN_REFUSED = "privacy plan refused"  # starts a site's phase-0 refusal of a DP plan it cannot honour
SELECT_ON = ("tsrtr", "tstr")


# ----------------------------------------------------------------------------- rule helpers


def _at_least(key: str, value: float, low: float) -> Iterator[Problem]:
    if not value >= low:
        yield Problem(key, f"must be >= {low:g}, got {value!r}")


def _positive(key: str, value: float | None, *, optional: bool = False) -> Iterator[Problem]:
    if value is None and optional:
        return
    if value is None or not value > 0 or not math.isfinite(value):
        yield Problem(key, f"must be a finite number > 0{' (or none)' if optional else ''}, got {value!r}")


def _in_range(key: str, value: float, low: float, high: float, *, high_open: bool = False) -> Iterator[Problem]:
    inside = low <= value < high if high_open else low <= value <= high
    if not inside:
        yield Problem(key, f"must be in [{low:g}, {high:g}{')' if high_open else ']'}, got {value!r}")


def _one_of(key: str, value: str, choices: tuple[str, ...]) -> Iterator[Problem]:
    if value not in choices:
        yield Problem(key, f"must be one of {list(choices)}, got {value!r}")


# ----------------------------------------------------------------------------- rules per section


def _top(c: RunConfig) -> Iterator[Problem]:
    yield from _at_least("seed", c.seed, 0)
    yield from _at_least("threads", c.threads, 1)
    if c.device != "auto":
        try:
            torch.device(c.device)
        except (RuntimeError, ValueError):
            yield Problem("device", f"must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {c.device!r}")


def _data(c: RunConfig) -> Iterator[Problem]:
    yield from _at_least("output.baseline-wait", c.output.baseline_wait, 0)
    d = c.data
    yield from _at_least("data.num-hospitals", d.num_hospitals, 1)
    yield from _at_least("data.length", d.length, 0)  # 0 = the source's own length
    yield from _positive("data.size-scale", d.size_scale)
    yield from _at_least("data.data-seed", d.data_seed, 0)
    yield from _at_least("data.split-seed", d.split_seed, 0)
    yield from _at_least("data.min-site-records", d.min_site_records, 1)
    yield from _one_of("data.small-sites", d.small_sites, ("drop", "pool"))
    f = d.split_fractions
    if len(f) != 4 or any(not x > 0 for x in f) or abs(sum(f) - 1) > 1e-6:
        yield Problem("data.split-fractions", f"must be four numbers > 0 (train, guidance, tuning, test) summing "
                                              f"to 1, got {','.join(f'{x:g}' for x in f)}")


def _models(c: RunConfig) -> Iterator[Problem]:
    yield from _one_of("classifier.kind", c.classifier.kind, CLASSIFIERS)
    yield from _at_least("classifier.hidden", c.classifier.hidden, 1)
    yield from _at_least("classifier.num-layers", c.classifier.num_layers, 1)
    yield from _in_range("classifier.dropout", c.classifier.dropout, 0, 1, high_open=True)
    u = c.unet
    for name in ("dim", "num_res_blocks", "heads", "head_dim", "groups"):
        yield from _at_least(f"unet.{name.replace('_', '-')}", getattr(u, name), 1)
    if not u.dim_mults or any(m < 1 for m in u.dim_mults):
        yield Problem("unet.dim-mults", f"must be one or more integers >= 1, got {u.dim_mults}")
    yield from _at_least("unet.num-classes", u.num_classes, 2)
    yield from _in_range("unet.label-dropout", u.label_dropout, 0, 1, high_open=True)
    yield from _in_range("unet.dropout", u.dropout, 0, 1, high_open=True)
    e = c.evaluation
    yield from _one_of("evaluation.classifier", e.classifier, CLASSIFIERS)
    yield from _at_least("evaluation.hidden", e.hidden, 1)
    yield from _at_least("evaluation.num-layers", e.num_layers, 1)
    if not e.seeds or any(s < 0 for s in e.seeds):
        yield Problem("evaluation.seeds", f"must be one or more seeds >= 0, got {e.seeds}")
    if not e.tsrtr_ratios or any(not 0 < r <= 1 for r in e.tsrtr_ratios):
        yield Problem("evaluation.tsrtr-ratios", f"must be one or more fractions in (0, 1], got {e.tsrtr_ratios}")


def _training(c: RunConfig) -> Iterator[Problem]:
    for section, t in (("classifier-train", c.classifier_train), ("diffusion-train", c.diffusion_train),
                       ("evaluation", c.evaluation)):
        yield from _at_least(f"{section}.epochs", t.epochs, 1)
        yield from _at_least(f"{section}.batch-size", t.batch_size, 1)
        yield from _positive(f"{section}.lr", t.lr)
        if hasattr(t, "weight_decay"):
            yield from _at_least(f"{section}.weight-decay", t.weight_decay, 0)
        if hasattr(t, "grad_clip"):
            yield from _positive(f"{section}.grad-clip", t.grad_clip, optional=True)
    yield from _in_range("diffusion-train.ema-decay", c.diffusion_train.ema_decay, 0, 1, high_open=True)


def _diffusion(c: RunConfig) -> Iterator[Problem]:
    yield from _one_of("diffusion.schedule", c.diffusion.schedule, SCHEDULES)
    yield from _at_least("diffusion.num-steps", c.diffusion.num_steps, 1)
    s = c.sampling
    yield from _one_of("sampling.sampler", s.sampler, SAMPLERS)
    yield from _at_least("sampling.num-inference-steps", s.num_inference_steps, 1)
    if s.sampler == "ddim" and c.diffusion.num_steps >= 1 and s.num_inference_steps > c.diffusion.num_steps:
        yield Problem("sampling.num-inference-steps",
                      f"DDIM takes at most diffusion.num-steps = {c.diffusion.num_steps} steps, "
                      f"got {s.num_inference_steps}")
    yield from _at_least("sampling.eta", s.eta, 0)
    yield from _positive("sampling.clip-x0", s.clip_x0, optional=True)
    yield from _at_least("sampling.cfg-scale", s.cfg_scale, 0)
    yield from _at_least("sampling.batch-size", s.batch_size, 1)


def _guidance(c: RunConfig) -> Iterator[Problem]:
    g = c.guidance
    yield from _positive("guidance.fd-eps", g.fd_eps)
    yield from _positive("guidance.tuning-ratio", g.tuning_ratio)
    yield from _at_least("guidance.fid-pilot", g.fid_pilot, 0)
    if not g.tuning_seeds or any(s < 0 for s in g.tuning_seeds):
        yield Problem("guidance.tuning-seeds", f"must be one or more seeds >= 0, got {g.tuning_seeds}")
    yield from _one_of("guidance.select-on", g.select_on, SELECT_ON)
    yield from _at_least("guidance.tie-tolerance", g.tie_tolerance, 0)
    yield from _at_least("guidance.max-fid-ratio", g.max_fid_ratio, 0)
    yield from _at_least("generation.seed", c.generation.seed, 0)


def _federation(c: RunConfig) -> Iterator[Problem]:
    f = c.federation
    yield from _at_least("federation.classifier-rounds", f.classifier_rounds, 1)
    yield from _at_least("federation.diffusion-rounds", f.diffusion_rounds, 1)
    yield from _at_least("federation.proximal-mu", f.proximal_mu, 0)
    yield from _at_least("federation.num-sites", f.num_sites, 0)
    yield from _at_least("federation.min-sites", f.min_sites, 1)
    if f.num_sites > 0 and f.min_sites > f.num_sites:
        yield Problem("federation.min-sites", f"is {f.min_sites} but federation.num-sites is {f.num_sites}")
    yield from _at_least("federation.wait-for-sites-s", f.wait_for_sites_s, 0)


def _privacy(c: RunConfig) -> Iterator[Problem]:
    p = c.privacy
    if p.target_epsilon is not None and p.max_epsilon is not None and p.target_epsilon > p.max_epsilon:
        yield Problem("privacy.target-epsilon",
                      f"{p.target_epsilon:g} is above privacy.max-epsilon = {p.max_epsilon:g}: the planned run "
                      "would be refused by its own budget")
    if p.dp_sgd and c.federation.strategy == "fedprox":
        yield Problem("privacy.dp-sgd-classifier" if p.dp_sgd_classifier else "privacy.dp-sgd-diffusion",
                      "cannot be combined with federation.strategy = 'fedprox' (Opacus' per-sample gradients "
                      "do not include the proximal term)")
    if not p.any_dp:
        return
    if c.generation.label_mode == "prevalence":
        # The label mix would be the training split's exact positive rate, a non-DP statistic that
        # shapes every released synthetic-set score.
        yield Problem("generation.label-mode",
                      "'prevalence' reads the training split's exact positive rate, which no DP mechanism "
                      "covers; with differential privacy on use generation.label-mode = 'balanced'")
    if not p.dp_sgd:
        # Without DP-SGD every release (phase-0 statistics, gradient sum) is one Gaussian step on
        # the whole split, q = 1: the plan needs no data, so it is solved exactly, once.
        yield from _solvable(c, num_train=1)
        return
    if p.target_epsilon is None:
        return
    from ..privacy.accounting import MAX_SIGMA, Entry, epsilon_of, solve_noise_multiplier

    if p.gradient_sum_dp and p.noise_multiplier is None:
        # DP-SGD's schedule needs each site's size, but the gradient-sum release alone needs no
        # data and the composed run spends more: a target it cannot reach is out of reach at any size.
        try:
            with warnings.catch_warnings():  # Opacus' "optimal order is the largest alpha" while searching
                warnings.simplefilter("ignore", UserWarning)
                solve_noise_multiplier(p.target_epsilon, p.delta, [Entry("influence", 0.0, 1.0, 1, p.clip)],
                                       accountant=p.accountant)
        except ValueError as err:
            yield _unreachable(c, str(err))
    elif p.sgd_noise_multiplier is None and p.accountant == "rdp":
        # RDP -> (epsilon, delta) conversion has a floor: as sigma -> infinity every mechanism's
        # epsilon falls to the conversion term of the largest order alpha, whatever the data.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            floor = epsilon_of([Entry("floor", MAX_SIGMA, 1.0, 1, 1.0)], p.delta, "rdp")
        if p.target_epsilon <= floor:
            yield _unreachable(c, f"the RDP accountant's epsilon at delta = {p.delta:g} never falls below "
                                  f"{floor:.4g}, at any noise and training size")


RULES: tuple[Callable[[RunConfig], Iterator[Problem]], ...] = (
    _top, _data, _models, _training, _diffusion, _guidance, _federation, _privacy,
)


# ----------------------------------------------------------------------------- privacy plan


def _unreachable(c: RunConfig, reason: str, site: str | None = None) -> Problem:
    where = f" at site {site!r}" if site else ""
    return Problem("privacy.target-epsilon",
                   f"{c.privacy.target_epsilon:g} cannot be reached{where} (delta = {c.privacy.delta:g}, "
                   f"accountant {c.privacy.accountant}): {reason}")


def _solvable(c: RunConfig, *, num_train: int, site: str | None = None) -> Iterator[Problem]:
    """Solve the site's plan (``privacy.plan.plan_site``) once: an unreachable target is a
    problem on ``privacy.target-epsilon``, a plan above the budget one on ``privacy.max-epsilon``."""
    from ..privacy.plan import plan_site

    p = c.privacy
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            plan = plan_site(c, num_train)
    except ValueError as err:
        yield _unreachable(c, str(err), site)
        return
    if p.max_epsilon is not None:
        epsilon = plan.epsilon(p.delta, p.accountant)
        if epsilon > p.max_epsilon:
            yield Problem("privacy.max-epsilon",
                          f"the planned run spends epsilon {epsilon:.4g}{f' at site {site!r}' if site else ''}, "
                          f"above privacy.max-epsilon = {p.max_epsilon:g}")


# ----------------------------------------------------------------------------- entry points


def config_problems(config: RunConfig) -> list[Problem]:
    """Every problem of ``config`` found without data (see module doc), in rule order."""
    return [problem for rule in RULES for problem in rule(config)]


def validate_config(config: RunConfig) -> RunConfig:
    """``config`` unchanged if it breaks no rule; else ``ConfigError`` listing every problem."""
    raise_if_any(config_problems(config))
    return config


def check_against_data(config: RunConfig, *, channels: int, train_sizes: Mapping[str, int]) -> None:
    """Rules that need the loaded data (``ConfigError``): ``unet.in-channels`` is the data's
    channel count or "auto" (the U-Net takes the data's), and, with DP on,
    each site's planned run (its training size ``train_sizes[site]``) reaches
    ``privacy.target-epsilon`` within ``privacy.max-epsilon``."""
    problems: list[Problem] = []
    if config.unet.in_channels not in ("auto", channels):
        problems.append(Problem("unet.in-channels", f"is {config.unet.in_channels} but the data has {channels} "
                                                    f"channels; set {channels} or auto"))
    if config.privacy.any_dp:
        for site, size in train_sizes.items():
            problems.extend(_solvable(config, num_train=int(size), site=site))
    raise_if_any(problems)


def site_plan_problems(config: RunConfig, site: str, train_size: int) -> list[Problem]:
    """What keeps one site from honouring the DP plan with its own training-split size (a
    federated site checks this when phase 0 starts, before it releases anything; the server has
    no sizes before phase 0): the target epsilon unreachable at that size, the planned run above
    ``privacy.max-epsilon`` (unless ``on-budget-exceeded = "drop-site"``: the site then takes part
    until its next step would pass the budget), DP-SGD without a training record. [] when DP is off."""
    if not config.privacy.any_dp:
        return []
    if train_size < 1 and config.privacy.dp_sgd:
        return [Problem("privacy.dp-sgd-classifier" if config.privacy.dp_sgd_classifier else "privacy.dp-sgd-diffusion",
                        f"site {site!r} has no training records to run DP-SGD on")]
    problems = list(_solvable(config, num_train=max(int(train_size), 1), site=site))
    if config.privacy.on_budget_exceeded == "drop-site":  # a plan above the budget: the site drops out when it gets there
        problems = [p for p in problems if p.key != "privacy.max-epsilon"]
    return problems


def unsupported_options(config: RunConfig, mode: str) -> list[Problem]:
    """The options set in ``config`` that a ``mode`` run ("centralized" | "federated") cannot
    honour. Centralized: whatever ``pipeline.centralized`` declares in ``SUPPORTED_PRIVACY``
    (nothing, while it has none) of the DP switches, and secure aggregation (one data holder);
    federated: everything is supported."""
    if mode not in RUN_MODES:
        raise ValueError(f"unknown run mode {mode!r}; choose one of {RUN_MODES}")
    if mode == "federated":
        return []
    from . import centralized

    supported = set(getattr(centralized, "SUPPORTED_PRIVACY", ()))
    p = config.privacy
    out = []
    for name in ("gradient_sum_dp", "dp_sgd_classifier", "dp_sgd_diffusion"):
        if getattr(p, name) and name not in supported:
            out.append(Problem(f"privacy.{name.replace('_', '-')}",
                               "the centralized run does not implement this mechanism; it would be recorded as "
                               "on while the run releases un-noised results"))
    if p.secure_aggregation:
        out.append(Problem("privacy.secure-aggregation", "a centralized run has one data holder and no "
                                                         "aggregation to secure"))
    return out


def refuse_unsupported(config: RunConfig, mode: str) -> None:
    """``ConfigError`` naming every option of ``unsupported_options(config, mode)``."""
    raise_if_any(unsupported_options(config, mode))


def check_sites(config: RunConfig, sites: list, mode: str) -> None:
    """``check_against_data`` for loaded ``SiteData``s: their channel count and training-split
    sizes (``phases.prepare_splits``), pooled into one "pooled" size for a centralized run."""
    from .phases import prepare_splits

    if mode not in RUN_MODES:
        raise ValueError(f"unknown run mode {mode!r}; choose one of {RUN_MODES}")
    if not sites:
        raise ValueError("no sites to check the config against")
    sizes = {site.name: len(prepare_splits(site, config).train.y) for site in sites} if config.privacy.any_dp else {}
    if mode == "centralized" and sizes:
        sizes = {"pooled": sum(sizes.values())}
    check_against_data(config, channels=len(sites[0].channels), train_sizes=sizes)
