"""Cost of influence-guided sampling: ours against the public TarDiff code's method, and the floor.

For each data shape (eICU 3 x 288, MIMIC-III 7 x 24) and batch size it times, in ONE
interleaved run (every repetition runs every variant once, in a rotating order, after one
warm-up each; the median over repetitions is reported), with the ``paper`` U-Net (the public
code's network, 22.6 M parameters) and the ``paper`` GRU classifier (the public code's):

* unguided            U-Net forward + DDIM(eta = 1) update
* public              the public code's guided DDIM step, reimplemented here as that code runs
                      it (microsoft/TimeCraft, TarDiff/ldm/models/diffusion/guided_ddim.py and
                      ldm/modules/guidance_scorer.py ``GradDotCalculator``): DDIM update from
                      eps, then grad_x < n(grad_theta mean_i L_i), n(G) > with n(v) = v / (||v|| + 1e-6)
                      by double backprop over the whole batch, and x <- (1 - s) x + s * s * grad
                      (its ``gd_scale`` multiplies the gradient and the mix)
* double_backprop     our per-sample objective grad_x sum_i < grad_theta L_i, g > by double backprop
* jvp                 the same by forward-mode AD in theta, then reverse mode in x
* central_difference  the same by two input-gradient passes at theta +- eps g (eps chosen once
                      against jvp on 8 samples, ``choose_fd_step``; the choice is printed)
* cd_vmap             central difference with the two passes batched into one by torch.func.vmap
* floor               U-Net forward + 2 x (classifier forward + input-gradient backward), the
                      least any two-pass guided step can cost

With ``--compile`` it adds ``unguided_compiled`` and ``floor_compiled``: the same with the U-Net
and the classifier wrapped by ``torch.compile`` (inductor; its one-time compile cost is printed
separately), to see whether compiling pays on this device.

It prints per-step ms, per-sample ms for a ``--steps``-step sampler (per step x steps / batch),
samples/s, ratios to unguided, to the public step and to the floor, and each gradient's
relative error against double backprop (the public method optimizes a different, batch-coupled
objective; its error column compares it with nothing). Random weights: cost does not depend on
training. Usage:

    python benchmarks/guided_step.py [--batches 16,64] [--shapes 3x288,7x24] [--repeats 3]
                                     [--threads 1] [--steps 20] [--device cpu] [--small]

The machine this runs on may be shared: interleaving spreads load changes over all variants,
but absolute times move with the load; read the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from tardiff_common.diffusion.samplers import DDIMSampler
from tardiff_common.diffusion.schedule import NoiseSchedule
from tardiff_common.influence.guidance import GuidanceConfig, InfluenceGuidance
from tardiff_common.influence.influence_gradient import (
    _direction_by_name,
    influence_grad_central_difference,
    influence_grad_double_backprop,
    influence_grad_jvp,
    relative_error,
)
from tardiff_common.models.classifier import ClassifierConfig, build_classifier, per_example_loss
from tardiff_common.models.unet1d import UNet1D, UNet1DConfig
from tardiff_common.pipeline.config import RunConfig
from tardiff_common.pipeline.phases import resolve_device

VARIANTS = ("unguided", "public", "double_backprop", "jvp", "central_difference", "cd_vmap", "floor",
            "unguided_compiled", "floor_compiled")
STEP_INDEX = 10  # a middle step of the sampler (cost does not depend on it)
PUBLIC_SCALE = 1e-5  # the public code's alpha


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- the public method


def public_cached_direction(clf: torch.nn.Module, g: torch.Tensor) -> list[torch.Tensor]:
    """The public code caches n(sum of training gradients) as one tensor per parameter; g is
    already unit-norm, so its n() is g itself up to the 1e-6."""
    parts = list(_direction_by_name(clf, g).values())
    norm = torch.sqrt(sum((p**2).sum() for p in parts))
    return [p / (norm + 1e-6) for p in parts]


def public_compute_gradient(clf: torch.nn.Module, pred_x0: torch.Tensor, label: torch.Tensor,
                            cached: list[torch.Tensor], gd_scale: float) -> torch.Tensor:
    """``GradDotCalculator.compute_gradient``: mean BCE over the batch, its parameter gradient
    (create_graph) l2-normalized, dotted with the cache, differentiated w.r.t. the input.
    (Our classifier takes [B, C, L]; theirs takes [B, L, C] after a transpose, same cost.)"""
    sample = pred_x0.detach().requires_grad_(True)
    loss = F.binary_cross_entropy_with_logits(clf(sample), label.float())
    params = list(clf.parameters())
    grads = torch.autograd.grad(loss, params, create_graph=True)
    norm = torch.sqrt(sum((gp**2).sum() for gp in grads))
    dot = sum((gp / (norm + 1e-6) * c).sum() for gp, c in zip(grads, cached))
    return torch.autograd.grad(dot, sample)[0] * gd_scale


class PublicDDIM:
    """The public ``GuideDDIMSampler`` step at one index: eps -> pred_x0 -> x_prev (eta = 1),
    then x_prev <- (1 - s) x_prev + s * score with score = compute_gradient(pred_x0) (x s)."""

    def __init__(self, sampler: DDIMSampler, index: int):
        abar = sampler.schedule.alphas_cumprod
        t = sampler.timesteps[index]
        self.t = t
        self.a_t = float(abar[t])
        self.a_prev = float(abar[sampler.timesteps[index + 1]]) if index + 1 < len(sampler.timesteps) else 1.0
        self.sigma = sampler.eta * ((1 - self.a_prev) / (1 - self.a_t) * (1 - self.a_t / self.a_prev)) ** 0.5

    def step(self, unet, clf, x, y, noise, cached, s):
        with torch.no_grad():
            e_t = unet(x, torch.full((x.shape[0],), self.t, device=x.device, dtype=torch.long), y)
            pred_x0 = (x - (1 - self.a_t) ** 0.5 * e_t) / self.a_t**0.5
            dir_xt = (1.0 - self.a_prev - self.sigma**2) ** 0.5 * e_t
            img_hat = self.a_prev**0.5 * pred_x0 + dir_xt + self.sigma * noise
        with torch.enable_grad():
            score = public_compute_gradient(clf, pred_x0, y, cached, s)
        return (1 - s) * img_hat + score * s


# ----------------------------------------------------------------------------- our variants


def cd_vmap_grad(clf: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    """Central difference with the theta + eps g and theta - eps g passes batched by vmap."""
    params = {n: p.detach() for n, p in clf.named_parameters()}
    direction = _direction_by_name(clf, g)
    stacked = {n: torch.stack([p + eps * direction[n], p - eps * direction[n]]) for n, p in params.items()}

    def loss(p, xi):
        return per_example_loss(functional_call(clf, p, (xi,)), y).sum()

    plus_minus = vmap(grad(loss, argnums=1), in_dims=(0, None))(stacked, x.detach())
    return (plus_minus[0] - plus_minus[1]) / (2 * eps)


def build_variants(unet, clf, sampler, x, y, g, device, guidances, fd_eps) -> dict[str, Callable[[], torch.Tensor]]:
    """One zero-argument callable per variant, all on the same x_t, labels, noise and step
    (``cd_vmap`` only when the central difference got a step ``fd_eps``)."""
    noise = torch.randn_like(x)
    t = torch.full((x.shape[0],), sampler.timesteps[STEP_INDEX], device=device, dtype=torch.long)
    public = PublicDDIM(sampler, STEP_INDEX)
    cached = public_cached_direction(clf, g)

    def moments():
        with torch.no_grad():
            return sampler.moments(unet(x, t, y), STEP_INDEX, x)

    def unguided():
        m = moments()
        return m.mean + m.std * noise

    def ours(method):
        def step():
            return guidances[method].step(moments(), noise, y)
        return step

    def cd_vmap():
        m = moments()
        return m.mean + 10.0 * m.variance * cd_vmap_grad(clf, m.x0_hat, y, g, fd_eps) + m.std * noise

    def floor():
        with torch.no_grad():
            unet(x, t, y)
        for _ in range(2):
            xi = x.detach().requires_grad_(True)
            torch.autograd.grad(per_example_loss(clf(xi), y).sum(), xi)

    fns = {"unguided": unguided, "public": lambda: public.step(unet, clf, x, y, noise, cached, PUBLIC_SCALE),
           "double_backprop": ours("double_backprop"), "jvp": ours("jvp"),
           "central_difference": ours("central_difference"), "cd_vmap": cd_vmap, "floor": floor}
    if fd_eps is None:
        fns.pop("cd_vmap")
    return fns


def compiled_variants(unet, clf, sampler, x, y, device) -> tuple[dict[str, Callable[[], torch.Tensor]], float]:
    """``unguided`` and ``floor`` with ``torch.compile``d U-Net and classifier, and the seconds
    their first calls (compilation) took."""
    cunet, cclf = torch.compile(unet, dynamic=False), torch.compile(clf, dynamic=False)
    noise = torch.randn_like(x)
    t = torch.full((x.shape[0],), sampler.timesteps[STEP_INDEX], device=device, dtype=torch.long)

    def unguided_compiled():
        with torch.no_grad():
            m = sampler.moments(cunet(x, t, y), STEP_INDEX, x)
        return m.mean + m.std * noise

    def floor_compiled():
        with torch.no_grad():
            cunet(x, t, y)
        for _ in range(2):
            xi = x.detach().requires_grad_(True)
            torch.autograd.grad(per_example_loss(cclf(xi), y).sum(), xi)

    start = time.perf_counter()
    unguided_compiled()
    floor_compiled()
    _sync(device)
    return {"unguided_compiled": unguided_compiled, "floor_compiled": floor_compiled}, time.perf_counter() - start


def interleaved(fns: dict[str, Callable], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Wall seconds of each fn per repetition; every repetition runs all fns, order rotated."""
    for fn in fns.values():  # warm-up (and the central difference's one-time step choice)
        fn()
    _sync(device)
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            fns[n]()
            _sync(device)
            times[n].append(time.perf_counter() - start)
    return times


