"""Phase 0: federated normalization statistics.

(a) ``query.stats``: each site returns per-channel count / sum / sum of squares of its
    observed training values, and its record counts; the server adds them.
(b) ``query.histogram``: with the global moments every site builds the same fixed grid and
    returns its value counts per bin; the server adds them.
The sums equal the pooled statistics exactly, so the fitted normalizer is the one a central
curator would fit on the pooled training data. No value of any record is sent.

With DP on (``privacy.any_dp``) both replies are Gaussian mechanisms of the site
(``tardiff_common.privacy.dp_statistics``: record-weighted, noised, post-processed); the server
sums them as they come. Each is a DP operation in the dispatch log ("normalization:1" for the
moments, logged as soon as the site has named itself, "normalization:2" for the histogram, logged
before it is sent and listed in its message), so a resumed run's sites count them again, and the
sites' privacy reports are kept for the report's *Privacy* table.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, RecordDict

from tardiff_common import protocol as P
from tardiff_common.data.normalize import (
    ChannelHistogram,
    histogram_edges_from_moments,
    make_normalizer,
)
from tardiff_common.pipeline.validation import PLAN_REFUSED
from tardiff_common.serialization import normalizer_to_numpy

from ..privacy import PrivacyPlanError, dispatch, record_privacy, spent_content
from ..run import ServerRun, SiteInfo

__all__ = ["run_normalization"]


def site_info(reply) -> SiteInfo:
    """The SiteInfo a stats reply describes."""
    site = reply.content[P.SITE]
    metrics = dict(reply.content[P.METRICS].items())
    return SiteInfo(
        node_id=reply.metadata.src_node_id,
        name=str(site["name"]),
        index=int(site["index"]),
        counts={k: int(v) for k, v in metrics.items() if k not in ("missing-fraction",)},
        channels=tuple(site["channels"]),
        length=int(metrics["length"]),
        missing_fraction=[float(v) for v in metrics["missing-fraction"]],
    )


def check_unique_names(infos: list[SiteInfo]) -> None:
    names = [s.name for s in infos]
    if len(set(names)) != len(names):
        raise ValueError(f"two nodes serve the same site name: {sorted(names)}")


def run_normalization(run: ServerRun) -> None:
    nodes = run.wait_for_nodes()
    try:
        replies = run.query("normalization", P.STATS, RecordDict({P.CONFIG: ConfigRecord({})}), node_ids=nodes)
    finally:
        stop_on_plan_refusals(run)
    _stop_on_site_config_errors(run)
    infos = [site_info(reply) for reply in replies]  # replies come in site-name order
    check_unique_names(infos)
    moments_parts = []
    for info, reply in zip(infos, replies, strict=True):
        run.register_site(info)
        moments_parts.append(P.moments_from_record(reply.content[P.MOMENTS]))
    _check_same_shape(infos)
    moments = sum(moments_parts[1:], moments_parts[0])
    _record_dp(run, replies, 1)

    request = RecordDict({P.MOMENTS: P.moments_record(moments)})
    spent = dispatch(run, "normalization", 2, run.node_ids)
    replies = run.query("normalization", P.HISTOGRAM, lambda node: spent_content(request, spent.get(node)),
                        expected_arrays=None)
    _record_dp(run, replies, None)
    edges = histogram_edges_from_moments(moments)
    hist = ChannelHistogram(edges, sum(P.histogram_from_record(r.content[P.HIST]) for r in replies))
    normalizer = make_normalizer(run.config.data.normalizer, moments, hist)
    run.state["normalizer"] = normalizer_to_numpy(normalizer)
    total = sum(s.counts["train"] for s in run.sites.values())
    positives = sum(s.counts["train-positives"] for s in run.sites.values())
    run.state["train_records"] = total
    run.state["train_positives"] = positives
    if positives == 0 or positives == total:
        raise ValueError("the sites' pooled training splits hold only one class; TarDiff needs both")
    run.log(f"[normalization] {len(run.sites)} sites: " + ", ".join(
        f"{s.name} ({s.counts['train']} train, {s.counts['train-positives']} positive)" for s in run.sites.values()))
    run.checkpoint("normalization", 0)


def _stop_on_site_config_errors(run: ServerRun) -> None:
    """A site whose own configuration is wrong (e.g. its node config's external-path) stops the run
    before any training, naming the site, instead of being dropped silently."""
    dropped = (run.rounds[-1] if run.rounds else {}).get("dropped", {})
    bad = {node: why for node, why in dropped.items() if P.SITE_CONFIG_ERROR in why}  # the reason names the site
    if bad:
        raise ValueError("phase 0, before any training: " + "; ".join(f"{node}: {why}" for node, why in sorted(bad.items())))


def stop_on_plan_refusals(run: ServerRun) -> None:
    """A site that cannot honour the DP plan with its own split sizes refused phase 0 before
    releasing anything (``validation.PLAN_REFUSED``): stop the run with its message."""
    reasons = [e.error[e.error.index(PLAN_REFUSED):] for e in run.audit.entries
               if e.phase == "normalization" and e.error and PLAN_REFUSED in e.error]
    if reasons:
        raise PrivacyPlanError("; ".join(dict.fromkeys(reasons)))


def _record_dp(run: ServerRun, replies, log_round: int | None) -> None:
    """With DP on: log the release as dispatched (``log_round``; None = logged before sending) and
    keep each site's privacy report."""
    if not run.config.privacy.any_dp:
        return
    if log_round is not None:
        dispatch(run, "normalization", log_round, [r.metadata.src_node_id for r in replies])
    record_privacy(run, {r.metadata.src_node_id: P.from_metric_record(r.content[P.METRICS]) for r in replies})


def _check_same_shape(sites: list[SiteInfo]) -> None:
    first = sites[0]
    for s in sites[1:]:
        if s.channels != first.channels or s.length != first.length:
            raise ValueError(
                f"site {s.name!r} has channels {s.channels} x {s.length} steps, site {first.name!r} has "
                f"{first.channels} x {first.length}; all sites must share one data layout"
            )


def normalizer_record(run: ServerRun):
    """The normalizer's arrays, packed (one vector + index; the sites unpack transparently)."""
    return P.to_packed_record(run.state["normalizer"])

