"""Cost of one influence-guided reverse step vs an unguided one, with paper-sized models.

For each data shape (eICU 3 x 288, MIMIC-III 7 x 24) it times, in one run on this machine:

* unguided step         : U-Net forward + DDIM moments
* guided step, method M : unguided step + influence gradient by M (double_backprop = the
                          public code's reference, central_difference, jvp)
* floor                 : U-Net forward + 2 x (classifier forward + input-gradient backward),
                          the least any exact-in-the-limit guided step can cost
* G caching             : guidance_gradient_sum over a guidance set of 10 % of the training
                          size, relative to one classifier training epoch on the training set

and prints ratios (guided / unguided, fast / reference, fast / floor), samples per second and
the fast-vs-reference relative error. Usage:

    python benchmarks/guided_step.py [--batch 32] [--repeats 3] [--device auto] [--small]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from tardiff_common.diffusion.samplers import DDIMSampler
from tardiff_common.diffusion.schedule import NoiseSchedule
from tardiff_common.influence.gradient_sum import guidance_gradient_sum
from tardiff_common.influence.guidance import GuidanceConfig, InfluenceGuidance
from tardiff_common.influence.influence_gradient import INFLUENCE_GRAD_METHODS
from tardiff_common.models.classifier import ClassifierConfig, build_classifier, per_example_loss
from tardiff_common.models.unet1d import UNet1D, UNet1DConfig
from tardiff_common.pipeline.phases import resolve_device
from tardiff_common.training.classifier import ClassifierTrainConfig, train_classifier


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_shape(channels: int, length: int, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    unet_cfg = UNet1DConfig.paper(channels) if not args.small else UNet1DConfig(in_channels=channels)
    clf_cfg = ClassifierConfig.paper() if not args.small else ClassifierConfig(kind="gru", hidden=64, num_layers=2)
    unet = UNet1D(unet_cfg).to(device).eval()
    clf = build_classifier(channels, clf_cfg).to(device).eval()
    n_train = args.train_size
    x_train = torch.rand(n_train, channels, length) * 2 - 1
    y_train = (torch.rand(n_train) < 0.15).long()
    x_guid, y_guid = x_train[: n_train // 10], y_train[: n_train // 10]

    G = guidance_gradient_sum(clf, x_guid, y_guid)
    g = G.direction().to(device)
    sampler = DDIMSampler(NoiseSchedule.from_name("sqrt_linear", 200), num_inference_steps=50)
    b = args.batch
    x = torch.randn(b, channels, length, device=device)
    y = (torch.arange(b, device=device) % 2).long()
    noise = torch.randn_like(x)
    t = torch.full((b,), sampler.timesteps[25], device=device)

    def unguided_step():
        with torch.no_grad():
            m = sampler.moments(unet(x, t, y), 25, x)
        return m.mean + m.std * noise

    def guided_step(method):
        guidance = InfluenceGuidance(clf, g, GuidanceConfig(scale=100.0, method=method))

        def step():
            with torch.no_grad():
                m = sampler.moments(unet(x, t, y), 25, x)
            return guidance.step(m, noise, y)

        return step

    def floor_step():
        with torch.no_grad():
            unet(x, t, y)
        with torch.backends.cudnn.flags(enabled=False):
            for _ in range(2):
                xi = x.detach().requires_grad_(True)
                loss = per_example_loss(clf(xi), y).sum()
                torch.autograd.grad(loss, xi)

    res = {"shape": f"{channels}x{length}", "batch": b}
    res["unguided_s"] = timed(unguided_step, device, args.repeats)
    res["floor_s"] = timed(floor_step, device, args.repeats)
    for method in ("double_backprop", "central_difference", "jvp"):
        res[f"{method}_s"] = timed(guided_step(method), device, args.repeats)

    ref = INFLUENCE_GRAD_METHODS["double_backprop"](clf, x, y, g)
    for method in ("central_difference", "jvp"):
        fast = INFLUENCE_GRAD_METHODS[method](clf, x, y, g)
        res[f"{method}_rel_err"] = float((fast - ref).norm() / ref.norm())

    def cache_g():
        guidance_gradient_sum(clf, x_guid, y_guid)

    def one_epoch():
        train_classifier(clf, x_train.numpy(), y_train.numpy(), ClassifierTrainConfig(epochs=1, batch_size=64), seed=0)

    res["g_cache_s"] = timed(cache_g, device, 1)
    res["epoch_s"] = timed(one_epoch, device, 1)
    return res


def report(res: dict) -> None:
    u = res["unguided_s"]
    print(f"\n== shape {res['shape']}, batch {res['batch']} ==")
    print(f"unguided step            {u * 1e3:9.1f} ms   ({res['batch'] / u:8.1f} samples*steps/s)")
    print(f"floor (unet + 2 clf f+b) {res['floor_s'] * 1e3:9.1f} ms   = {res['floor_s'] / u:5.2f} x unguided")
    for m in ("double_backprop", "central_difference", "jvp"):
        s = res[f"{m}_s"]
        print(f"guided, {m:18s} {s * 1e3:7.1f} ms   = {s / u:5.2f} x unguided")
    ref = res["double_backprop_s"]
    for m in ("central_difference", "jvp"):
        s = res[f"{m}_s"]
        print(f"{m:18s}: {s / ref:5.2f} x reference step, {s / res['floor_s']:5.2f} x floor, "
              f"rel. error vs reference {res[f'{m}_rel_err']:.1e}")
    print(f"G caching over 10 % guidance set: {res['g_cache_s']:.2f} s = "
          f"{res['g_cache_s'] / res['epoch_s']:.3f} x one classifier epoch ({res['epoch_s']:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=320)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="default-preset models instead of paper-sized ones")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{'default-preset' if args.small else 'paper-sized'} models")
    for channels, length in ((3, 288), (7, 24)):
        report(bench_shape(channels, length, args, device))
    np.random.seed(0)


if __name__ == "__main__":
    main()
