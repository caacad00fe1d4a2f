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

Accounting across lost site state (a resumed run, a restarted SuperNode). A site's ledger lives
in its Flower ``context.state``, which is gone when the SuperNode restarts and is always empty
in a new Flower run (a resumed run is one). So the server keeps, per site, the DP operations it
*dispatched* to it ("<phase>:<round>"; ``DISPATCHED``), written to
``checkpoint/privacy_dispatched.json`` before the messages go out, and every DP message carries
the site's list so far (``protocol.PRIVACY_SPENT``). Before its next DP step a site whose ledger
counts fewer operations of a phase than that list adds the missing ones from its plan
(``tardiff_common.privacy.ledger_policy.SiteLedger.restore``): its epsilon never falls below what
it may have released. Phase 0's two noised statistics are logged as "normalization:1" / ":2",
the noised score counts of phases 3b and 4 as "selection:1" and "evaluation:1".
An operation is taken off the list only when the site's answer shows it released nothing (a
budget refusal or another error reply); a round that timed out or was cut off by a server crash
stays on it, and the resumed run's repetition of that round counts again (with the default
``os.urandom`` noise the repetition is a second, independent release). The report's epsilon per
site is the largest the server has seen for it (the generation reply's final ledger, or the
reports of earlier DP replies when that ledger came back shorter).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from flwr.app import Message, RecordDict

from tardiff_common import protocol as P
from tardiff_common.privacy.accounting import BUDGET_MARKER
from tardiff_common.privacy.report import privacy_rows_of
from tardiff_common.report.run_folder import write_json_atomic

from .run import ServerRun, TooFewSitesError

__all__ = ["PrivacyBudgetError", "PrivacyPlanError", "active_nodes", "send_private", "record_privacy", "privacy_rows", "dp_phase",
           "dispatch", "undo_dispatch", "undo_on_error", "spent_content", "load_dispatched", "DISPATCHED",
           "query_private"]

EXCLUDED = "privacy_excluded"  # run.state: names of the sites excluded after a budget refusal
SITES = "privacy_sites"  # run.state: {site: latest privacy metrics}
PARTICIPATION_PHASE = {"evaluation": "generation"}  # a DP phase's name in ``run.participation``
DISPATCHED = "privacy_dispatched"  # run.state: {site: ["<phase>:<round>", ...]} DP operations sent to it


class PrivacyBudgetError(RuntimeError):
    """A site refused a step over its privacy budget and ``on-budget-exceeded`` is "stop"."""


class PrivacyPlanError(RuntimeError):
    """A site refused phase 0: it cannot honour the DP plan with its own split sizes."""


def active_nodes(run: ServerRun) -> list[int]:
    """The sites' node ids (in site-name order) minus those excluded after a budget refusal."""
    excluded = set(run.state.get(EXCLUDED, []))
    return [n for n in run.node_ids if run.sites[n].name not in excluded]


def dp_phase(run: ServerRun, phase: str) -> bool:
    """Whether the sites release under DP in ``phase``."""
    p = run.config.privacy
    return {"normalization": p.any_dp, "classifier": p.dp_sgd_classifier, "influence": p.gradient_sum_dp,
            "diffusion": p.dp_sgd_diffusion, "selection": p.any_dp and run.config.guidance.auto,
            "evaluation": p.any_dp}.get(phase, False)


def _dispatched_file(run: ServerRun):
    return run.run_dir / "checkpoint" / "privacy_dispatched.json"


def _save_dispatched(run: ServerRun) -> None:
    write_json_atomic(_dispatched_file(run), run.state.get(DISPATCHED, {}))


def load_dispatched(run: ServerRun) -> None:
    """On resume: the dispatch log as written before the last messages went out (it may be ahead
    of the checkpointed state; counting more is the safe side)."""
    file = _dispatched_file(run)
    if file.is_file():
        run.state[DISPATCHED] = {k: list(v) for k, v in json.loads(file.read_text()).items()}


def dispatch(run: ServerRun, phase: str, server_round: int, nodes: Iterable[int]) -> dict[int, list[str]]:
    """Log a DP operation for ``nodes`` *before* it is sent (on disk); returns each node's list
    of the operations dispatched to it earlier (what its message carries)."""
    if not dp_phase(run, phase):
        return {}
    log = run.state.setdefault(DISPATCHED, {})
    before = {}
    for node in nodes:
        name = run.sites[node].name
        before[node] = list(log.get(name, []))
        log.setdefault(name, []).append(f"{phase}:{server_round}")
    _save_dispatched(run)
    return before


def undo_dispatch(run: ServerRun, phase: str, server_round: int, node: int) -> None:
    """The site answered with an error (refusal or failure): the operation released nothing."""
    ops = run.state.get(DISPATCHED, {}).get(run.audit.site_name(node), [])
    op = f"{phase}:{server_round}"
    if op in ops:
        ops.reverse()
        ops.remove(op)  # the last occurrence
        ops.reverse()
        _save_dispatched(run)


