import pytest
import torch

from tardiff_common.models.unet1d import ResidualBlock, TransformerAttention1D, UNet1D, UNet1DConfig


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


# The public code's U-Net (microsoft/TimeCraft, TarDiff/, mimic_icustay_base.yaml, 3 channels)
# has 22,890,211 parameters, of which its per-block context projections (337,920) and null
# context (32) never enter its forward pass; we add one null-label embedding row (256).
PUBLIC_UNET_PARAMETERS = 22_890_211
PUBLIC_UNUSED_PARAMETERS = 337_920 + 32
NULL_LABEL_ROW = 256


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_unet_matches_public_code_size_and_layout():
    config = UNet1DConfig.paper(3)
    assert (config.dim, config.dim_mults, config.num_res_blocks, config.heads) == (64, (1, 2, 4, 4), 2, 8)
    model = UNet1D(config)
    assert _count(model) == PUBLIC_UNET_PARAMETERS - PUBLIC_UNUSED_PARAMETERS + NULL_LABEL_ROW
    # attention at downsampling 1, 2, 4 (full length included) and in the middle, not at 8
    attended = [any(isinstance(a, TransformerAttention1D) for a in level.attns) for level in model.down_levels]
    assert attended == [True, True, True, False]
    assert attended[::-1] == [any(isinstance(a, TransformerAttention1D) for a in lvl.attns) for lvl in model.up_levels]
    assert isinstance(model.mid_attn, TransformerAttention1D)
    assert all(isinstance(d, ResidualBlock) and d.resample == "down" for d in list(model.downsamples)[:-1])
    out = model(torch.randn(1, 3, 288), torch.tensor([10]), torch.tensor([1]))
    assert out.shape == (1, 3, 288)


def test_paper_small_keeps_the_lighter_network():
    model = UNet1D(UNet1DConfig.paper_small(3))
    assert 13.1e6 < _count(model) < 13.3e6
    assert not any(isinstance(m, TransformerAttention1D) for m in model.modules())


@pytest.mark.parametrize("length", [16, 24, 40])
def test_transformer_style_any_length_and_label_conditioning(length):
    torch.manual_seed(0)
    config = UNet1DConfig(in_channels=3, dim=8, dim_mults=(1, 2), attention_levels=(0,), heads=2, groups=4,
                          attention="transformer", resample="resblock", out_kernel=3)
    model = UNet1D(config).eval()
    torch.nn.init.normal_(model.label_embedding.weight, std=1.0)
    x, t = torch.randn(2, 3, length), torch.tensor([3, 7])
    a = model(x, t, torch.tensor([0, 0]))
    assert a.shape == x.shape
    assert not torch.allclose(a, model(x, t, torch.tensor([1, 1])))


def test_transformer_attention_is_softmax_attention_over_time():
    """Permuting time steps (no positional code inside the block) permutes its output."""
    torch.manual_seed(0)
    block = TransformerAttention1D(16, heads=4, groups=4).eval()
    x = torch.randn(2, 16, 12)
    perm = torch.randperm(12)
    torch.testing.assert_close(block(x)[..., perm], block(x[..., perm]), rtol=1e-5, atol=1e-5)


def test_bad_config_fails_at_construction():
    with pytest.raises(ValueError, match="attention_levels"):
        UNet1DConfig(dim_mults=(1, 2), attention_levels=(2,))
    with pytest.raises(ValueError, match="divisible by groups"):
        UNet1DConfig(dim=12, groups=8)
    with pytest.raises(ValueError, match="attention must be one of"):
        UNet1DConfig(attention="cross")
    with pytest.raises(ValueError, match="divisible by heads"):
        UNet1DConfig(dim=8, groups=4, heads=3, attention="transformer")


def test_no_batchnorm_for_opacus():
    model = UNet1D(UNet1DConfig.tiny(3))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_unet_with_weights_is_new_unet_with_those_weights():
    """The meta-device build a site uses per message: same parameters, same outputs, trainable,
    and wrong weights still refused by name."""
    from tardiff_common.pipeline.config import preset
    from tardiff_common.pipeline.phases import new_unet, unet_with_weights
    from tardiff_common.serialization import load_module_numpy, module_to_numpy

    config = preset("tiny")
    device = torch.device("cpu")
    weights = module_to_numpy(new_unet(config.with_overrides({"seed": 3}), 2, device))
    reference = new_unet(config, 2, device)
    load_module_numpy(reference, weights)
    fast = unet_with_weights(config, 2, device, weights)
    assert [(n, p.requires_grad) for n, p in fast.named_parameters()] == \
        [(n, p.requires_grad) for n, p in reference.named_parameters()]
    x, t, y = torch.randn(4, 2, 16), torch.tensor([0, 5, 9, 1]), torch.tensor([0, 1, 0, 1])
    assert torch.equal(fast(x, t, y), reference(x, t, y))
    fast(x, t, y).square().mean().backward()
    assert all(p.grad is not None for p in fast.parameters())
    with pytest.raises(ValueError, match="U-Net EMA"):
        unet_with_weights(config, 2, device, {k: v for k, v in weights.items() if k != next(iter(weights))},
                          what="U-Net EMA")
