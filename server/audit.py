"""An audit of every message a site sends to the server.

For each reply it records phase, round, site, message type, the bytes received
(``server.wire.reply_bytes``: arrays, metrics and config records) and the shape of every array,
and it checks the reply against the schema of its message type (``server.wire``): exactly the
arrays, metrics and site entries that message type may hold, of the dtypes and shapes the
server derives from the model and the config. Anything else is refused.

A reply to a message type without a schema (the SecAgg+ stages) is checked for
*record-shaped* content instead: no array or metric list may have a dimension equal to one of
the sender's record counts (train / guidance / tuning / test / all) with only channels C or
time L beside it (e.g. [n, C, L], [n, C], [n] labels).

A violation raises ``RecordShapedReplyError`` (the run stops; nothing is aggregated).

Error replies keep Flower's whole reason (a traceback included, when the in-process grid sends
one) in the audit; ``AuditEntry.reason`` is what the run shows: the exception's own message
(``error_message``), or what a Flower error code means (a node that stopped sending heartbeats).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flwr.app import Message
from flwr.common.constant import ErrorCode

from .wire import ReplySchema, reply_bytes, schema_problems

__all__ = ["MessageAudit", "RecordShapedReplyError", "AuditEntry", "error_message", "TRACEBACK_MARK"]

TRACEBACK_MARK = "\nTraceback (most recent call last):"  # where the in-process grid's traceback starts
_FLOWER_RAISED = re.compile(r"^<class '(?:[\w.]*\.)?(\w+)'>:<'(.*)'>$", re.S)  # "<class 'x.ValueError'>:<'msg'>"
_CODE_TEXT = {
    ErrorCode.NODE_UNAVAILABLE: "node unavailable: the SuperNode stopped sending heartbeats (it stopped, crashed "
                                "or lost its connection)",
    ErrorCode.REPLY_MESSAGE_UNAVAILABLE: "its reply expired before the server read it",
    ErrorCode.MESSAGE_UNAVAILABLE: "the message to it expired or was removed (its SuperNode left the federation?)",
    ErrorCode.LOAD_CLIENT_APP_EXCEPTION: "its SuperNode could not load the ClientApp",
}


def error_message(code: int, reason: str) -> str:
    """The one-line cause of an error reply: the exception's own "Type: message" for a ClientApp
    that raised (Flower's "<class 'T'>:<'msg'>" or the in-process grid's "T: msg" + traceback),
    the meaning of the error code otherwise (Flower's own reason kept in parentheses)."""
    text = str(reason).split(TRACEBACK_MARK, 1)[0].strip()
    if code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION:
        match = _FLOWER_RAISED.match(text)
        return f"{match.group(1)}: {match.group(2)}" if match else text or "the ClientApp raised an exception"
    if code in _CODE_TEXT:
        return _CODE_TEXT[code]
    return text or f"error code {code}"


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
    error: str = ""  # an error reply's whole reason, as Flower delivered it (a traceback included)
    attempt: int = 0  # 0: the round's first message, k: its k-th retry (federation.on-site-failure = "retry")
    reason: str = ""  # an error reply's one-line cause (``error_message``)
    code: int = 0  # an error reply's Flower error code
    at: str = ""  # when the reply was read, UTC "YYYY-mm-dd HH:MM:SS"


@dataclass
class _SiteShape:
    name: str
    counts: set[int]
    channels: int
    length: int


class MessageAudit:
    """Collects ``AuditEntry`` rows and enforces the reply schemas (``server.wire``)."""

    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []
        self.sites: dict[int, _SiteShape] = {}
        self.arrays_checked = 0
        self.violations: list[str] = []

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

    def check(self, phase: str, server_round: int, reply: Message, schema: ReplySchema | None = None, *,
              node_id: int | None = None) -> AuditEntry:
        """Record ``reply`` (from ``node_id``: the node the question went to, by default the
        reply's sender); raise ``RecordShapedReplyError`` if it breaks ``schema`` (or, without
        one, carries a record-shaped array or metric list)."""
        node_id = reply.metadata.src_node_id if node_id is None else int(node_id)
        site = self.sites.get(node_id)
        entry = AuditEntry(phase=phase, round=server_round, node_id=node_id, site=self.site_name(node_id),
                           message_type=reply.metadata.message_type, bytes=reply_bytes(reply),
                           at=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()))
        if reply.has_error():
            entry.code = int(reply.error.code)
            entry.error = str(reply.error.reason)
            entry.reason = error_message(entry.code, entry.error)
            self.entries.append(entry)
            return entry
        for key, record in reply.content.array_records.items():
            for name, array in record.items():
                self.arrays_checked += 1
                entry.arrays[f"{key}/{name}"] = [int(d) for d in array.shape]
        for key, record in reply.content.metric_records.items():
            for name, value in record.items():
                if isinstance(value, list):
                    entry.metric_lists[f"{key}/{name}"] = len(value)
        problems = schema_problems(schema, reply) if schema is not None else self._record_shapes(entry, site)
        self.entries.append(entry)
        if problems:
            self.violations.extend(problems)
            raise RecordShapedReplyError(
                f"{phase} round {server_round}: the reply of site {entry.site!r} ({entry.message_type}) was refused: "
                + "; ".join(problems)
            )
        return entry

    def _record_shapes(self, entry: AuditEntry, site: _SiteShape | None) -> list[str]:
        """Schema-less replies: the record-shaped arrays and metric lists of ``entry``."""
        problems = [f"{name} has record-shaped shape {tuple(shape)}" for name, shape in entry.arrays.items()
                    if self._record_shaped(tuple(shape), site)]
        problems += [f"metric {name} is a list of {n} values (one per record?)" for name, n in entry.metric_lists.items()
                     if self._record_shaped((n,), site)]
        return problems

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
