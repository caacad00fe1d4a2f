"""The audit accepts declared score-count vectors but still refuses per-record metric lists."""

from __future__ import annotations

import pytest
from flwr.app import Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server.audit import MessageAudit, RecordShapedReplyError

N = 400  # records in the site's training split: equal to 1 seed x 2 labels x 200 bins on purpose


def reply(name: str, length: int) -> Message:
    """A reply from node 7 carrying one metric list of ``length`` values."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as in simulations.local_grid
    query = Message(RecordDict(), dst_node_id=7, message_type="query.tune")
    return Message(RecordDict({"metrics": MetricRecord({name: [0.0] * length})}), reply_to=query)


def audit() -> MessageAudit:
    a = MessageAudit()
    a.register_site(7, "hospital_a", [N, 60, 60, 60, N + 180], channels=3, length=16)
    a.allow_count_vectors(N)
    return a


def test_declared_histograms_pass_even_when_their_length_equals_a_split_size():
    a = audit()
    a.check("selection", 0, reply("tuning/0/tsrtr", N))
    a.check("generation", 0, reply("tstr/tardiff/site/histograms", N))
    assert a.violations == []


@pytest.mark.parametrize("name", ["labels", "tuning/0/influence", "scores/histogram-like"])
def test_other_record_sized_lists_are_still_refused(name):
    with pytest.raises(RecordShapedReplyError, match="one per record"):
        audit().check("selection", 0, reply(name, N))
