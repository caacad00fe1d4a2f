"""Make a model Opacus-ready for the duration of a DP computation.

Opacus computes per-sample gradients with module hooks, which ``torch.nn.GRU`` (a fused
kernel) does not support. ``opacus_ready(model)`` swaps every ``nn.GRU`` for Opacus' ``DPGRU``
(Opacus' own fixer, ``opacus.validators.gru.fix``: same maths, same parameter *names* and
shapes), yields, and afterwards copies the (possibly trained) DPGRU parameters back into the
original ``nn.GRU`` objects and puts them back. So a GRU classifier with ``rnn="torch"`` is
switched automatically for DP, and the weights that leave the site keep the plain layout the
server knows; ``rnn="opacus"`` models are left as they are.

Any other module Opacus cannot handle raises ``ValueError`` naming it (``ModuleValidator``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from opacus.validators import ModuleValidator
from opacus.validators.gru import fix as gru_to_dpgru
from torch import nn

__all__ = ["opacus_ready", "validate_for_opacus"]


def validate_for_opacus(model: nn.Module) -> None:
    """Raise ``ValueError`` listing the modules Opacus cannot compute per-sample gradients for."""
    was_training = model.training
    model.train()  # the validator insists on training mode; per-sample gradients in eval mode are fine
    try:
        errors = ModuleValidator.validate(model, strict=False)
    finally:
        model.train(was_training)
    if errors:
        raise ValueError("model is not Opacus-compatible: " + "; ".join(str(e) for e in errors[:3]))


def _replace(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@contextmanager
def opacus_ready(model: nn.Module) -> Iterator[nn.Module]:
    """Swap nn.GRU -> DPGRU in place (weights copied), validate, yield ``model``, swap back."""
    swapped: list[tuple[str, nn.GRU, nn.Module]] = []
    for name, module in list(model.named_modules()):
        if type(module) is nn.GRU:
            dp = gru_to_dpgru(module).to(next(module.parameters()).device)
            dp.train(module.training)
            _replace(model, name, dp)
            swapped.append((name, module, dp))
    try:
        validate_for_opacus(model)
        yield model
    finally:
        for name, original, dp in reversed(swapped):
            trained = dict(dp.named_parameters())
            with torch.no_grad():
                for pname, p in original.named_parameters():
                    p.copy_(trained[pname])
            original.train(dp.training)
            _replace(model, name, original)
