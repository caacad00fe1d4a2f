"""State and messaging of one federated TarDiff run on the server.

``ServerRun`` holds the grid, the typed config, the message audit, the run folder and the
global state the phases build up (normalizer, classifier theta*, G, U-Net, metrics). Every
message to the sites goes through ``send`` (audited, timed out, failures recorded), and the
state is checkpointed atomically after each round and phase.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from tardiff_common.pipeline.config import RunConfig
from tardiff_common.pipeline.timing import PhaseTimer
from tardiff_common.report.run_folder import write_json_atomic, write_npz_atomic

from .audit import MessageAudit

__all__ = ["SiteInfo", "ServerRun", "TooFewSitesError"]


class TooFewSitesError(RuntimeError):
    pass


@dataclass
class SiteInfo:
    """What a site told the server about itself in the stats query (counts only)."""

    node_id: int
    name: str
    index: int
    counts: dict[str, int]
    channels: tuple[str, ...]
    length: int
    missing_fraction: list[float]

    def summary(self) -> dict:
        n = self.counts["train"] + self.counts["guidance"] + self.counts["test"]
        pos = self.counts["train-positives"] + self.counts["guidance-positives"] + self.counts.get("test-positives", 0)
        return {"site": self.name, "records": n, "train": self.counts["train"],
                "guidance": self.counts["guidance"], "test": self.counts["test"],
                "positives": pos, "prevalence": self.counts["train-positives"] / max(self.counts["train"], 1),
                "missing_fraction": dict(zip(self.channels, self.missing_fraction))}


@dataclass
class ServerRun:
    grid: Grid
    config: RunConfig
    run_dir: Path
    run_name: str
    log: Callable[[str], None] = print
    audit: MessageAudit = field(default_factory=MessageAudit)
    timer: PhaseTimer = field(default_factory=PhaseTimer)
    sites: dict[int, SiteInfo] = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    participation: dict[str, list[list[str]]] = field(default_factory=dict)

    # ------------------------------------------------------------------ nodes

    def wait_for_nodes(self) -> list[int]:
        """Node ids once ``federation.num-sites`` (or at least ``min-sites``) nodes are connected."""
        fed = self.config.federation
        wanted = fed.num_sites or fed.min_sites
        deadline = time.monotonic() + fed.wait_for_sites_s
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= wanted:
                return nodes
            if time.monotonic() > deadline:
                if len(nodes) >= fed.min_sites and not fed.num_sites:
                    return nodes
                raise TooFewSitesError(
                    f"only {len(nodes)} site(s) connected within {fed.wait_for_sites_s:.0f} s; "
                    f"federation.num-sites = {fed.num_sites}, federation.min-sites = {fed.min_sites}"
                )
            time.sleep(0.5)

    @property
    def node_ids(self) -> list[int]:
        return sorted(self.sites)

    # ------------------------------------------------------------------ messaging

    def send(
        self,
        phase: str,
        server_round: int,
        messages: Iterable[Message],
        *,
        expected_arrays: dict[str, dict[str, tuple[int, ...]]] | None = None,
    ) -> list[Message]:
        """Send, wait (``federation.round-timeout-s``), audit every reply, drop failed sites.

        Returns the successful replies. Fewer than ``federation.min-sites`` of them stops the
        run with a ``TooFewSitesError`` naming the sites that failed and why.
        """
        messages = list(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=self.config.federation.round_timeout_s))
        ok, failed = [], []
        answered = set()
        for reply in replies:
            answered.add(reply.metadata.src_node_id)
            entry = self.audit.check(phase, server_round, reply, expected_arrays)
            if reply.has_error():
                failed.append(f"{entry.site}: {entry.error.splitlines()[-1] if entry.error else 'error'}")
            else:
                ok.append(reply)
        for m in messages:
            if m.metadata.dst_node_id not in answered:
                failed.append(f"{self.audit.site_name(m.metadata.dst_node_id)}: no reply within the timeout")
        self.participation.setdefault(phase, []).append(
            sorted(self.audit.site_name(r.metadata.src_node_id) for r in ok)
        )
        if failed:
            self.log(f"[{phase}] round {server_round}: {len(failed)} site(s) failed: " + "; ".join(failed))
        if len(ok) < self.config.federation.min_sites:
            raise TooFewSitesError(
                f"{phase} round {server_round}: {len(ok)} site(s) answered, federation.min-sites = "
                f"{self.config.federation.min_sites}; failures: " + "; ".join(failed)
            )
        return ok

    def query(self, phase: str, message_type: str, content: Callable[[int], RecordDict] | RecordDict,
              *, server_round: int = 0, node_ids: list[int] | None = None,
              expected_arrays: dict | None = None) -> list[Message]:
        """Send ``message_type`` with ``content`` (or ``content(node_id)``) to every site."""
        nodes = node_ids if node_ids is not None else self.node_ids
        messages = [
            Message(content(n) if callable(content) else content, dst_node_id=n, message_type=message_type,
                    group_id=f"{message_type}-{server_round}")
            for n in nodes
        ]
        return self.send(phase, server_round, messages, expected_arrays=expected_arrays)

    def site_of(self, reply: Message) -> SiteInfo:
        return self.sites[reply.metadata.src_node_id]

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self, phase: str, server_round: int) -> None:
        """Atomically save every array of the global state plus a JSON of progress."""
        folder = self.run_dir / "checkpoint"
        arrays = {}
        for key, value in self.state.items():
            if isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
                arrays.update({f"{key}/{k}": v for k, v in value.items()})
        write_npz_atomic(folder / "state.npz", **arrays)
        progress = {"phase": phase, "round": server_round,
                    "scalars": {k: v for k, v in self.state.items() if isinstance(v, (int, float, str))},
                    "participation": self.participation, "timing": self.timer.as_dict()}
        write_json_atomic(folder / "progress.json", progress)
