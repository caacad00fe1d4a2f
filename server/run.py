"""State and messaging of one federated TarDiff run on the server.

``ServerRun`` holds the grid, the typed config, the message audit, the run folder and the
global state the phases build up (normalizer, classifier theta*, G, U-Net, metrics). Every
message to the sites goes through ``send`` (audited, timed out, retried or dropped as
``federation.on-site-failure`` says, replies in site-name order), and the state is
checkpointed atomically after each round and phase, so that ``output.resume = true``
(``ServerRun.resume``) can continue an interrupted run where it stopped.

Checkpoint (``<run folder>/checkpoint/``):

* ``state.npz``: every array group of the global state (``server.state.GlobalState``) *and* the run's progress as JSON (key
  ``PROGRESS_KEY``), written in one atomic file, so arrays and progress always agree; the
  previous file is replaced only once the new one is complete;
* ``progress.json``: a readable copy of that progress (phase, round, finished phases, sites,
  participation, timing, the run config, ...);
* ``audit.jsonl``: the message audit so far (the progress records how many rows belong to it);
* ``privacy_dispatched.json``: with DP, the DP operations sent to each site, written *before*
  they are sent (see ``server.privacy``);
* ``failure.json``: why the run stopped, if it did (moved to ``failure-<n>.json`` on resume).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from tardiff_common import protocol as P
from tardiff_common.data.contract import SPLIT_NAMES
from tardiff_common.pipeline.config import RunConfig
from tardiff_common.pipeline.selection import tuning_rows
from tardiff_common.pipeline.timing import PhaseTimer
from tardiff_common.privacy.accounting import BUDGET_MARKER
from tardiff_common.report.run_folder import to_jsonable, write_bytes_atomic, write_json_atomic, write_npz_atomic

from .audit import AuditEntry, MessageAudit
from .state import GlobalState
from .wire import reply_schema

__all__ = ["SiteInfo", "ServerRun", "TooFewSitesError", "PROGRESS_KEY", "RESUME_MAY_CHANGE"]

PROGRESS_KEY = "__progress__"  # state.npz: the progress JSON, saved with the arrays it describes

# run-config keys a resumed run may change (operations, not the method); every other key must be equal
RESUME_MAY_CHANGE = frozenset({
    "output.resume", "output.baseline", "output.baseline-wait", "threads", "device",
    "federation.num-sites", "federation.min-sites", "federation.wait-for-sites-s", "federation.round-timeout-s",
    "federation.phase-timeouts",
    "federation.on-site-failure", "federation.max-retries", "federation.retry-wait-s",
})


class TooFewSitesError(RuntimeError):
    pass


MIN_SPLIT_RECORDS = 2  # a site needs at least this many records in every split (SPLIT_NAMES)


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
        n = sum(self.counts.get(split, 0) for split in SPLIT_NAMES)
        pos = sum(self.counts.get(f"{split}-positives", 0) for split in SPLIT_NAMES)
        return {"site": self.name, "records": n, **{split: self.counts.get(split, 0) for split in SPLIT_NAMES},
                "positives": pos, "prevalence": self.counts["train-positives"] / max(self.counts["train"], 1),
                "missing_fraction": dict(zip(self.channels, self.missing_fraction))}

    def to_json(self) -> dict:
        return {**asdict(self), "channels": list(self.channels)}

    @classmethod
    def from_json(cls, data: dict) -> SiteInfo:
        return cls(node_id=int(data["node_id"]), name=str(data["name"]), index=int(data["index"]),
                   counts={k: int(v) for k, v in data["counts"].items()}, channels=tuple(data["channels"]),
                   length=int(data["length"]), missing_fraction=[float(v) for v in data["missing_fraction"]])


def _retryable(reason: str) -> bool:
    """A budget refusal is final (the site would refuse again); anything else may be transient."""
    return BUDGET_MARKER not in reason and P.SITE_CONFIG_ERROR not in reason


@dataclass
class ServerRun:
    grid: Grid
    config: RunConfig
    run_dir: Path
    run_name: str
    log: Callable[[str], None] = print
    audit: MessageAudit = field(default_factory=MessageAudit)
    timer: PhaseTimer = field(default_factory=PhaseTimer)
    sites: dict[int, SiteInfo] = field(default_factory=dict)  # node id -> site, the nodes of this run
    state: GlobalState = field(default_factory=GlobalState)
    participation: dict[str, list[list[str]]] = field(default_factory=dict)
    rounds: list[dict] = field(default_factory=list)  # per phase and round: sites asked, used, dropped and why
    completed: list[str] = field(default_factory=list)  # finished phases
    registered: dict[str, SiteInfo] = field(default_factory=dict)  # site name -> info, every site of the run
    resumed_from: dict | None = None  # the progress a resumed run continues ({"phase", "round", ...})
    resumes: list[dict] = field(default_factory=list)  # one entry per resume: where it continued, why it stopped
    poll_s: float = 0.2  # seconds between two looks for replies (a pull is one small request)
    _last_round: dict[str, int] = field(default_factory=dict, repr=False)

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
                    f"federation.num-sites = {fed.num_sites}, federation.min-sites = {fed.min_sites} "
                    f"(a local simulation has one SuperNode per site only with `flwr federation simulation-config "
                    f"--num-supernodes {wanted}` or `flwr run . --federation-config num-supernodes={wanted}`)"
                )
            time.sleep(0.5)

    @property
    def node_ids(self) -> list[int]:
        """The run's site nodes in site-name order."""
        return sorted(self.sites, key=lambda n: (self.sites[n].name, n))

    @property
    def num_channels(self) -> int:
        """Channels of the shared data layout (checked equal across sites in phase 0)."""
        return len(next(iter(self.registered.values())).channels)

    def register_site(self, info: SiteInfo) -> None:
        """Make ``info.node_id`` this run's node of site ``info.name`` (audit shapes, names in the
        participation and audit rows recorded before the site was known). A site with fewer
        than ``MIN_SPLIT_RECORDS`` records in a split is refused (``ValueError`` naming it)."""
        small = {split: info.counts.get(split, 0) for split in SPLIT_NAMES
                 if info.counts.get(split, 0) < MIN_SPLIT_RECORDS}
        if small:
            raise ValueError(
                f"site {info.name!r} has too few records: " + ", ".join(f"{k} = {v}" for k, v in small.items())
                + f"; every split needs at least {MIN_SPLIT_RECORDS} (raise data.min-site-records or give the site "
                "more data)")
        self.sites[info.node_id] = info
        self.registered[info.name] = info
        c = info.counts
        sizes = [c.get(split, 0) for split in SPLIT_NAMES]
        self.audit.register_site(info.node_id, info.name, [*sizes, sum(sizes)],
                                 len(info.channels), info.length)
        old = f"node-{info.node_id}"

        def rename(names: list[str]) -> list[str]:
            return sorted(info.name if s == old else s for s in names)

        for rows in self.participation.values():
            rows[:] = [rename(r) for r in rows]
        for row in self.rounds:
            for key in ("asked", "sites"):
                row[key] = rename(row[key])
            row["dropped"] = {(info.name if s == old else s): why for s, why in row["dropped"].items()}
        for entry in self.audit.entries:
            if entry.node_id == info.node_id:
                entry.site = info.name

    # ------------------------------------------------------------------ messaging

    def _site_key(self, node: int, reply: Message) -> tuple[str, int]:
        """Sort key: the site's name (from the audit, or the reply's own "site" record before
        registration), then the node id."""
        name = self.audit.site_name(node)
        if node not in self.audit.sites and not reply.has_error() and "site" in reply.content.config_records:
            name = str(reply.content.config_records["site"].get("name", name))
        return name, node

    def reply_schema(self, message_type: str, expected_arrays: dict | None = None):
        """The ``server.wire`` schema every reply to ``message_type`` must follow in this run."""
        return reply_schema(message_type, channels=self.num_channels if self.registered else None,
                            config=self.config, expected_arrays=expected_arrays,
                            tuning_rows=len(tuning_rows(self.config)) if self.config.guidance.auto else 0)

    def send(
        self,
        phase: str,
        server_round: int,
        messages: Iterable[Message],
        *,
        expected_arrays: dict[str, dict[str, tuple[int, ...]]] | None = None,
        on_reply: Callable[[Message], None] | None = None,
    ) -> list[Message]:
        """Send, wait (``federation.timeout_for(phase)``), audit every reply, retry or drop failed sites.

        Every reply is matched to the message it answers (``reply_to_message_id``), so an error
        the SuperLink sends in a node's place (a SuperNode that stopped sending heartbeats) is
        filed under that node's site; each is checked against the message type's schema
        (``server.wire``; ``expected_arrays``: {record key: {name: shape}} of the parameters
        sent) and logged as it arrives, with the seconds since the round's messages went out.

        With ``federation.on-site-failure = "retry"`` the round's message is sent again to sites
        that failed (error reply other than a privacy-budget refusal, or no reply within the
        timeout), up to ``federation.max-retries`` times, each time once they are connected again
        (waiting up to ``federation.retry-wait-s``). Returns the successful replies **sorted by
        site name** (aggregation order is deterministic). Fewer than ``federation.min-sites`` of
        them stops the run with a ``TooFewSitesError`` naming the sites that failed, why and when.
        ``on_reply`` sees every reply (also errors) right after its audit.
        """
        fed = self.config.federation
        pending = list(messages)
        message_type = pending[0].metadata.message_type if pending else ""
        schema = self.reply_schema(message_type, expected_arrays)
        asked = sorted({self.audit.site_name(m.metadata.dst_node_id) for m in pending})
        retries = fed.max_retries if fed.on_site_failure == "retry" else 0
        ok: dict[int, Message] = {}
        failed: dict[int, str] = {}
        attempt = 0
        while True:
            start = time.monotonic()
            timeout = fed.timeout_for(phase)
            for received, (node, reply) in enumerate(self._exchange(pending, timeout), start=1):
                elapsed = time.monotonic() - start
                entry = self.audit.check(phase, server_round, reply, schema, node_id=node)
                if attempt:
                    entry.attempt = attempt
                if on_reply is not None:
                    on_reply(reply)
                if reply.has_error():
                    failed[node] = f"{entry.reason} ({elapsed:.0f} s into the round, at {entry.at} UTC)"
                    self.log(f"[{phase}] round {server_round}: {self._site_key(node, reply)[0]} failed after "
                             f"{elapsed:.1f} s: {entry.reason}")
                else:
                    ok[node] = reply
                    failed.pop(node, None)
                    self.log(f"[{phase}] round {server_round}: {self._site_key(node, reply)[0]} replied after {elapsed:.1f} s ({received}/{len(pending)})")
            for m in pending:
                node = m.metadata.dst_node_id
                if node not in ok and node not in failed:
                    failed[node] = (f"no reply within {timeout:g} s (federation timeout for {phase}; gave up at "
                                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC)")
            again = [m for m in pending if m.metadata.dst_node_id in failed and _retryable(failed[m.metadata.dst_node_id])]
            if not again or attempt >= retries:
                break
            attempt += 1
            names = ", ".join(self.audit.site_name(m.metadata.dst_node_id) for m in again)
            self.log(f"[{phase}] round {server_round}: retry {attempt}/{retries} for {names} "
                     f"(federation.on-site-failure = 'retry')")
            self._wait_until_connected([m.metadata.dst_node_id for m in again], fed.retry_wait_s)
            pending = [Message(m.content, dst_node_id=m.metadata.dst_node_id, message_type=m.metadata.message_type,
                               group_id=m.metadata.group_id) for m in again]
        used = [reply for node, reply in sorted(ok.items(), key=lambda item: self._site_key(*item))]
        used_names = [self._site_key(node, reply)[0] for node, reply in ok.items()]
        dropped = {self.audit.site_name(n): why for n, why in sorted(failed.items())}
        self.record_round(phase, server_round, asked=asked, used=used_names, message_type=message_type,
                          dropped=dropped, retries=attempt)
        if failed:
            self.log(f"[{phase}] round {server_round}: {len(failed)} site(s) failed: "
                     + "; ".join(f"{s}: {why}" for s, why in dropped.items()))
        if len(used) < fed.min_sites:
            raise TooFewSitesError(
                f"{phase} round {server_round}: {len(used)} site(s) answered, federation.min-sites = "
                f"{fed.min_sites}; failures: " + "; ".join(f"{s}: {why}" for s, why in dropped.items())
            )
        return used

    def _exchange(self, messages: list[Message], timeout: float) -> Iterator[tuple[int, Message]]:
        """Push ``messages``, then yield (node the message went to, its reply) as replies arrive,
        until every message is answered or ``timeout`` seconds have passed. A reply is matched
        by the message it answers, never by its sender (the SuperLink answers for a lost node)."""
        if not messages:
            return
        ids = list(self.grid.push_messages(messages))
        waiting = {mid: m.metadata.dst_node_id for mid, m in zip(ids, messages, strict=True)}
        deadline = time.monotonic() + timeout
        while waiting:
            for reply in self.grid.pull_messages(list(waiting)):
                node = waiting.pop(reply.metadata.reply_to_message_id, None)
                if node is not None:
                    yield node, reply
            if not waiting or time.monotonic() >= deadline:
                return
            time.sleep(self.poll_s)

    def _wait_until_connected(self, nodes: list[int], patience: float) -> None:
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if set(nodes) <= set(self.grid.get_node_ids()):
                return
            time.sleep(1.0)

    def record_round(self, phase: str, server_round: int, *, asked: list[str], used: list[str],
                     dropped: dict[str, str], retries: int = 0, message_type: str = "") -> None:
        """One participation row: ``participation[phase]`` gets the sites used, ``rounds`` the detail."""
        self.participation.setdefault(phase, []).append(sorted(used))
        self.rounds.append({"phase": phase, "round": server_round, "message": message_type, "asked": sorted(asked),
                            "sites": sorted(used), "dropped": dict(sorted(dropped.items())), "retries": retries})

    def query(self, phase: str, message_type: str, content: Callable[[int], RecordDict] | RecordDict,
              *, server_round: int = 0, node_ids: list[int] | None = None,
              expected_arrays: dict | None = None,
              on_reply: Callable[[Message], None] | None = None) -> list[Message]:
        """Send ``message_type`` with ``content`` (or ``content(node_id)``) to every site."""
        nodes = node_ids if node_ids is not None else self.node_ids
        messages = [
            Message(content(n) if callable(content) else content, dst_node_id=n, message_type=message_type,
                    group_id=f"{message_type}-{server_round}")
            for n in nodes
        ]
        return self.send(phase, server_round, messages, expected_arrays=expected_arrays, on_reply=on_reply)

    def site_of(self, reply: Message) -> SiteInfo:
        return self.sites[reply.metadata.src_node_id]

    # ------------------------------------------------------------------ checkpoints

    def resume_round(self, phase: str) -> int:
        """The last finished round of ``phase`` in the checkpoint a resumed run started from (0: none)."""
        if self.resumed_from and self.resumed_from.get("phase") == phase and phase not in self.completed:
            return int(self.resumed_from.get("round", 0))
        return 0

    def progress(self, phase: str, server_round: int) -> dict:
        return {
            "phase": phase, "round": server_round, "completed": list(self.completed),
            "run_name": self.run_name,
            "state": self.state.json_fields(),
            "sites": [s.to_json() for _, s in sorted(self.registered.items())],
            "participation": self.participation, "rounds": self.rounds,
            "timing": self.timer.as_dict(), "audit_entries": len(self.audit.entries),
            "resumes": self.resumes, "config": self.config.to_flat(),
        }

    def checkpoint(self, phase: str, server_round: int) -> None:
        """Atomically save every array of the global state together with the run's progress."""
        folder = self.run_dir / "checkpoint"
        self._last_round[phase] = server_round
        arrays = self.state.arrays()
        progress = self.progress(phase, server_round)
        text = json.dumps(to_jsonable(progress, keep_nonfinite=True))  # NaN / inf kept (Python's JSON), read back by ``resume``
        lines = "".join(json.dumps(asdict(e)) + "\n" for e in self.audit.entries)
        write_bytes_atomic(folder / "audit.jsonl", lines.encode())  # before the state: never fewer rows
        write_npz_atomic(folder / "state.npz", **arrays, **{PROGRESS_KEY: np.array(text)})
        write_json_atomic(folder / "progress.json", progress)  # readable copy

    def complete(self, phase: str) -> None:
        """Mark ``phase`` finished (its timing included) and checkpoint."""
        if phase not in self.completed:
            self.completed.append(phase)
        self.checkpoint(phase, self._last_round.get(phase, 0))

    # ------------------------------------------------------------------ resume

    @classmethod
    def resume(cls, grid: Grid, config: RunConfig, run_dir: Path, run_name: str,
               log: Callable[[str], None] = print) -> ServerRun:
        """The run checkpointed in ``run_dir``, ready to continue (raises ``ValueError`` if its
        config differs from ``config`` in a key outside ``RESUME_MAY_CHANGE``)."""
        folder = run_dir / "checkpoint"
        with np.load(folder / "state.npz") as z:
            progress = json.loads(str(z[PROGRESS_KEY]))
            arrays = {k: z[k] for k in z.files if k != PROGRESS_KEY}
        saved = progress["config"]
        now = config.to_flat()
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in RESUME_MAY_CHANGE)
        if changed:
            raise ValueError(
                f"output.resume: the run in {str(run_dir)!r} was started with a different config; these keys "
                f"differ: " + ", ".join(f"{k} = {saved.get(k)!r} (now {now.get(k)!r})" for k in changed[:8])
                + f". Only {sorted(RESUME_MAY_CHANGE)} may change on resume.")
        json_fields = progress.get("state", {**progress.get("scalars", {}), **progress.get("json_state", {})})
        state = GlobalState.from_checkpoint(arrays, json_fields)  # (older checkpoints: "scalars", "json_state")
        timing = {k: v for k, v in progress.get("timing", {}).items() if k != "total"}
        run = cls(grid=grid, config=config, run_dir=run_dir, run_name=run_name, log=log,
                  timer=PhaseTimer(timing, progress.get("timing", {}).get("total", 0.0)), state=state,
                  participation=progress.get("participation", {}), rounds=progress.get("rounds", []),
                  completed=list(progress.get("completed", [])), resumed_from=progress,
                  resumes=list(progress.get("resumes", [])))
        for data in progress.get("sites", []):
            info = SiteInfo.from_json(data)
            run.registered[info.name] = info
        audit_file = folder / "audit.jsonl"
        if audit_file.is_file():
            rows = audit_file.read_text().splitlines()[: int(progress.get("audit_entries", 0))]
            run.audit.entries = [AuditEntry(**json.loads(row)) for row in rows]
            run.audit.arrays_checked = sum(len(e.arrays) for e in run.audit.entries)
        return run
