"""An audit of every message a site sends to the server.

For each reply it records phase, round, site, message type, byte size and the shape of every
array, and it checks that nothing in it is *record-shaped*:

* parameter records must have exactly the names and shapes the server sent out (a weight
  matrix may happen to have a record count as a dimension; its shape is the server's own);
  packed weights (``tardiff_common.protocol``) are one flat vector per dtype, so a packed record must
  hold exactly those vectors, of exactly the lengths of the server's index: an extra array in
  it (record-shaped or not) is refused, as is any length change;
* any other array or metric list must not have a dimension equal to one of the sender's
  record counts (train / guidance / test / all) with only channels C or time L beside it
  (e.g. [n, C, L], [n, C], [n] labels).

A violation raises ``RecordShapedReplyError`` (the run stops; nothing is aggregated).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flwr.app import Message

__all__ = ["MessageAudit", "RecordShapedReplyError", "AuditEntry"]


class RecordShapedReplyError(RuntimeError):
    pass


@dataclass
class AuditEntry:
    phase: str
    round: int
    node_id: int
    site: str
    message_type: str
    bytes: int
    arrays: dict[str, list[int]] = field(default_factory=dict)
    metric_lists: dict[str, int] = field(default_factory=dict)
    error: str = ""
    attempt: int = 0  # 0: the round's first message, k: its k-th retry (federation.on-site-failure = "retry")


@dataclass
class _SiteShape:
    name: str
    counts: set[int]
    channels: int
    length: int


class MessageAudit:
    """Collects ``AuditEntry`` rows and enforces the no-record-shaped-array rule."""

    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []
        self.sites: dict[int, _SiteShape] = {}
        self.arrays_checked = 0
        self.violations: list[str] = []
        # Score histograms (``metrics.histogram_auc``: counts by label in fixed bins, per run) are
        # count vectors of a length fixed by the config, not per-record lists; ``allow_count_vectors``
        # declares that length so a site whose split happens to hold that many records is not refused.
        self.count_vector_lengths: set[int] = set()

    def allow_count_vectors(self, length: int) -> None:
        """Accept metric lists named "...histograms" or "tuning/<i>/<mode>" of exactly ``length`` values."""
        self.count_vector_lengths.add(int(length))

    def _is_count_vector(self, name: str, length: int) -> bool:
        declared = name.endswith("histograms") or (name.startswith("tuning/") and name.endswith(("/tsrtr", "/tstr")))
        return declared and length in self.count_vector_lengths

    def register_site(self, node_id: int, name: str, counts: list[int], channels: int, length: int) -> None:
        self.sites[node_id] = _SiteShape(name, {int(c) for c in counts if int(c) > 0}, int(channels), int(length))

    def site_name(self, node_id: int) -> str:
        return self.sites[node_id].name if node_id in self.sites else f"node-{node_id}"

    def _record_shaped(self, shape: tuple[int, ...], site: _SiteShape | None) -> bool:
        if site is None:
            return False
        data_dims = {site.channels, site.length}
        for i, dim in enumerate(shape):
            if dim in site.counts:
                others = shape[:i] + shape[i + 1 :]
                if all(d in data_dims for d in others):
                    return True
        return False

    def check(self, phase: str, server_round: int, reply: Message,
              expected_arrays: dict[str, dict[str, tuple[int, ...]]] | None = None) -> AuditEntry:
        """Record ``reply``; raise if it carries a record-shaped array or unexpected parameters.

        ``expected_arrays`` maps a record key to {array name: shape} for parameter records.
        """
        node_id = reply.metadata.src_node_id
        site = self.sites.get(node_id)
        entry = AuditEntry(phase=phase, round=server_round, node_id=node_id, site=self.site_name(node_id),
                           message_type=reply.metadata.message_type, bytes=0)
        if reply.has_error():
            entry.error = str(reply.error.reason)[:500]
            self.entries.append(entry)
            return entry
        problems = []
        for key, record in reply.content.array_records.items():
            entry.bytes += record.count_bytes()
            expected = (expected_arrays or {}).get(key)
            if expected is not None and set(record.keys()) != set(expected):
                problems.append(f"record {key!r} has arrays {sorted(set(record.keys()) ^ set(expected))[:3]} "
                                "beyond or missing from the parameters sent")
            for name, array in record.items():
                self.arrays_checked += 1
                shape = tuple(int(d) for d in array.shape)
                entry.arrays[f"{key}/{name}"] = list(shape)
                if expected is not None and name in expected:
                    if tuple(expected[name]) != shape:  # a declared parameter must keep its shape
                        problems.append(f"{key}/{name} has shape {shape}, the server sent {tuple(expected[name])}")
                elif self._record_shaped(shape, site):
                    problems.append(f"{key}/{name} has record-shaped shape {shape}")
        for key, record in reply.content.metric_records.items():
            for name, value in record.items():
                entry.bytes += 8 * (len(value) if isinstance(value, list) else 1)
                if isinstance(value, list):
                    entry.metric_lists[f"{key}/{name}"] = len(value)
                    if self._record_shaped((len(value),), site) and not self._is_count_vector(name, len(value)):
                        problems.append(f"metric {key}/{name} is a list of {len(value)} values (one per record?)")
        for record in reply.content.config_records.values():
            entry.bytes += len(json.dumps({k: (v if not isinstance(v, bytes) else len(v)) for k, v in record.items()}))
        self.entries.append(entry)
        if problems:
            self.violations.extend(problems)
            raise RecordShapedReplyError(
                f"{phase} round {server_round}: the reply of site {entry.site!r} was refused: " + "; ".join(problems)
            )
        return entry

    def summary(self) -> dict:
        """Bytes per (site, message type) summed over rounds, message counts, errors."""
        table: dict[str, dict[str, dict[str, int]]] = {}
        for e in self.entries:
            row = table.setdefault(e.site, {}).setdefault(e.message_type, {"messages": 0, "bytes": 0, "errors": 0})
            row["messages"] += 1
            row["bytes"] += e.bytes
            row["errors"] += int(bool(e.error))
        return {"per_site": table, "replies": len(self.entries), "arrays_checked": self.arrays_checked,
                "violations": list(self.violations)}

    def write_jsonl(self, path: Path) -> None:
        with open(path, "w") as fh:
            for e in self.entries:
                fh.write(json.dumps(asdict(e)) + "\n")
