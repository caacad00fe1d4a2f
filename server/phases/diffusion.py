"""Phase 3: FedAvg (or FedProx) of the conditional U-Net eps_phi for ``diffusion-rounds``.

The U-Net and its EMA travel together in one ArrayRecord ("model.<name>", "ema.<name>",
packed into one flat vector + index, ``client.protocol``) so the strategy averages both; each
site continues the global EMA during its local epochs. Replies are averaged in site-name order.
With ``privacy.dp-sgd-diffusion`` the local epochs are DP-SGD (the EMA of DP weights is
post-processing); budget refusals are handled by ``server.privacy``. A resumed run continues
after the last checkpointed round from the saved global weights (U-Net and EMA).
"""

from __future__ import annotations

import torch
from flwr.app import ConfigRecord

from client import protocol as P
from client.app import join_diffusion_arrays
from tardiff_common.pipeline.phases import new_unet
from tardiff_common.serialization import module_to_numpy

from ..privacy import active_nodes, send_private
from ..run import ServerRun
from ..strategies import phase_strategy
from .normalization import normalizer_record

__all__ = ["run_diffusion_phase"]


def run_diffusion_phase(run: ServerRun) -> None:
    cfg = run.config
    init = module_to_numpy(new_unet(cfg, run.num_channels, torch.device("cpu")))
    layout = join_diffusion_arrays(init, init)
    index = P.PackIndex.of(layout)
    start = run.resume_round("diffusion")
    weights = run.state["unet"] if start else layout
    if start:
        run.log(f"[diffusion] resuming after round {start}/{cfg.federation.diffusion_rounds}")
    expected = {P.ARRAYS: index.expected()}
    strategy = phase_strategy(P.TRAIN_DIFFUSION, strategy=cfg.federation.strategy, num_sites=len(run.sites),
                              proximal_mu=cfg.federation.proximal_mu,
                              extra_records={P.NORMALIZER: normalizer_record(run)})
    for r in range(start + 1, cfg.federation.diffusion_rounds + 1):
        messages = strategy.train_messages(r, P.to_packed_record(weights, index), ConfigRecord({}), active_nodes(run))
        replies = send_private(run, "diffusion", r, messages, expected_arrays=expected)
        aggregated, metrics = strategy.aggregate_train(r, replies)
        weights = P.unpack_record(aggregated, index)
        run.state["unet"] = weights
        run.log(f"[diffusion] round {r}/{cfg.federation.diffusion_rounds}: "
                f"{len(replies)} sites, loss {float(metrics['loss']):.4f}")
        run.checkpoint("diffusion", r)
