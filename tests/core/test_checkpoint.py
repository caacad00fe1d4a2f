"""The one checkpoint format (``checkpoint.TrainedTarDiff``): round trip, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tardiff_common.checkpoint import TrainedTarDiff, join_diffusion_arrays, split_diffusion_arrays
from tardiff_common.data.normalize import ZScoreNormalizer
from tardiff_common.diffusion.ema import EMA
from tardiff_common.influence.gradient_sum import GradientSum
from tardiff_common.pipeline.config import preset
from tardiff_common.pipeline.phases import new_classifier, new_unet

CHANNELS = 3


def trained(config, seed: int = 0) -> TrainedTarDiff:
    torch.manual_seed(seed)
    classifier = new_classifier(config, CHANNELS, torch.device("cpu"))
    unet = new_unet(config, CHANNELS, torch.device("cpu"))
    ema = EMA(unet, 0.9)
    with torch.no_grad():  # make the EMA differ from the live U-Net
        for p in unet.parameters():
            p.add_(torch.randn_like(p))
    size = sum(p.numel() for p in classifier.parameters() if p.requires_grad)
    G = GradientSum(torch.randn(size, dtype=torch.float64), 17)
    return TrainedTarDiff(normalizer=ZScoreNormalizer(np.arange(1.0, 4.0), np.full(3, 2.0)), classifier=classifier,
                          gradient_sum=G, unet=unet, ema=ema)


def test_save_load_round_trip_is_exact(tmp_path):
    config = preset("tiny")
    original = trained(config)
    original.save(tmp_path / "model.npz")
    loaded = TrainedTarDiff.load(tmp_path / "model.npz", config)
    a, b = original.to_arrays(), loaded.to_arrays()
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert loaded.gradient_sum.count == 17
    torch.testing.assert_close(loaded.direction, original.direction)
    x = np.random.default_rng(0).normal(size=(4, CHANNELS, 16)).astype(np.float32)
    np.testing.assert_array_equal(loaded.normalizer.transform(x), original.normalizer.transform(x))
    # the EMA copy (the sampler) and the live U-Net are kept apart
    assert not torch.equal(next(loaded.generator.parameters()), next(loaded.unet.parameters()))


def test_loading_keeps_the_callers_random_state(tmp_path):
    config = preset("tiny")
    trained(config).save(tmp_path / "model.npz")
    torch.manual_seed(5)
    TrainedTarDiff.load(tmp_path / "model.npz", config)
    after_load = torch.rand(3)
    torch.manual_seed(5)
    torch.testing.assert_close(after_load, torch.rand(3))


def test_missing_group_and_wrong_architecture_are_named(tmp_path):
    config = preset("tiny")
    arrays = trained(config).to_arrays()
    with pytest.raises(ValueError, match="'classifier'"):
        TrainedTarDiff.from_arrays({k: v for k, v in arrays.items() if not k.startswith("classifier/")}, config)
    with pytest.raises(ValueError, match="gradient_sum/count"):
        TrainedTarDiff.from_arrays({k: v for k, v in arrays.items() if k != "gradient_sum/count"}, config)
    bigger = config.with_overrides({"classifier.hidden": config.classifier.hidden * 2})
    with pytest.raises(ValueError, match="classifier"):
        TrainedTarDiff.from_arrays(arrays, bigger)
    with pytest.raises(ValueError, match="no TarDiff checkpoint"):
        TrainedTarDiff.load(tmp_path / "absent.npz", config)


def test_diffusion_join_split_are_inverse():
    model, ema = {"w": np.zeros(2)}, {"w": np.ones(2)}
    joined = join_diffusion_arrays(model, ema)
    assert set(joined) == {"model.w", "ema.w"}
    back_model, back_ema = split_diffusion_arrays(joined)
    np.testing.assert_array_equal(back_model["w"], model["w"])
    np.testing.assert_array_equal(back_ema["w"], ema["w"])
