"""Phase 3: FedAvg (or FedProx) of the conditional U-Net eps_phi for ``diffusion-rounds``.

The U-Net and its EMA travel together in one ArrayRecord ("model.<name>", "ema.<name>") so
the strategy averages both; each site continues the global EMA during its local epochs.
With ``privacy.dp-sgd-diffusion`` the local epochs are DP-SGD (the EMA of DP weights is
post-processing); budget refusals are handled by ``server.privacy``.
"""

from __future__ import annotations

import torch
from flwr.app import ConfigRecord

from client import protocol as P
from client.app import join_diffusion_arrays
from tardiff_common.pipeline.phases import new_unet
from tardiff_common.serialization import module_to_numpy

from ..privacy import send_private
from ..run import ServerRun
from ..strategies import phase_strategy
from .normalization import normalizer_record

__all__ = ["run_diffusion_phase"]


def run_diffusion_phase(run: ServerRun) -> None:
    cfg = run.config
    channels = len(next(iter(run.sites.values())).channels)
    weights = module_to_numpy(new_unet(cfg, channels, torch.device("cpu")))
    initial = join_diffusion_arrays(weights, weights)
    expected = {P.ARRAYS: {k: v.shape for k, v in initial.items()}}
    arrays = P.to_array_record(initial)
    strategy = phase_strategy(P.TRAIN_DIFFUSION, strategy=cfg.federation.strategy, num_sites=len(run.sites),
                              proximal_mu=cfg.federation.proximal_mu,
                              extra_records={P.NORMALIZER: normalizer_record(run)})
    for r in range(1, cfg.federation.diffusion_rounds + 1):
        messages = strategy.configure_train(r, arrays, ConfigRecord({}), run.grid)
        replies = send_private(run, "diffusion", r, messages, expected_arrays=expected)
        arrays, metrics = strategy.aggregate_train(r, replies)
        run.state["unet"] = P.from_array_record(arrays)
        run.log(f"[diffusion] round {r}/{cfg.federation.diffusion_rounds}: "
                f"{len(replies)} sites, loss {float(metrics['loss']):.4f}")
        run.checkpoint("diffusion", r)
