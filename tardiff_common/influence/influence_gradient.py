"""The influence gradient: grad_x I(x) with I(x) = < grad_theta L(x, y; theta), g >.

I(x) is the first-order decrease of the guidance-set loss when x joins the training set
(g = G / ||G||, see ``gradient_sum``). Its input gradient is a mixed second derivative; it
equals the directional derivative of the *input* gradient along g in parameter space:

    grad_x I(x) = d/de grad_x L(x; theta + e g) |_{e=0}                       (*)

Three exact-in-the-limit ways to compute it, all on the *summed* per-example loss over a
batch, so each sample's gradient is its own (no coupling across the batch):

* ``double_backprop``     — the reference: grad_theta with create_graph, dot g, grad_x.
* ``central_difference``  — (*) by (grad_x L(theta + e g) - grad_x L(theta - e g)) / 2e:
                            two ordinary input-gradient passes, error O(e^2) plus float
                            round-off O(u / e). Only for classifiers smooth in theta: where
                            grad_x L jumps (max pooling, ReLU) a kink between theta - e g and
                            theta + e g costs O(1 / e), for every e. ``choose_fd_step`` checks
                            a step against jvp once and says when to fall back.
* ``jvp``                 — (*) by forward-mode AD in parameter space (torch.func.jvp)
                            followed by reverse mode in x.

``batch_normalized`` reproduces the public TarDiff code for comparison: it takes the mean
batch loss, normalizes its parameter gradient, dots it with g and differentiates w.r.t. x,
so one sample's guidance depends on the rest of its batch.

All functions: model f_theta, x [B, C, L], y [B] long, g [P] -> grad [B, C, L] (dtype of x).
The model is put in eval mode and never modified. cuDNN is switched off for the second-order
methods (double backprop, jvp): its RNN kernels have neither a double backward nor a
forward-mode derivative (the public code does the same); a no-op on the CPU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, jvp

from ..models.classifier import per_example_loss
from .gradient_sum import eval_mode, trainable_parameters

__all__ = [
    "influence_grad_double_backprop",
    "influence_grad_central_difference",
    "influence_grad_jvp",
    "influence_grad_batch_normalized",
    "influence_scores",
    "INFLUENCE_GRAD_METHODS",
    "get_influence_grad",
    "FdStepChoice",
    "choose_fd_step",
    "relative_error",
    "FD_TOLERANCE",
]

FD_TOLERANCE = 1e-3
"""Largest relative error ||cd - exact|| / ||exact|| a central-difference step may have."""


def _direction_by_name(model: nn.Module, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split the flat direction g [P] into tensors shaped like the named trainable parameters."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    total = sum(p.numel() for _, p in named)
    if g.numel() != total:
        raise ValueError(f"direction g has {g.numel()} entries, the classifier has {total} parameters")
    out, offset = {}, 0
    for name, p in named:
        out[name] = g[offset : offset + p.numel()].view_as(p).to(device=p.device, dtype=p.dtype)
        offset += p.numel()
    return out


def _second_order():
    """cuDNN off: its fused RNN supports neither double backward nor forward-mode AD."""
    return torch.backends.cudnn.flags(enabled=False)


def influence_grad_double_backprop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Reference: grad_x < grad_theta sum_i L_i, g > by double backpropagation."""
    with eval_mode(model), torch.enable_grad(), _second_order():
        params = trainable_parameters(model)
        x = x.detach().requires_grad_(True)
        loss = per_example_loss(model(x), y).sum()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        direction = _direction_by_name(model, g)
        influence = sum((gp * d).sum() for gp, d in zip(grads, direction.values()))
        return torch.autograd.grad(influence, x)[0]


def influence_grad_central_difference(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, *, eps: float = 1e-2
) -> torch.Tensor:
    """(*) by a central difference with step ``eps`` along the unit direction g."""
    with eval_mode(model), torch.enable_grad():
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        direction = _direction_by_name(model, g)

        def input_grad(sign: float) -> torch.Tensor:
            shifted = {n: params[n] + sign * eps * direction[n] for n in params}
            xi = x.detach().requires_grad_(True)
            loss = per_example_loss(functional_call(model, shifted, (xi,)), y).sum()
            return torch.autograd.grad(loss, xi)[0]

        return (input_grad(+1.0) - input_grad(-1.0)) / (2.0 * eps)


