"""Secure aggregation (Flower SecAgg+) of the sites' guidance gradient sums, as one workflow step.

In flwr 1.42 SecAgg+ exists in the legacy workflow API only: ``SecAggPlusWorkflow`` on the
server and the client mod ``secaggplus_mod``. ``secure_sum`` drives that workflow *unchanged*
from inside our Message-API ServerApp: it hands it a ``LegacyContext`` whose legacy strategy
(``_SumStrategy``) produces one FitIns per site and keeps the unmasked result, and a thin grid
wrapper that audits every reply. On the sites, ``client.app.secure_influence`` (the default
"train" handler, wrapped in ``secaggplus_mod``) answers the "collect masked vectors" stage with
its vector; the mod does everything else.

Protocol (Bell et al., 2020, as Flower implements it), four rounds of messages:

1. setup: each site makes two key pairs and sends the public keys;
2. share keys: each site Shamir-shares (threshold t of ``num_shares``) its private-mask seed and
   its first private key among its neighbours, encrypted for each neighbour;
3. collect masked vectors: each site sends  y_k = Q(v_k) + PRG(b_k) +- sum_j PRG(s_kj) mod 2^32,
   Q = stochastic quantization of v_k clipped to [-c, c] onto {0, ..., Q_range - 1}, b_k its
   private mask seed, s_kj the pairwise keys (the pairwise masks cancel in the sum);
4. unmask: sites send shares of the survivors' b_k and of the dropped sites' keys; the server
   removes the masks and dequantizes the *sum* only.

What it protects against: an honest-but-curious server (and any coalition of fewer than t
parties) learns sum_k v_k and nothing else about an individual v_k. Up to num_shares - t of
each site's neighbours may drop out after sharing keys and the sum over the remaining sites is
still recovered. It does not protect against a malicious server that lies about dropouts, nor
does it make the *sum* private (that is DP's job; see ``privacy.gradient-sum-dp``).

What we sum: v_k = s * [G_k, n_k] with the public scale s = 1 / (total guidance records of the
participating sites, from phase 0), so coordinates are mean-gradient sized and fit
[-c, c] = [-``secagg-clipping-range``, +c]. Each site sends weight 1 (``max_weight`` = 1), so the
workflow returns the average over the K surviving sites; ``secure_sum`` multiplies by K and the
influence phase by 1 / s. Quantization error per coordinate of G: at most K * 2c / Q_range / s
(stochastic rounding, unbiased), plus any clipping of |s G_k| > c (pick c large enough).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.server_config import ServerConfig
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey

from tardiff_common.pipeline.config import derive_seed
from tardiff_common.pipeline.phase_list import SEED_IDS
from tardiff_common.privacy.config import PrivacyConfig, secagg_share_spec

from .run import ServerRun, TooFewSitesError

__all__ = ["SecureSum", "secure_sum", "secagg_workflow", "quantization_bound", "fitins_for", "public_scale"]


@dataclass
class SecureSum:
    """The unmasked sum over ``node_ids`` (the sites whose masked vectors entered it)."""

    total: np.ndarray
    node_ids: list[int]
    metrics: dict[int, dict] = field(default_factory=dict)


def secagg_workflow(privacy: PrivacyConfig, *, timeout: float | None = None) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ workflow with the ``privacy.secagg-*`` settings and weight 1 per site."""
    return SecAggPlusWorkflow(
        num_shares=secagg_share_spec(privacy.secagg_num_shares),
        reconstruction_threshold=secagg_share_spec(privacy.secagg_reconstruction_threshold),
        max_weight=1.0,
        clipping_range=float(privacy.secagg_clipping_range),
        quantization_range=int(privacy.secagg_quantization_range),
        timeout=timeout,
    )


def quantization_bound(privacy: PrivacyConfig, num_sites: int) -> float:
    """Worst-case absolute error per coordinate of the (scaled) sum: K * 2c / Q_range."""
    return num_sites * 2.0 * privacy.secagg_clipping_range / privacy.secagg_quantization_range


