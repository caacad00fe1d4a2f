"""The hospital's Flower ClientApp: one handler per phase step (see ``client.protocol``).

Each handler turns the server's message into calls of ``tardiff_common.pipeline.phases`` on
this site's records and answers with parameters, sums, counts or metrics only. Synthetic
records stay on the site's disk.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from tardiff_common.data.normalize import ChannelMoments
from tardiff_common.diffusion.ema import EMA
from tardiff_common.pipeline import phases
from tardiff_common.report.run_folder import write_npz_atomic
from tardiff_common.serialization import load_module_numpy, module_to_numpy, normalizer_from_numpy

from . import protocol as P
from .site import Site, load_site

# torch.func's forward-mode decompositions still use torch.jit.script internally
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=DeprecationWarning)

app = ClientApp()


# ----------------------------------------------------------------------------- helpers


def _normalized(site: Site, msg: Message) -> phases.NormalizedSplits:
    normalizer = normalizer_from_numpy(P.from_array_record(msg.content[P.NORMALIZER]))
    return phases.normalize_splits(site.splits, normalizer)


def _classifier(site: Site, arrays: dict[str, np.ndarray]) -> torch.nn.Module:
    model = phases.new_classifier(site.config, site.splits.train.num_channels, site.device)
    load_module_numpy(model, arrays, what="classifier")
    return model


def _site_record(site: Site) -> ConfigRecord:
    return ConfigRecord({"name": site.name, "index": site.index})


def _reply(msg: Message, **records) -> Message:
    return Message(RecordDict(records), reply_to=msg)


# ----------------------------------------------------------------------------- phase 0


@app.query("stats")
def stats(msg: Message, context: Context) -> Message:
    """Per-channel moments of the training split + record counts (for the audit and weights)."""
    site = load_site(context)
    moments = phases.local_moments(site.splits)
    train_y = site.splits.train.y
    counts = {
        "train": len(train_y),
        "guidance": len(site.splits.guidance.y),
        "test": len(site.splits.test.y),
        "train-positives": int(train_y.sum()),
        "guidance-positives": int(site.splits.guidance.y.sum()),
        "test-positives": int(site.splits.test.y.sum()),
        "channels": site.splits.train.num_channels,
        "length": site.splits.train.length,
    }
    summary = site.splits.train.summary()
    return _reply(
        msg,
        **{
            P.MOMENTS: P.to_array_record(dict(zip(("count", "total", "total_sq"), moments.to_arrays()))),
            P.METRICS: MetricRecord({**counts, "missing-fraction": list(summary["missing_fraction"].values())}),
            P.SITE: ConfigRecord({"name": site.name, "index": site.index,
                                  "channels": list(site.splits.train.channels)}),
        },
    )


@app.query("histogram")
def histogram(msg: Message, context: Context) -> Message:
    """Counts of training values on the grid fixed by the global moments."""
    site = load_site(context)
    arrays = P.from_array_record(msg.content[P.MOMENTS])
    global_moments = ChannelMoments.from_arrays([arrays["count"], arrays["total"], arrays["total_sq"]])
    hist = phases.local_histogram(site.splits, global_moments)
    return _reply(msg, **{P.HIST: P.to_array_record({"counts": hist.counts}),
                          P.METRICS: MetricRecord({"num-examples": len(site.splits.train.y)}),
                          P.SITE: _site_record(site)})


# ----------------------------------------------------------------------------- phase 1


@app.train("classifier")
def train_classifier(msg: Message, context: Context) -> Message:
    """Local epochs of f_theta from the global weights (FedAvg / FedProx round)."""
    site = load_site(context)
    data = _normalized(site, msg)
    config = P.config_from_record(msg.content[P.CONFIG])
    model = _classifier(site, P.from_array_record(msg.content[P.ARRAYS]))
    stats = phases.classifier_round(model, data, site.config, server_round=int(config["server-round"]),
                                    site_index=site.index, pos_weight=float(config["pos-weight"]))
    return _reply(msg, **{P.ARRAYS: P.to_array_record(module_to_numpy(model)),
                          P.METRICS: MetricRecord({"num-examples": len(data.train_y), "loss": stats["loss"]}),
                          P.SITE: _site_record(site)})


# ----------------------------------------------------------------------------- phase 2


@app.query("influence")
def influence(msg: Message, context: Context) -> Message:
    """G_k = sum of per-example loss gradients over the guidance split, and its count n_k."""
    site = load_site(context)
    data = _normalized(site, msg)
    model = _classifier(site, P.from_array_record(msg.content[P.CLASSIFIER]))
    g_sum = phases.guidance_sum(model, data, site.config)
    return _reply(msg, **{P.GRADIENT: P.to_array_record({"sum": g_sum.to_numpy()}),
                          P.METRICS: MetricRecord({"count": g_sum.count}),
                          P.SITE: _site_record(site)})


# ----------------------------------------------------------------------------- phase 3


def split_diffusion_arrays(arrays: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """One ArrayRecord carries both weight sets ("model.<name>", "ema.<name>") so FedAvg
    averages them key by key; split them back."""
    model = {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}
    ema = {k[len("ema."):]: v for k, v in arrays.items() if k.startswith("ema.")}
    return model, ema


def join_diffusion_arrays(model: dict[str, np.ndarray], ema: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {**{f"model.{k}": v for k, v in model.items()}, **{f"ema.{k}": v for k, v in ema.items()}}


@app.train("diffusion")
def train_diffusion(msg: Message, context: Context) -> Message:
    """Local epochs of eps_phi from the global weights, carrying the global EMA along."""
    site = load_site(context)
    data = _normalized(site, msg)
    config = P.config_from_record(msg.content[P.CONFIG])
    model_arrays, ema_arrays = split_diffusion_arrays(P.from_array_record(msg.content[P.ARRAYS]))
    unet = phases.new_unet(site.config, data.in_channels, site.device)
    load_module_numpy(unet, model_arrays, what="U-Net")
    ema = EMA(unet, site.config.diffusion_train.ema_decay)
    load_module_numpy(ema.shadow, ema_arrays, what="U-Net EMA")
    stats = phases.diffusion_round(unet, ema, data, site.config, server_round=int(config["server-round"]),
                                   site_index=site.index)
    arrays = join_diffusion_arrays(module_to_numpy(unet), module_to_numpy(ema.shadow))
    return _reply(msg, **{P.ARRAYS: P.to_array_record(arrays),
                          P.METRICS: MetricRecord({"num-examples": len(data.train_y), "loss": stats["loss"]}),
                          P.SITE: _site_record(site)})


# ----------------------------------------------------------------------------- phase 4


@app.query("generate")
def generate(msg: Message, context: Context) -> Message:
    """Sample guided and unguided sets locally, keep them on this site's disk, return metrics."""
    site = load_site(context)
    data = _normalized(site, msg)
    config = P.config_from_record(msg.content[P.CONFIG])
    normalizer = normalizer_from_numpy(P.from_array_record(msg.content[P.NORMALIZER]))
    unet = phases.new_unet(site.config, data.in_channels, site.device)
    load_module_numpy(unet, P.from_array_record(msg.content[P.ARRAYS]), what="U-Net EMA")
    classifier = _classifier(site, P.from_array_record(msg.content[P.CLASSIFIER]))
    direction = torch.as_tensor(P.from_array_record(msg.content[P.DIRECTION])["g"])
    synthetic, influence_means = phases.generate_synthetic_sets(unet, classifier, direction, data, site.config,
                                                                site_index=site.index)
    write_npz_atomic(
        site.output_dir(str(config["run-name"])) / "synthetic.npz",
        **{f"{name}_x": normalizer.inverse_transform(x) for name, (x, _) in synthetic.items()},
        **{f"{name}_y": y for name, (_, y) in synthetic.items()},
    )
    metrics = phases.evaluate_site(classifier, synthetic, data, site.config)
    metrics["influence"] = influence_means
    metrics["synthetic-records"] = int(sum(len(y) for _, y in synthetic.values()))
    return _reply(msg, **{P.METRICS: P.to_metric_record(metrics), P.SITE: _site_record(site)})
