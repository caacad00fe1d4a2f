"""Flower's FedAvg / FedProx, sending a phase-specific message type ("train.classifier",
"train.diffusion") and extra records (e.g. the normalizer) with every training message.

Aggregation is Flower's own: a weighted average by "num-examples" with weight factors
n_k / sum(n), so one site aggregates to its own weights exactly.

Node selection is ours (``train_messages``, used instead of Flower's ``configure_train``): every
round goes to the run's active sites, in site-name order. Flower's ``configure_train`` samples with ``random.sample`` from whatever
nodes are connected and waits, without limit, until ``min_available_nodes`` are: a hospital
that never comes back would stall the run, and the order of the replies (and with it the
floating-point sums of the average) would depend on the sample. ``ServerRun.send`` returns
the replies sorted by site name, so ``aggregate_train`` always adds them in the same order.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy import FedAvg, FedProx

__all__ = ["phase_strategy"]


class _PhaseMessages:
    """Mixin: "train.<phase>" messages with ``extra_records`` to the given nodes."""

    message_type: str = "train"
    extra_records: dict

    def train_messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                       node_ids: Iterable[int]) -> list[Message]:
        """One message per node in ``node_ids`` (in that order), carrying ``arrays``, ``config``
        (+ "server-round", and "proximal-mu" for FedProx) and the extra records."""
        config = ConfigRecord(dict(config.items()))
        config["server-round"] = server_round
        if isinstance(self, FedProx):
            config["proximal-mu"] = self.proximal_mu
        content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config,  # type: ignore[attr-defined]
                              **self.extra_records})
        return [Message(content, dst_node_id=n, message_type=self.message_type,
                        group_id=f"{self.message_type}-{server_round}") for n in node_ids]


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
