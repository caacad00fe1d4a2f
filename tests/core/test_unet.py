import pytest
import torch

from tardiff_common.models.unet1d import UNet1D, UNet1DConfig


@pytest.mark.parametrize("length", [16, 24, 47, 48])
@pytest.mark.parametrize("config", [UNet1DConfig.tiny(3), UNet1DConfig(in_channels=7)], ids=["tiny", "default"])
def test_output_shape_matches_input_for_any_length(config, length):
    torch.manual_seed(0)
    model = UNet1D(config)
    x = torch.randn(2, config.in_channels, length)
    out = model(x, torch.tensor([3, 150]), torch.tensor([0, 1]))
    assert out.shape == x.shape and out.dtype == x.dtype


def test_label_changes_output_and_null_label_is_default():
    torch.manual_seed(0)
    model = UNet1D(UNet1DConfig.tiny(3)).eval()
    for p in model.label_embedding.parameters():  # make the embedding clearly non-trivial
        torch.nn.init.normal_(p, std=1.0)
    x, t = torch.randn(1, 3, 16), torch.tensor([5])
    a = model(x, t, torch.tensor([0]))
    b = model(x, t, torch.tensor([1]))
    null = model(x, t, torch.tensor([2]))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(model(x, t, None), null)


def test_label_dropout_rate():
    model = UNet1D(UNet1DConfig.tiny(3))
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(20_000, dtype=torch.long)
    dropped = (model.drop_labels(y, g) == model.null_label).float().mean().item()
    assert dropped == pytest.approx(0.1, abs=0.01)


def test_paper_config_size():
    config = UNet1DConfig.paper(3)
    assert (config.dim, config.dim_mults, config.num_res_blocks, config.heads) == (64, (1, 2, 4, 4), 2, 8)
    model = UNet1D(config)
    out = model(torch.randn(1, 3, 288), torch.tensor([10]), torch.tensor([1]))
    assert out.shape == (1, 3, 288)


def test_bad_config_fails_at_construction():
    with pytest.raises(ValueError, match="attention_levels"):
        UNet1DConfig(dim_mults=(1, 2), attention_levels=(2,))
    with pytest.raises(ValueError, match="divisible by groups"):
        UNet1DConfig(dim=12, groups=8)


def test_no_batchnorm_for_opacus():
    model = UNet1D(UNet1DConfig.tiny(3))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
