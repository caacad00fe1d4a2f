"""Flower's FedAvg / FedProx, sending a phase-specific message type ("train.classifier",
"train.diffusion") and extra records (e.g. the normalizer) with every training message.

Aggregation is Flower's own: a weighted average by "num-examples" with weight factors
n_k / sum(n), so one site aggregates to its own weights exactly.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx

__all__ = ["phase_strategy"]


class _PhaseMessages:
    """Mixin: retag FedAvg's "train" messages as "train.<phase>" and add ``extra_records``."""

    message_type: str = "train"
    extra_records: dict

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]
        out = []
        for m in messages:
            content = RecordDict({**dict(m.content.items()), **self.extra_records})
            out.append(Message(content, dst_node_id=m.metadata.dst_node_id, message_type=self.message_type,
                               group_id=f"{self.message_type}-{server_round}"))
        return out


class PhaseFedAvg(_PhaseMessages, FedAvg):
    pass


class PhaseFedProx(_PhaseMessages, FedProx):
    pass


def phase_strategy(message_type: str, *, strategy: str, num_sites: int, proximal_mu: float = 0.0,
                   extra_records: dict | None = None) -> FedAvg:
    """A FedAvg ("fedavg") or FedProx ("fedprox") over all ``num_sites`` sites, no client-side
    evaluation rounds, tagged with ``message_type``."""
    common = dict(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=num_sites,
                  min_available_nodes=num_sites)
    cls = PhaseFedProx if strategy == "fedprox" else PhaseFedAvg
    kwargs = dict(common, proximal_mu=proximal_mu) if strategy == "fedprox" else common
    instance = cls(**kwargs)
    instance.message_type = message_type
    instance.extra_records = dict(extra_records or {})
    return instance
