"""Framework-neutral (de)serialization: modules, normalizers and nested metrics as flat
``{name: numpy array}`` / ``{name: number}`` dictionaries.

These are what travel in messages (wrapped in Flower records by ``tardiff_common.protocol``) and what
checkpoints hold. Loading validates names and shapes and raises ``ValueError`` naming the
offending entry, so a message from a mismatched model never loads silently.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .data.normalize import CenteredPITNormalizer, Normalizer, ZScoreNormalizer

__all__ = [
    "module_to_numpy",
    "load_module_numpy",
    "normalizer_to_numpy",
    "normalizer_from_numpy",
    "flatten_metrics",
    "unflatten_metrics",
]

_WRAPPER_PREFIX = "_module."  # added by Opacus' GradSampleModule


def module_to_numpy(module: nn.Module) -> dict[str, np.ndarray]:
    """The module's state dict (parameters and buffers) as CPU numpy arrays, wrapper prefix removed."""
    return {
        name.removeprefix(_WRAPPER_PREFIX): tensor.detach().cpu().numpy().copy()
        for name, tensor in module.state_dict().items()
    }


def load_module_numpy(module: nn.Module, arrays: dict[str, np.ndarray], *, what: str = "model") -> None:
    """Load ``arrays`` into ``module`` in place; raise ``ValueError`` on missing, extra or misshaped entries."""
    state = module.state_dict()
    expected = {k.removeprefix(_WRAPPER_PREFIX): k for k in state}
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise ValueError(f"{what}: weights do not match the architecture (missing {missing[:3]}, unexpected {extra[:3]})")
    new_state = {}
    for plain, full in expected.items():
        value = np.asarray(arrays[plain])
        if tuple(value.shape) != tuple(state[full].shape):
            raise ValueError(f"{what}: {plain!r} has shape {value.shape}, expected {tuple(state[full].shape)}")
        new_state[full] = torch.as_tensor(value, dtype=state[full].dtype)
    module.load_state_dict(new_state)


def normalizer_to_numpy(normalizer: Normalizer) -> dict[str, np.ndarray]:
    """z-score: {"mean", "std"}; PIT: {"knots_x.<c>", "knots_u.<c>"} per channel c."""
    if isinstance(normalizer, ZScoreNormalizer):
        return {"mean": normalizer.mean.copy(), "std": normalizer.std.copy()}
    out = {}
    for c, (kx, ku) in enumerate(zip(normalizer.knots_x, normalizer.knots_u)):
        out[f"knots_x.{c}"] = kx.copy()
        out[f"knots_u.{c}"] = ku.copy()
    return out


def normalizer_from_numpy(arrays: dict[str, np.ndarray]) -> Normalizer:
    if "mean" in arrays:
        return ZScoreNormalizer(arrays["mean"], arrays["std"])
    channels = sorted(int(k.split(".")[1]) for k in arrays if k.startswith("knots_x."))
    if not channels:
        raise ValueError("normalizer arrays hold neither z-score nor PIT parameters")
    return CenteredPITNormalizer(
        [arrays[f"knots_x.{c}"] for c in channels], [arrays[f"knots_u.{c}"] for c in channels]
    )


SEPARATOR = "/"


def flatten_metrics(nested: dict, prefix: str = "") -> dict[str, float | list[float]]:
    """{"tstr": {"real": {"auroc": 0.7}}} -> {"tstr/real/auroc": 0.7}; lists of numbers are kept;
    None / NaN become NaN (a MetricRecord holds numbers only); strings are dropped."""
    out: dict[str, float | list[float]] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_metrics(value, name + SEPARATOR))
        elif isinstance(value, (list, tuple)):
            out[name] = [float("nan") if v is None else float(v) for v in value]
        elif isinstance(value, (bool, np.bool_)):
            out[name] = float(value)
        elif value is None:
            out[name] = float("nan")
        elif isinstance(value, (int, float, np.integer, np.floating)):
            out[name] = float(value) if not isinstance(value, (int, np.integer)) else int(value)
    return out


def unflatten_metrics(flat: dict[str, object]) -> dict:
    """Inverse of ``flatten_metrics`` (NaN stays NaN)."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        parts = key.split(SEPARATOR)
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if isinstance(value, float) and math.isnan(value):
            value = float("nan")
        node[parts[-1]] = list(value) if isinstance(value, (list, tuple)) else value
    return out
