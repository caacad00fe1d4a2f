"""The trained TarDiff models and their one checkpoint format, shared by the centralized run and
the federated server.

``TrainedTarDiff`` holds what phases 0-3 produce: the normalizer, the downstream classifier
theta*, the guidance gradient sum G (g = G / ||G|| is the influence direction) and the
conditional U-Net with its EMA copy (the EMA copy samples).

Format: one ``.npz`` of flat ``"<group>/<name>"`` arrays (``GROUPS``); the server's global state
keeps its arrays in the same groups, so the federated ``checkpoint/state.npz`` *is* a TarDiff
checkpoint too:

* ``normalizer/<name>`` — ``serialization.normalizer_to_numpy`` (z-score: mean, std [C]; PIT:
  knots per channel);
* ``classifier/<name>`` — theta*'s state dict;
* ``gradient_sum/sum`` [P] float64 — G; ``gradient_sum/count`` [] int64 — its record count;
* ``direction/g`` [P] float32 — g (redundant with G; kept because the server sends it);
* ``unet/model.<name>``, ``unet/ema.<name>`` — the U-Net and its EMA (``join_diffusion_arrays``).

Loading rebuilds the architectures from the run's config (``RunConfig.classifier`` /
``RunConfig.unet``; C from the normalizer) and refuses, naming the entry, a missing group or a
weight that does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .data.normalize import Normalizer
from .diffusion.ema import EMA
from .influence.gradient_sum import GradientSum
from .models.classifier import build_classifier
from .models.unet1d import UNet1D
from .report.run_folder import write_npz_atomic
from .serialization import load_module_numpy, module_to_numpy, normalizer_from_numpy, normalizer_to_numpy

if TYPE_CHECKING:
    from .pipeline.config import RunConfig

__all__ = ["TrainedTarDiff", "DIFFUSION_MODEL", "DIFFUSION_EMA", "join_diffusion_arrays", "split_diffusion_arrays",
           "GROUPS", "group"]

DIFFUSION_MODEL = "model."  # key prefix of the U-Net weights in the "unet" group (and on the wire)
DIFFUSION_EMA = "ema."  # key prefix of its EMA weights
GROUPS = ("normalizer", "classifier", "gradient_sum", "direction", "unet")


def join_diffusion_arrays(model: dict[str, np.ndarray], ema: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Both U-Net weight sets in one dict ("model.<name>", "ema.<name>"), so FedAvg averages
    them key by key in one ArrayRecord and a checkpoint keeps them in one group."""
    return {**{DIFFUSION_MODEL + k: v for k, v in model.items()},
            **{DIFFUSION_EMA + k: v for k, v in ema.items()}}


def split_diffusion_arrays(arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Inverse of ``join_diffusion_arrays``: (model weights, EMA weights)."""
    model = {k[len(DIFFUSION_MODEL):]: v for k, v in arrays.items() if k.startswith(DIFFUSION_MODEL)}
    ema = {k[len(DIFFUSION_EMA):]: v for k, v in arrays.items() if k.startswith(DIFFUSION_EMA)}
    return model, ema


def group(arrays: dict[str, np.ndarray], name: str, *, source: str = "checkpoint") -> dict[str, np.ndarray]:
    """{name: array} of the ``"<name>/..."`` entries; ``ValueError`` naming ``source`` if there are none."""
    prefix = name + "/"
    out = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"{source}: no {name!r} arrays (expected entries named '{prefix}<name>')")
    return out


def _channels(normalizer: dict[str, np.ndarray]) -> int:
    """C of the data layout, read off the normalizer's arrays."""
    if "mean" in normalizer:
        return int(np.asarray(normalizer["mean"]).size)
    return sum(1 for k in normalizer if k.startswith("knots_x."))


@dataclass
class TrainedTarDiff:
    """The models phases 0-3 produce (see the module docstring); ``ema.shadow`` samples."""

    normalizer: Normalizer
    classifier: nn.Module
    gradient_sum: GradientSum
    unet: UNet1D
    ema: EMA

    @property
    def direction(self) -> torch.Tensor:
        """g = G / ||G||, float32 [P]."""
        return self.gradient_sum.direction()

    @property
    def generator(self) -> UNet1D:
        """The EMA U-Net, the one that samples."""
        return self.ema.shadow

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The flat ``"<group>/<name>"`` arrays of the checkpoint format."""
        out = {f"normalizer/{k}": v for k, v in normalizer_to_numpy(self.normalizer).items()}
        out.update({f"classifier/{k}": v for k, v in module_to_numpy(self.classifier).items()})
        out["gradient_sum/sum"] = self.gradient_sum.to_numpy()
        out["gradient_sum/count"] = np.asarray(self.gradient_sum.count, dtype=np.int64)
        out["direction/g"] = self.direction.numpy()
        unet = join_diffusion_arrays(module_to_numpy(self.unet), module_to_numpy(self.ema.shadow))
        out.update({f"unet/{k}": v for k, v in unet.items()})
        return out

    def save(self, path: str | Path) -> None:
        """Write the checkpoint to ``path`` (.npz) in one atomic step."""
        write_npz_atomic(path, **self.to_arrays())

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], config: RunConfig, *, device: str | torch.device = "cpu",
                    guidance_records: int | None = None, source: str = "checkpoint") -> TrainedTarDiff:
        """Rebuild the models of ``config`` and load ``arrays`` into them. ``guidance_records``
        is G's record count when the arrays do not hold ``gradient_sum/count`` (a server state
        keeps it in its progress JSON)."""
        norm = group(arrays, "normalizer", source=source)
        in_channels = _channels(norm)
        G = group(arrays, "gradient_sum", source=source)
        if "sum" not in G:
            raise ValueError(f"{source}: no 'gradient_sum/sum' array")
        count = int(G["count"]) if "count" in G else guidance_records
        if count is None:
            raise ValueError(f"{source}: no 'gradient_sum/count' array and no guidance_records given")
        model, ema_arrays = split_diffusion_arrays(group(arrays, "unet", source=source))
        with torch.random.fork_rng(devices=[]):  # building draws initial weights: keep the caller's RNG
            classifier = build_classifier(in_channels, config.classifier).to(device)
            unet = UNet1D(replace(config.unet, in_channels=in_channels)).to(device)
        load_module_numpy(classifier, group(arrays, "classifier", source=source), what=f"{source}: classifier")
        load_module_numpy(unet, model, what=f"{source}: U-Net")
        ema = EMA(unet, config.diffusion_train.ema_decay)
        load_module_numpy(ema.shadow, ema_arrays, what=f"{source}: U-Net EMA")
        classifier.eval()
        total = torch.as_tensor(np.asarray(G["sum"], dtype=np.float64))
        return cls(normalizer=normalizer_from_numpy(norm), classifier=classifier,
                   gradient_sum=GradientSum(total, count), unet=unet, ema=ema)

    @classmethod
    def load(cls, path: str | Path, config: RunConfig, *, device: str | torch.device = "cpu",
             guidance_records: int | None = None) -> TrainedTarDiff:
        """Read a checkpoint written by ``save`` (or a federated ``checkpoint/state.npz``)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"no TarDiff checkpoint at {str(path)!r}")
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files if "/" in k}  # skips e.g. the server's progress entry
        return cls.from_arrays(arrays, config, device=device, guidance_records=guidance_records, source=str(path))