class _SumStrategy(Strategy):
    """A legacy strategy that sends ``fitins[node]`` to each node and keeps the aggregate."""

    def __init__(self, fitins: dict[int, FitIns], grid) -> None:
        self.fitins = fitins
        self.grid = grid
        self.aggregated: Parameters | None = None
        self.results: list[tuple[ClientProxy, FitRes]] = []
        self.failures: list = []

    def initialize_parameters(self, client_manager):
        return None

    def configure_fit(self, server_round, parameters, client_manager):
        return [(GridClientProxy(node, self.grid, 0), ins) for node, ins in self.fitins.items()]

    def aggregate_fit(self, server_round, results, failures):
        # SecAggPlusWorkflow has already put the unmasked average into every result's parameters
        self.results, self.failures = list(results), list(failures)
        self.aggregated = results[0][1].parameters if results else None
        return self.aggregated, {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


class _AuditingGrid:
    """Forwards ``send_and_receive`` to the run's grid and audits every reply (bytes-valued
    SecAgg+ lists are joined for the byte count; the audit's rules apply unchanged).

    Every message gets its own copy of its content: the workflow sends one RecordDict object
    to all nodes and ``secaggplus_mod`` pops keys from it, which over a real transport (each
    node deserializes its own copy) is harmless but breaks an in-process grid."""

    def __init__(self, run: ServerRun, phase: str, server_round: int) -> None:
        self.run, self.phase, self.server_round = run, phase, server_round

    def __getattr__(self, name):
        return getattr(self.run.grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None):
        messages = [Message(copy.deepcopy(m.content), m.metadata.dst_node_id, m.metadata.message_type,
                            group_id=m.metadata.group_id) for m in messages]
        replies = list(self.run.grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            self.run.audit.check(self.phase, self.server_round, _for_audit(reply))
        answered = {r.metadata.src_node_id for r in replies}
        missing = [self.run.audit.site_name(m.metadata.dst_node_id) for m in messages
                   if m.metadata.dst_node_id not in answered]
        failed = [self.run.audit.site_name(r.metadata.src_node_id) for r in replies if r.has_error()]
        if missing or failed:
            self.run.log(f"[{self.phase}] secure aggregation: sites dropped out: {sorted(missing + failed)}")
        return replies


def _for_audit(reply: Message) -> Message:
    if reply.has_error():
        return reply
    content = RecordDict()
    for key, record in reply.content.items():
        if isinstance(record, ConfigRecord):
            record = ConfigRecord({k: (b"".join(v) if isinstance(v, list) and v and isinstance(v[0], bytes) else v)
                                   for k, v in record.items()})
        content[key] = record
    return Message(metadata=reply.metadata, content=content)


def secure_sum(run: ServerRun, phase: str, fitins: dict[int, FitIns], *, server_round: int = 0) -> SecureSum:
    """Run SecAgg+ over the nodes in ``fitins``; each site's handler answers with one vector.

    Raises ``TooFewSitesError`` if fewer than 2 sites take part, if the protocol halts (too
    few surviving neighbours for the reconstruction threshold), or if fewer than
    ``federation.min-sites`` vectors entered the sum.
    """
    if len(fitins) < 2:
        raise TooFewSitesError(f"{phase}: secure aggregation needs at least 2 sites, {len(fitins)} take part")
    privacy = run.config.privacy
    strategy = _SumStrategy(fitins, run.grid)
    base = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(base, config=ServerConfig(num_rounds=1), strategy=strategy,
                            client_manager=SimpleClientManager())
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: 1})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    saved = random.getstate()  # the workflow shuffles the nodes (neighbour sets): seeded from the run seed
    random.seed(derive_seed(run.config.seed, SEED_IDS["secagg"], server_round))
    try:
        secagg_workflow(privacy, timeout=run.config.federation.timeout_for(phase))(
            _AuditingGrid(run, phase, server_round), context)
    finally:
        random.setstate(saved)
    entered = sorted(proxy.node_id for proxy, _ in strategy.results)
    errors = {run.audit.site_name(e.node_id): e.reason or "error"
              for e in run.audit.entries if e.phase == phase and e.round == server_round and e.error}
    run.record_round(phase, server_round, asked=[run.audit.site_name(n) for n in fitins],
                     used=[run.audit.site_name(n) for n in entered],
                     dropped={run.audit.site_name(n): errors.get(run.audit.site_name(n), "dropped out of SecAgg+")
                              for n in fitins if n not in entered},
                     message_type="secagg+")
    if strategy.aggregated is None or len(entered) < max(run.config.federation.min_sites, 2):
        raise TooFewSitesError(
            f"{phase} round {server_round}: secure aggregation halted or too few sites: {len(entered)} vector(s) "
            f"entered the sum (federation.min-sites = {run.config.federation.min_sites}, SecAgg+ threshold "
            f"{privacy.secagg_reconstruction_threshold} of {privacy.secagg_num_shares} shares)")
    average = parameters_to_ndarrays(strategy.aggregated)[0]
    metrics = {proxy.node_id: dict(res.metrics) for proxy, res in strategy.results}
    return SecureSum(np.asarray(average, dtype=np.float64) * len(entered), entered, metrics)


def fitins_for(arrays: list[tuple[str, dict[str, np.ndarray]]], config: dict) -> FitIns:
    """A legacy FitIns carrying named array groups: [(group, {name: array})] in order, their
    names as comma-joined "<group>-names" config entries, plus ``config``."""
    flat, names = [], {}
    for group, named in arrays:
        names[f"{group}-names"] = ",".join(named)
        flat += [np.asarray(v) for v in named.values()]
    return FitIns(ndarrays_to_parameters(flat), {**config, **names})


def public_scale(total_records: int) -> float:
    """s = 1 / total records (1 when there are none)."""
    return 1.0 / total_records if total_records > 0 else 1.0