def accuracy(clf, unet, sampler, x, y, g, device, fd_eps: float | None) -> dict[str, float]:
    """Relative error of each influence gradient against double backprop at the step's x0_hat."""
    t = torch.full((x.shape[0],), sampler.timesteps[STEP_INDEX], device=device, dtype=torch.long)
    with torch.no_grad():
        x0 = sampler.moments(unet(x, t, y), STEP_INDEX, x).x0_hat
    ref = influence_grad_double_backprop(clf, x0, y, g)
    out = {"double_backprop": 0.0, "jvp": relative_error(influence_grad_jvp(clf, x0, y, g), ref)}
    if fd_eps is not None:
        out["central_difference"] = relative_error(influence_grad_central_difference(clf, x0, y, g, eps=fd_eps), ref)
        out["cd_vmap"] = relative_error(cd_vmap_grad(clf, x0, y, g, fd_eps), ref)
    else:  # the central difference fell back to jvp
        out["central_difference"] = out["jvp"]
    return out


def bench(channels: int, length: int, batch: int, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    default = RunConfig()
    unet_cfg = UNet1DConfig.paper(channels) if not args.small else replace(default.unet, in_channels=channels)
    clf_cfg = ClassifierConfig.paper() if not args.small else default.classifier
    unet = UNet1D(unet_cfg).to(device).eval()
    clf = build_classifier(channels, clf_cfg).to(device).eval()
    n_params = sum(p.numel() for p in clf.parameters())
    g = torch.randn(n_params, device=device)
    g = g / g.norm()
    sampler = DDIMSampler(NoiseSchedule.from_name("sqrt_linear", 200), num_inference_steps=args.steps, eta=1.0)
    x = torch.randn(batch, channels, length, device=device)
    y = (torch.arange(batch, device=device) % 2).long()
    guidances = {m: InfluenceGuidance(clf, g, GuidanceConfig(scale=10.0, method=m))
                 for m in ("double_backprop", "jvp", "central_difference")}
    with torch.no_grad():  # the central difference's one-time step choice, on this step's x0_hat
        t = torch.full((batch,), sampler.timesteps[STEP_INDEX], device=device, dtype=torch.long)
        x0 = sampler.moments(unet(x, t, y), STEP_INDEX, x).x0_hat
    guidances["central_difference"].influence_grad(x0, y)
    choice = guidances["central_difference"].fd_choice
    fd_eps = choice.eps
    fns = build_variants(unet, clf, sampler, x, y, g, device, guidances, fd_eps)
    compile_s = None
    if args.compile:
        compiled, compile_s = compiled_variants(unet, clf, sampler, x, y, device)
        fns.update(compiled)
    selected = {n: f for n, f in fns.items() if n in args.variants}
    times = interleaved(selected, args.repeats, device)
    return {"shape": f"{channels}x{length}", "batch": batch, "times": times, "fd_note": choice.message,
            "errors": accuracy(clf, unet, sampler, x, y, g, device, fd_eps),
            "unet_params": sum(p.numel() for p in unet.parameters()), "clf_params": n_params, "compile_s": compile_s}


def report(res: dict, steps: int) -> None:
    med = {n: statistics.median(v) for n, v in res["times"].items()}
    b = res["batch"]
    u, pub, flo = med.get("unguided"), med.get("public"), med.get("floor")
    print(f"\n== {res['shape']}, batch {b}  (U-Net {res['unet_params'] / 1e6:.2f} M, classifier "
          f"{res['clf_params'] / 1e6:.2f} M parameters; medians of {len(next(iter(res['times'].values())))} "
          f"interleaved repetitions) ==")
    print(f"   {res['fd_note']}")
    if res.get("compile_s") is not None:
        print(f"   torch.compile: first calls (compilation) took {res['compile_s']:.1f} s wall")
    print(f"{'variant':20s} {'ms/step':>9s} {'ms/sample':>10s} {'samples/s':>10s} {'x unguided':>10s} "
          f"{'public/this':>11s} {'x floor':>8s} {'rel.err':>8s}")
    for n in VARIANTS:
        if n not in med:
            continue
        s = med[n]
        per_sample = s * steps / b
        label = "central_diff -> jvp" if n == "central_difference" and "using jvp" in res["fd_note"] else n
        err = res["errors"].get(n)
        cols = [f"{label:20s}", f"{s * 1e3:9.1f}", f"{per_sample * 1e3:10.1f}", f"{1 / per_sample:10.2f}",
                f"{s / u:10.2f}" if u else f"{'':10s}", f"{pub / s:11.2f}" if pub else f"{'':11s}",
                f"{s / flo:8.2f}" if flo else f"{'':8s}", f"{err:8.1e}" if err is not None else f"{'-':>8s}"]
        print(" ".join(cols))
    exact = {n: med[n] for n in ("double_backprop", "jvp", "central_difference", "cd_vmap")
             if n in med and res["errors"].get(n, 1.0) <= 1e-3}
    if exact and pub and flo:
        best = min(exact, key=exact.__getitem__)
        print(f"fastest exact (rel. err <= 1e-3): {best}: {pub / exact[best]:.2f} x the public method's samples/s "
              f"(target >= 3), {exact[best] / flo:.2f} x the floor (target <= 1.15)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="16,64")
    parser.add_argument("--shapes", default="3x288,7x24")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="sampler steps for per-sample cost (public code: 20)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--small", action="store_true", help="the default preset's U-Net and classifier (CNN)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd unguided step and floor")
    args = parser.parse_args()
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{'default-preset' if args.small else 'paper'} models, per-sample cost for {args.steps} steps")
    for shape in args.shapes.split(","):
        channels, length = (int(v) for v in shape.lower().split("x"))
        for batch in (int(b) for b in args.batches.split(",")):
            report(bench(channels, length, batch, args, device), args.steps)


if __name__ == "__main__":
    main()
