"""Phases 1-3 on one data holder's normalized splits: the classifier theta*, the guidance sum G
over the guidance split, and the conditional U-Net with its EMA -> a ``TrainedTarDiff``.

``train_models`` runs the same phase operations (``phases``) and round schedule as a Flower
site (``federation.classifier-rounds`` / ``diffusion-rounds`` rounds of local epochs, a fresh
optimizer each round, ``site_index`` 0), so a one-site federation reproduces it exactly.
``centralized.fit(config, sites)`` pools the sites first and calls it; the studies call that.

Privacy: with a ``SiteLedger`` (``privacy.ledger_policy``) that plans a DP phase, its rounds run
DP-SGD and G is released clipped and noised (``phases.dp_guidance_sum``), each step recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..checkpoint import TrainedTarDiff
from ..data.normalize import Normalizer
from ..diffusion.ema import EMA
from ..training.classifier import positive_class_weight
from .config import RunConfig
from .phases import (
    NormalizedSplits,
    classifier_round,
    diffusion_round,
    dp_guidance_sum,
    dp_session,
    guidance_sum,
    new_classifier,
    new_unet,
)
from .timing import PhaseTimer

if TYPE_CHECKING:
    from ..privacy.ledger_policy import SiteLedger

__all__ = ["train_models"]


def _dp_session(config: RunConfig, ledger: SiteLedger | None, phase: str, server_round: int) -> dict:
    """{"privacy": a DP-SGD session} for this round of ``phase`` when it runs DP-SGD, else {}."""
    planned = ledger.planned(phase, f"{phase} round {server_round}") if ledger else None
    return {"privacy": dp_session(config, planned, server_round=server_round, site_index=0)} if planned else {}


def train_models(
    config: RunConfig,
    data: NormalizedSplits,
    normalizer: Normalizer,
    *,
    device: torch.device,
    ledger: SiteLedger | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
    timer: PhaseTimer | None = None,
    after_classifier_round: Callable[[int, nn.Module], None] | None = None,
) -> TrainedTarDiff:
    """Phases 1 (classifier), 2 (G) and 3 (U-Net + EMA) on ``data``; timed into ``timer``.
    ``after_classifier_round(r, classifier)`` sees the classifier after each round r (e.g. to keep
    the trajectory theta_1..theta_R of TracIn-style scores)."""
    timer = timer if timer is not None else PhaseTimer()
    with timer("classifier"):
        classifier = new_classifier(config, data.in_channels, device)
        pos_weight = positive_class_weight(data.train_y, config.classifier_train.class_weighting)
        for r in range(1, config.federation.classifier_rounds + 1):
            dp = _dp_session(config, ledger, "classifier", r)
            stats = classifier_round(classifier, data, config, server_round=r, site_index=0, pos_weight=pos_weight,
                                     progress=progress, **dp)
            if dp:
                ledger.record(dp["privacy"].entries, "classifier")
            if after_classifier_round is not None:
                after_classifier_round(r, classifier)
            log(f"[classifier] round {r}/{config.federation.classifier_rounds} loss {stats['loss']:.4f}")

    with timer("influence"):
        planned = ledger.planned("influence") if ledger else None
        if planned is None:
            G = guidance_sum(classifier, data, config)
        else:
            G, _ = dp_guidance_sum(classifier, data, config, noise_multiplier=planned.noise_multiplier, site_index=0)
            ledger.record([planned], "influence")
    log(f"[influence] G over {G.count} guidance records, ||G|| = {float(G.total.norm()):.4g}")

    with timer("diffusion"):
        unet = new_unet(config, data.in_channels, device)
        ema = EMA(unet, config.diffusion_train.ema_decay)
        for r in range(1, config.federation.diffusion_rounds + 1):
            dp = _dp_session(config, ledger, "diffusion", r)
            stats = diffusion_round(unet, ema, data, config, server_round=r, site_index=0, progress=progress, **dp)
            if dp:
                ledger.record(dp["privacy"].entries, "diffusion")
            log(f"[diffusion] round {r}/{config.federation.diffusion_rounds} loss {stats['loss']:.4f}")
    return TrainedTarDiff(normalizer=normalizer, classifier=classifier, gradient_sum=G, unet=unet, ema=ema)
