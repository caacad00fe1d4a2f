"""Server side of the privacy options: budget refusals, excluded sites, epsilon per site and phase.

The server never computes a site's epsilon: each site accounts for itself (Opacus accountant
over its own ledger) and reports it as metrics ("privacy/..."). The server keeps the latest
report per site (``run.state["privacy_sites"]``) and turns it into the report's rows.

A site that would exceed ``privacy.max-epsilon`` answers with an error starting with
"privacy budget exceeded". With ``privacy.on-budget-exceeded = "stop"`` the run stops with a
``PrivacyBudgetError`` quoting the site's message (site, phase, epsilon it would reach); with
``"drop-site"`` the site is excluded from every later DP phase (classifier, influence,
diffusion rounds) and the run goes on while at least ``federation.min-sites`` sites answer. An
excluded site still takes part in generation (local sampling and evaluation; no DP release).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from flwr.app import Message

from client import protocol as P
from tardiff_common.privacy.accounting import BUDGET_MARKER

from .run import ServerRun, TooFewSitesError

__all__ = ["PrivacyBudgetError", "active_nodes", "send_private", "record_privacy", "privacy_rows"]

EXCLUDED = "privacy_excluded"  # run.state: node ids excluded after a budget refusal
SITES = "privacy_sites"  # run.state: {site: latest privacy metrics}


class PrivacyBudgetError(RuntimeError):
    """A site refused a step over its privacy budget and ``on-budget-exceeded`` is "stop"."""


def active_nodes(run: ServerRun) -> list[int]:
    """The sites' node ids minus those excluded after a budget refusal."""
    excluded = set(run.state.get(EXCLUDED, []))
    return [n for n in run.node_ids if n not in excluded]


def _refusals(run: ServerRun, phase: str, server_round: int) -> list[tuple[int, str]]:
    return [(e.node_id, e.error) for e in run.audit.entries
            if e.phase == phase and e.round == server_round and BUDGET_MARKER in e.error]


def handle_refusals(run: ServerRun, phase: str, server_round: int) -> None:
    """Stop the run or exclude the refusing sites, as ``privacy.on-budget-exceeded`` says."""
    refusals = _refusals(run, phase, server_round)
    if not refusals:
        return
    reasons = [reason[reason.index(BUDGET_MARKER):].splitlines()[0] for _, reason in refusals]
    if run.config.privacy.on_budget_exceeded == "stop":
        raise PrivacyBudgetError(f"{phase} round {server_round}: run stopped (privacy.on-budget-exceeded = "
                                 f"'stop'): " + "; ".join(reasons))
    excluded = run.state.setdefault(EXCLUDED, [])
    for node, _ in refusals:
        if node not in excluded:
            excluded.append(node)
    run.log(f"[{phase}] round {server_round}: site(s) dropped for the rest of training "
            f"(privacy.on-budget-exceeded = 'drop-site'): " + "; ".join(reasons))


def send_private(run: ServerRun, phase: str, server_round: int, messages: Iterable[Message], **kwargs) -> list[Message]:
    """``run.send`` to the active sites only, then budget refusals are handled (also when too
    few sites answered, so a "stop" names the refusal rather than the site count)."""
    active = set(active_nodes(run))
    messages = [m for m in messages if m.metadata.dst_node_id in active]
    try:
        replies = run.send(phase, server_round, messages, **kwargs)
    except TooFewSitesError:
        handle_refusals(run, phase, server_round)
        raise
    handle_refusals(run, phase, server_round)
    record_privacy(run, {r.metadata.src_node_id: P.from_metric_record(r.content[P.METRICS]) for r in replies})
    return replies


def record_privacy(run: ServerRun, metrics_by_node: dict[int, dict]) -> None:
    """Keep each site's latest privacy report ({"epsilon", "delta", <phase>: {...}}), merged by phase."""
    sites = run.state.setdefault(SITES, {})
    for node, metrics in metrics_by_node.items():
        report = metrics.get("privacy")
        if isinstance(report, dict) and report:
            name = run.audit.site_name(node)
            merged = sites.setdefault(name, {})
            for key, value in report.items():
                merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value


def privacy_rows(run: ServerRun, site_metrics: dict[str, dict]) -> list[dict]:
    """Report rows {site, phase, dp, epsilon, delta, sigma, clip, steps, sample_rate}: per site one
    row per phase (classifier, influence, diffusion; ``dp`` False and epsilon None = inf where the
    site released in that phase without DP, 0 where it released nothing), then ``total``: the site's epsilon composed over all its DP
    releases (Opacus, per site; ``covers`` names the phases it covers)."""
    p = run.config.privacy
    reports = {name: dict(rep) for name, rep in run.state.get(SITES, {}).items()}
    for name, metrics in site_metrics.items():  # the generation reply has the site's final ledger
        if isinstance(metrics.get("privacy"), dict) and metrics["privacy"].get("epsilon") is not None:
            reports[name] = metrics["privacy"]
    names = sorted(set(reports) | {s.name for s in run.sites.values()} | set(site_metrics))
    rows = []
    for name in names:
        report = reports.get(name, {})
        covered = []
        for phase in ("classifier", "influence", "diffusion"):
            r = report.get(phase)
            if isinstance(r, dict):
                covered.append(phase)
                rows.append({"site": name, "phase": phase, "dp": True, "epsilon": _finite(r.get("epsilon")),
                             "delta": p.delta, "sigma": r.get("sigma"), "clip": r.get("clip"),
                             "steps": r.get("steps"), "sample_rate": r.get("sample_rate"), "accountant": p.accountant})
            else:  # released without DP (epsilon = inf), or not at all (the site was excluded: 0)
                released = any(name in names_ for names_ in run.participation.get(phase, []))
                rows.append({"site": name, "phase": phase, "dp": False, "released": released,
                             "epsilon": None if released else 0.0, "delta": p.delta, "sigma": 0.0, "clip": "-",
                             "steps": None, "sample_rate": None, "accountant": p.accountant})
        rows.append({"site": name, "phase": "total", "dp": bool(covered),
                     "epsilon": _finite(report.get("epsilon")) if covered else None, "delta": p.delta,
                     "sigma": "-", "clip": "-", "steps": sum(int(report[k].get("steps", 0)) for k in covered),
                     "sample_rate": "-", "accountant": p.accountant, "covers": "+".join(covered) or "nothing"})
    return rows


def _finite(value) -> float | None:
    """epsilon as a float; None stands for infinity (no noise) in JSON and renders as "inf"."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
