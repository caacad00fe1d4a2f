"""An in-process Flower ``Grid``: the ServerApp's messages go straight to ClientApp handlers.

No SuperLink, no Ray, one process: each node has its own ``Context`` (node config with
``partition-id`` / ``num-partitions``, persistent ``state``) exactly as a simulation gives
it, messages are delivered one at a time, and a handler that raises comes back as an error
reply (as Flower returns it). ``intercept`` lets a test inspect or tamper with replies.

Used by the tests (fast, deterministic) and by ``simulations.run_inprocess`` for debugging;
the real ``flwr run .`` path goes through a SuperLink and Ray.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.app.error import Error
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["LocalGrid", "CLIENT_APP_RAISED"]

CLIENT_APP_RAISED = 2  # Flower's error code for an exception in a ClientApp handler


class LocalGrid(Grid):
    """``num_nodes`` nodes served by ``client_app``; ``node_configs`` override per node.

    Node ids are ``first_node_id, first_node_id + 1, ...`` (a new Flower run gets new ids: a
    resume test starts a second grid elsewhere)."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: dict,
        *,
        node_configs: list[dict] | None = None,
        intercept: Callable[[Message], Message] | None = None,
        first_node_id: int = 1000,
    ):
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        # one handler per Flower line: Opacus' logging.basicConfig gives the root logger a second one
        logging.getLogger("flwr").propagate = False
        self.client_app = client_app
        self.intercept = intercept
        self.offline: set[int] = set()
        self.node_ids = [first_node_id + i for i in range(num_nodes)]
        self.contexts = {}
        for i, node_id in enumerate(self.node_ids):
            node_config = {"partition-id": i, "num-partitions": num_nodes}
            if node_configs:
                node_config.update(node_configs[i])
            self.contexts[node_id] = Context(run_id=1, node_id=node_id, node_config=node_config,
                                             state=RecordDict(), run_config=dict(run_config))
        self._replies: dict[str, Message] = {}
        self.delivered: list[Message] = []

    # -- Grid interface ------------------------------------------------------------------

    def set_run(self, run: Run) -> None:  # pragma: no cover - not used in-process
        self._run = run

    @property
    def run(self) -> Run:  # pragma: no cover - not used in-process
        return Run.create_empty(run_id=1)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.node_ids if n not in self.offline]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            msg.metadata.__dict__["_created_at"] = time.time()
            ids.append(msg.metadata.message_id)
            if msg.metadata.dst_node_id in self.offline:
                continue
            self.delivered.append(msg)
            self._replies[msg.metadata.message_id] = self._deliver(msg)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    # -- delivery --------------------------------------------------------------------------

    def _deliver(self, msg: Message) -> Message:
        context = self.contexts[msg.metadata.dst_node_id]
        try:
            reply = self.client_app(msg, context)
        except Exception as err:  # Flower turns handler exceptions into error replies
            reason = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"  # message first, then the traceback
            reply = Message(Error(code=CLIENT_APP_RAISED, reason=reason), reply_to=msg)
        return self.intercept(reply) if self.intercept else reply