def influence_grad_jvp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(*) exactly: forward-mode derivative along g in parameter space, then reverse mode in x."""
    with eval_mode(model), torch.enable_grad(), _second_order():
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        direction = _direction_by_name(model, g)
        xi = x.detach().requires_grad_(True)

        def summed_loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return per_example_loss(functional_call(model, p, (xi,)), y).sum()

        _, influence = jvp(summed_loss, (params,), (direction,))
        return torch.autograd.grad(influence, xi)[0]


def influence_grad_batch_normalized(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Public-code form: grad_x < grad_theta mean_i L_i / ||grad_theta mean_i L_i||, g >."""
    with eval_mode(model), torch.enable_grad(), _second_order():
        params = trainable_parameters(model)
        x = x.detach().requires_grad_(True)
        loss = per_example_loss(model(x), y).mean()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        flat = torch.cat([gp.reshape(-1) for gp in grads])
        influence = (flat / flat.norm().clamp_min(1e-12)) @ g.to(flat)
        return torch.autograd.grad(influence, x)[0]


def influence_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample influence I(x_i) = < grad_theta L_i, g > for a batch, [B], by one jvp."""
    with eval_mode(model), torch.no_grad(), _second_order():
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        direction = _direction_by_name(model, g)
        _, scores = jvp(lambda p: per_example_loss(functional_call(model, p, (x,)), y), (params,), (direction,))
        return scores


def relative_error(estimate: torch.Tensor, exact: torch.Tensor) -> float:
    """||estimate - exact|| / ||exact|| over the whole batch (0 when both are zero)."""
    scale = exact.norm().item()
    diff = (estimate - exact).norm().item()
    return diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


@dataclass(frozen=True)
class FdStepChoice:
    """Outcome of ``choose_fd_step``: ``eps`` (None = use ``fallback``), the relative error of
    every step tried, and a sentence saying why."""

    eps: float | None
    errors: dict[float, float] = field(default_factory=dict)
    message: str = ""

    def grad_fn(self) -> Callable[..., torch.Tensor]:
        """The influence gradient to use: central difference at ``eps``, else jvp (exact)."""
        if self.eps is None:
            return influence_grad_jvp
        return functools.partial(influence_grad_central_difference, eps=self.eps)


def choose_fd_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    g: torch.Tensor,
    *,
    eps: float = 1e-2,
    tol: float = FD_TOLERANCE,
    factors: tuple[float, ...] = (10.0, 3.0, 1.0, 1 / 3, 1 / 10),
) -> FdStepChoice:
    """Pick the central-difference step for ``model`` once, on a small batch x [B, C, L].

    A classifier whose ``smooth_in_parameters`` is False (it has kinks, e.g. max pooling) is
    refused outright: no step is right on every batch. Otherwise each step eps * f (f in
    ``factors``) is compared with the exact jvp gradient on (x, y) in the model's dtype, and
    the step with the smallest relative error is kept if that error is at most ``tol``; if none
    is, ``eps`` is None and the caller falls back to jvp. Costs one jvp and len(factors)
    central differences on the batch.
    """
    name = type(model).__name__
    if not getattr(model, "smooth_in_parameters", True):
        return FdStepChoice(None, {}, f"central difference refused for {name}: its input gradient is not "
                                      f"smooth in the parameters (max pooling / kinks), so no step meets "
                                      f"relative error {tol:g} on every batch; using jvp (exact)")
    exact = influence_grad_jvp(model, x, y, g)
    errors = {eps * f: relative_error(influence_grad_central_difference(model, x, y, g, eps=eps * f), exact)
              for f in factors}
    best = min(errors, key=errors.__getitem__)
    tried = ", ".join(f"{e:.1e}: {err:.1e}" for e, err in errors.items())
    if errors[best] <= tol:
        return FdStepChoice(best, errors, f"central difference for {name}: step {best:.1e} "
                                          f"(relative error vs jvp {errors[best]:.1e}; tried {tried})")
    return FdStepChoice(None, errors, f"central difference for {name} cannot meet relative error {tol:g} "
                                      f"against jvp (tried step: error {tried}); using jvp (exact)")


INFLUENCE_GRAD_METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "double_backprop": influence_grad_double_backprop,
    "central_difference": influence_grad_central_difference,
    "jvp": influence_grad_jvp,
    "batch_normalized": influence_grad_batch_normalized,
}


def get_influence_grad(name: str) -> Callable[..., torch.Tensor]:
    try:
        return INFLUENCE_GRAD_METHODS[name]
    except KeyError:
        raise ValueError(f"unknown influence gradient {name!r}; choose one of {sorted(INFLUENCE_GRAD_METHODS)}") from None
