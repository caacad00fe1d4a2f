"""SecAgg+ (Flower's SecAggPlusWorkflow + secaggplus_mod, driven by server.secagg): the server
recovers the plain sum within the quantization tolerance, and survives a dropout."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from server.run import ServerRun, TooFewSitesError
from server.secagg import quantization_bound, secure_sum
from simulations.local_grid import LocalGrid
from tardiff_common.pipeline.config import RunConfig

SIZE = 2000


def vector_of(node_id: int) -> np.ndarray:
    return np.random.default_rng(node_id).uniform(-3.0, 3.0, size=SIZE)


def make_app(fail_node: int | None = None) -> ClientApp:
    app = ClientApp()

    @app.train(mods=[secaggplus_mod])
    def handler(msg: Message, context: Context) -> Message:
        fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        offset = float(fitins.config["offset"])
        if msg.metadata.dst_node_id == fail_node:
            raise RuntimeError("site went offline after sharing its keys")
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([vector_of(msg.metadata.dst_node_id) + offset]), 1,
                     {"node": msg.metadata.dst_node_id})
        return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)

    return app


def server_run(tmp_path, app, num_nodes=4, **privacy) -> ServerRun:
    flat = {"privacy.secure-aggregation": True, **{f"privacy.{k.replace('_', '-')}": v for k, v in privacy.items()}}
    grid = LocalGrid(app, num_nodes, {})
    return ServerRun(grid=grid, config=RunConfig().with_overrides(flat), run_dir=tmp_path, run_name="t",
                     log=lambda *_: None)


def fitins(nodes, offset=0.0):
    return {n: FitIns(ndarrays_to_parameters([np.zeros(1)]), {"offset": offset}) for n in nodes}


def test_secure_sum_equals_plain_sum_within_quantization(tmp_path):
    run = server_run(tmp_path, make_app())
    nodes = run.grid.node_ids
    result = secure_sum(run, "influence", fitins(nodes))
    plain = sum(vector_of(n) for n in nodes)
    bound = quantization_bound(run.config.privacy, len(nodes))
    assert sorted(result.node_ids) == sorted(nodes)
    assert np.max(np.abs(result.total - plain)) <= bound
    assert np.max(np.abs(result.total - plain)) > 0  # it really went through the quantizer
    # every reply was audited; the plain vectors never left a site (the mod strips them)
    assert len(run.audit.entries) == 4 * len(nodes)
    assert all(not e.arrays for e in run.audit.entries)
    assert {m["node"] for m in result.metrics.values()} == set(nodes)


def test_values_beyond_the_clipping_range_are_clipped(tmp_path):
    run = server_run(tmp_path, make_app(), secagg_clipping_range=2.0)
    result = secure_sum(run, "influence", fitins(run.grid.node_ids))
    plain = sum(np.clip(vector_of(n), -2, 2) for n in run.grid.node_ids)
    assert np.max(np.abs(result.total - plain)) <= quantization_bound(run.config.privacy, 4)


def test_one_dropout_is_tolerated(tmp_path):
    """4 sites, 4 shares, threshold 2: a site that fails after sharing keys is left out of the sum."""
    run = server_run(tmp_path, make_app(fail_node=1002), secagg_num_shares=4, secagg_reconstruction_threshold=2)
    result = secure_sum(run, "influence", fitins(run.grid.node_ids))
    survivors = [n for n in run.grid.node_ids if n != 1002]
    assert sorted(result.node_ids) == survivors
    plain = sum(vector_of(n) for n in survivors)
    assert np.max(np.abs(result.total - plain)) <= quantization_bound(run.config.privacy, 3)
    assert any(e.error and "offline" in e.error for e in run.audit.entries)


def test_too_few_sites_is_an_error(tmp_path):
    run = server_run(tmp_path, make_app(), num_nodes=2)
    with pytest.raises(TooFewSitesError, match="at least 2"):
        secure_sum(run, "influence", fitins(run.grid.node_ids[:1]))


def test_parameters_round_trip_helpers():
    params = ndarrays_to_parameters([np.arange(3.0)])
    assert np.array_equal(parameters_to_ndarrays(params)[0], np.arange(3.0))