def spent_content(content: RecordDict, spent: list[str] | None) -> RecordDict:
    """``content`` plus the site's list of DP operations dispatched to it before (when DP is on)."""
    if spent is None:
        return content
    return RecordDict({**dict(content.items()), P.PRIVACY_SPENT: P.spent_record(spent)})


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
        if run.audit.site_name(node) not in excluded:
            excluded.append(run.audit.site_name(node))
    run.log(f"[{phase}] round {server_round}: site(s) dropped for the rest of training "
            f"(privacy.on-budget-exceeded = 'drop-site'): " + "; ".join(reasons))


def send_private(run: ServerRun, phase: str, server_round: int, messages: Iterable[Message], **kwargs) -> list[Message]:
    """``run.send`` to the active sites only, then budget refusals are handled (also when too
    few sites answered, so a "stop" names the refusal rather than the site count)."""
    active = set(active_nodes(run))
    messages = [m for m in messages if m.metadata.dst_node_id in active]
    spent = dispatch(run, phase, server_round, [m.metadata.dst_node_id for m in messages])
    if spent:
        messages = [Message(spent_content(m.content, spent[m.metadata.dst_node_id]), dst_node_id=m.metadata.dst_node_id,
                            message_type=m.metadata.message_type, group_id=m.metadata.group_id) for m in messages]
    try:
        replies = run.send(phase, server_round, messages, on_reply=undo_on_error(run, phase, server_round), **kwargs)
    except TooFewSitesError:
        handle_refusals(run, phase, server_round)
        raise
    handle_refusals(run, phase, server_round)
    record_privacy(run, {r.metadata.src_node_id: P.from_metric_record(r.content[P.METRICS]) for r in replies})
    return replies


def query_private(run: ServerRun, phase: str, dp_op: str, message_type: str, content: RecordDict) -> list[Message]:
    """``run.query`` of a one-shot DP release (phase 3b "selection", phase 4 "evaluation" as
    ``dp_op``) to every site: logged before it is sent, each message carrying its site's earlier
    DP operations, an error reply taking it off the log, budget refusals handled, the replies'
    privacy reports kept."""
    spent = dispatch(run, dp_op, 1, run.node_ids)
    try:
        replies = run.query(phase, message_type,
                            lambda n: spent_content(content, spent[n] if n in spent else None),
                            on_reply=undo_on_error(run, dp_op, 1))
    except TooFewSitesError:
        handle_refusals(run, phase, 0)  # a one-shot query is audited as round 0
        raise
    handle_refusals(run, phase, 0)
    if dp_phase(run, dp_op):
        record_privacy(run, {r.metadata.src_node_id: P.from_metric_record(r.content[P.METRICS]) for r in replies})
    return replies


def undo_on_error(run: ServerRun, phase: str, server_round: int):
    """``ServerRun.send``'s ``on_reply``: an error reply takes the operation off the dispatch log."""
    if not dp_phase(run, phase):
        return None

    def on_reply(reply: Message) -> None:
        if reply.has_error():
            undo_dispatch(run, phase, server_round, reply.metadata.src_node_id)

    return on_reply


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
    row per phase (normalization, classifier, influence, diffusion; ``dp`` False and epsilon None = inf where the
    site released in that phase without DP, 0 where it released nothing), then ``total``: the site's epsilon composed over all its DP
    releases (Opacus, per site; ``covers`` names the phases it covers)."""
    p = run.config.privacy
    reports = {name: dict(rep) for name, rep in run.state.get(SITES, {}).items()}
    for name, metrics in site_metrics.items():  # the generation reply has the site's final ledger
        final = metrics.get("privacy")
        if isinstance(final, dict) and final.get("epsilon") is not None:
            reports[name] = _larger(reports.get(name), final)
    names = sorted(set(reports) | set(run.registered) | set(site_metrics))
    rows = []
    for name in names:
        rows += privacy_rows_of(name, reports.get(name, {}), p, lambda phase, name=name: any(
            name in used for used in run.participation.get(PARTICIPATION_PHASE.get(phase, phase), [])))
    return rows


def _larger(seen: dict | None, final: dict) -> dict:
    """The site's final ledger summary, unless an earlier report showed a larger epsilon (the
    ledger came back from a site whose state was lost after its last DP step): per phase and in
    total, the larger of the two."""
    if not seen:
        return final
    out = dict(final)
    for key in set(seen) | set(final):
        a, b = seen.get(key), final.get(key)
        if isinstance(a, dict) or isinstance(b, dict):
            out[key] = a if not isinstance(b, dict) or (isinstance(a, dict) and _eps(a) > _eps(b)) else b
        elif key == "epsilon":
            out[key] = max(_eps({"epsilon": a}), _eps({"epsilon": b}))
    return out


def _eps(report: dict) -> float:
    value = report.get("epsilon")
    return -1.0 if value is None else float(value)
