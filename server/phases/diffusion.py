"""Phase 3: FedAvg (or FedProx) of the conditional U-Net eps_phi for ``diffusion-rounds``.

The U-Net and its EMA travel together in one ArrayRecord ("model.<name>", "ema.<name>",
packed into one flat vector + index, ``tardiff_common.protocol``) so the strategy averages both; each
site continues the global EMA during its local epochs. Replies are averaged in site-name order.
With ``privacy.dp-sgd-diffusion`` the local epochs are DP-SGD (the EMA of DP weights is
post-processing); budget refusals are handled by ``server.privacy``. A resumed run continues
after the last checkpointed round from the saved global weights (U-Net and EMA).
"""

from __future__ import annotations

import torch

from tardiff_common import protocol as P
from tardiff_common.pipeline.phases import new_unet
from tardiff_common.serialization import module_to_numpy

from ..run import ServerRun
from .rounds import run_fedavg_rounds

__all__ = ["run_diffusion_phase"]


def run_diffusion_phase(run: ServerRun) -> None:
    cfg = run.config
    init = module_to_numpy(new_unet(cfg, run.num_channels, torch.device("cpu")))
    run_fedavg_rounds(run, phase="diffusion", message_type=P.TRAIN_DIFFUSION, state_key="unet",
                      initial=P.join_diffusion_arrays(init, init), rounds=cfg.federation.diffusion_rounds)
