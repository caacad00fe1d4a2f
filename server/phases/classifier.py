"""Phase 1: FedAvg (or FedProx) of the downstream classifier f_theta for ``classifier-rounds``.

The server initializes f_theta with the run seed (the same weights the centralized pipeline
starts from), each round every site trains ``classifier-train.epochs`` local epochs from the
global weights, and Flower's strategy averages the replies weighted by training records
(in site-name order). The weights travel packed (``tardiff_common.protocol``: one flat vector + index).
With ``privacy.dp-sgd-classifier`` the local epochs are DP-SGD at each site; sites over their
privacy budget refuse and are handled by ``server.privacy`` (stop, or drop the site).
A resumed run continues after the last checkpointed round from the saved global weights.
"""

from __future__ import annotations

import torch

from tardiff_common import protocol as P
from tardiff_common.pipeline.phases import new_classifier
from tardiff_common.privacy.plan import validate_privacy_run
from tardiff_common.serialization import module_to_numpy

from ..run import ServerRun
from .rounds import run_fedavg_rounds

__all__ = ["run_classifier_phase", "global_pos_weight"]


def global_pos_weight(run: ServerRun) -> float:
    """n_neg / n_pos over all sites' training splits for "balanced" weighting, else 1."""
    if run.config.classifier_train.class_weighting != "balanced":
        return 1.0
    pos, total = run.state["train_positives"], run.state["train_records"]
    return (total - pos) / pos


def run_classifier_phase(run: ServerRun) -> None:
    cfg = run.config
    validate_privacy_run(cfg)
    run_fedavg_rounds(run, phase="classifier", message_type=P.TRAIN_CLASSIFIER, state_key="classifier",
                      initial=module_to_numpy(new_classifier(cfg, run.num_channels, torch.device("cpu"))),
                      rounds=cfg.federation.classifier_rounds, train_config={"pos-weight": global_pos_weight(run)})
