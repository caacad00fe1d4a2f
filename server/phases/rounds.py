"""The round loop phases 1 and 3 share: FedAvg / FedProx of one model over ``rounds`` rounds.

Each round the global weights travel packed (``tardiff_common.protocol``: one flat vector per dtype +
index) to the active sites with the phase's message type; the replies (site-name order) are
averaged by Flower's strategy weighted by ``num-examples``, unpacked with the server's index,
stored in ``run.state[state_key]`` and checkpointed. A resumed run starts after the last
checkpointed round from the saved weights.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord

from tardiff_common import protocol as P

from ..privacy import active_nodes, send_private
from ..run import ServerRun
from ..strategies import phase_strategy
from .normalization import normalizer_record

__all__ = ["run_fedavg_rounds"]


def run_fedavg_rounds(run: ServerRun, *, phase: str, message_type: str, state_key: str,
                      initial: dict[str, np.ndarray], rounds: int, train_config: dict | None = None) -> None:
    """FedAvg ``initial`` (the run-seeded weights, {name: array}) for ``rounds`` rounds of ``phase``."""
    cfg = run.config
    index = P.PackIndex.of(initial)
    start = run.resume_round(phase)
    weights = run.state[state_key] if start else initial
    if start:
        run.log(f"[{phase}] resuming after round {start}/{rounds}")
    expected = {P.ARRAYS: index.expected()}
    strategy = phase_strategy(message_type, strategy=cfg.federation.strategy, num_sites=len(run.sites),
                              proximal_mu=cfg.federation.proximal_mu,
                              extra_records={P.NORMALIZER: normalizer_record(run)})
    for r in range(start + 1, rounds + 1):
        messages = strategy.train_messages(r, P.to_packed_record(weights, index), ConfigRecord(train_config or {}),
                                           active_nodes(run))
        replies = send_private(run, phase, r, messages, expected_arrays=expected)
        aggregated, metrics = strategy.aggregate_train(r, replies)
        weights = P.unpack_record(aggregated, index)
        run.state[state_key] = weights
        run.log(f"[{phase}] round {r}/{rounds}: {len(replies)} sites, loss {float(metrics['loss']):.4f}")
        run.checkpoint(phase, r)
