"""Conditional 1D U-Net for epsilon prediction, eps_phi(x_t, t, y).

Layout follows the paper's backbone: ``dim`` base channels, ``dim_mults`` per level,
``num_res_blocks`` residual blocks per level, attention at the levels in ``attention_levels``
(level i works at length L / 2^i) and in the middle, and a label embedding *added* to the
sinusoidal time embedding. Label index ``num_classes`` is the "null" label used for
classifier-free dropout and unconditional evaluation.

Two styles, chosen in the config:

* ``attention="self"``, ``resample="conv"`` (``default`` / ``tiny`` / ``paper_small``): plain
  multi-head self-attention, strided-conv downsampling, nearest + conv upsampling.
* ``attention="transformer"``, ``resample="resblock"`` (``paper``): the public TarDiff code's
  U-Net (microsoft/TimeCraft, TarDiff/configs/base/mimic_icustay_base.yaml): each attention is
  a transformer block (GroupNorm, 1x1 in, [LayerNorm, self-attention] x 2, LayerNorm, GEGLU
  feed-forward x4, 1x1 out; heads of width ch / heads), and resampling is a residual block
  with 2x average pooling / nearest upsampling inside it; the output conv has kernel 3.
  That code's config conditions its cross-attention on no context (``cond=None``), so its
  second attention is self-attention too; its per-block context projections and null context
  (337,952 parameters) are never used in its forward pass and are not built here.

Every layer is one Opacus can compute per-sample gradients for (Conv1d, Linear, GroupNorm,
Embedding; attention is built from 1x1 convolutions and matmuls), so the same network can be
trained with DP-SGD. No BatchNorm anywhere.

Shapes: x [B, C, L] float, t [B] long, y [B] long (or None = null label) -> eps [B, C, L].
Any length works: inputs are padded to a multiple of 2**(levels-1) and the output cropped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet1DConfig", "UNet1D", "ATTENTION_STYLES", "RESAMPLE_STYLES"]

ATTENTION_STYLES = ("self", "transformer")
RESAMPLE_STYLES = ("conv", "resblock")


@dataclass(frozen=True)
class UNet1DConfig:
    """Architecture of the 1D U-Net. ``paper()`` is the public code's network, ``paper_small()``
    a lighter one of the same depth, ``tiny()`` a test size. ``head_dim`` is used by the
    "self" attention only (the transformer's heads are ch / heads wide); ``out_kernel`` is the
    kernel of the final convolution. ``in_channels = "auto"`` takes the data's channel count,
    set when the network is built (``pipeline.phases.new_unet``); ``UNet1D`` needs an integer."""

    in_channels: int | str = "auto"
    dim: int = 32
    dim_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (2,)
    heads: int = 4
    head_dim: int = 16
    num_classes: int = 2
    label_dropout: float = 0.1
    dropout: float = 0.0
    groups: int = 8
    attention: str = "self"
    resample: str = "conv"
    out_kernel: int = 1

    def __post_init__(self) -> None:
        if self.in_channels != "auto" and not (isinstance(self.in_channels, int) and self.in_channels >= 1):
            raise ValueError(f"in_channels must be 'auto' or a positive integer, got {self.in_channels!r}")
        if self.dim < 1:
            raise ValueError("dim must be positive")
        if not self.dim_mults:
            raise ValueError("dim_mults must name at least one level")
        bad = [lvl for lvl in self.attention_levels if not 0 <= lvl < len(self.dim_mults)]
        if bad:
            raise ValueError(f"attention_levels {bad} outside 0..{len(self.dim_mults) - 1}")
        for width in {self.dim * m for m in self.dim_mults}:
            if width % self.groups:
                raise ValueError(f"channel width {width} is not divisible by groups={self.groups}")
        if self.attention not in ATTENTION_STYLES:
            raise ValueError(f"attention must be one of {ATTENTION_STYLES}, got {self.attention!r}")
        if self.resample not in RESAMPLE_STYLES:
            raise ValueError(f"resample must be one of {RESAMPLE_STYLES}, got {self.resample!r}")
        if self.out_kernel not in (1, 3):
            raise ValueError(f"out_kernel must be 1 or 3, got {self.out_kernel}")
        if self.attention == "transformer":
            bad_heads = sorted({self.dim * m for m in self.dim_mults if (self.dim * m) % self.heads})
            if bad_heads:
                raise ValueError(f"channel widths {bad_heads} are not divisible by heads={self.heads}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")

    @classmethod
    def paper(cls, in_channels: int | str = "auto", num_classes: int = 2) -> UNet1DConfig:
        """The public code's U-Net: 64 channels, mults [1, 2, 4, 4], 2 res blocks, transformer
        attention at downsampling 1, 2 and 4 (levels 0-2) and in the middle, 8 heads, 32 groups,
        residual-block resampling. 22,552,515 parameters at 3 channels (see module docstring)."""
        return cls(in_channels=in_channels, dim=64, dim_mults=(1, 2, 4, 4), num_res_blocks=2,
                   attention_levels=(0, 1, 2), heads=8, num_classes=num_classes, groups=32,
                   attention="transformer", resample="resblock", out_kernel=3)

    @classmethod
    def paper_small(cls, in_channels: int | str = "auto", num_classes: int = 2) -> UNet1DConfig:
        """Lighter network of the same depth: 64 channels, mults [1, 2, 4, 4], 2 res blocks,
        plain self-attention at the two lowest levels only, 8 heads of 32 (13.2 M parameters)."""
        return cls(in_channels=in_channels, dim=64, dim_mults=(1, 2, 4, 4), num_res_blocks=2,
                   attention_levels=(2, 3), heads=8, head_dim=32, num_classes=num_classes)

    @classmethod
    def tiny(cls, in_channels: int | str = "auto", num_classes: int = 2) -> UNet1DConfig:
        return cls(in_channels=in_channels, dim=8, dim_mults=(1, 2), num_res_blocks=1,
                   attention_levels=(1,), heads=2, head_dim=4, num_classes=num_classes, groups=4)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- building blocks


class SinusoidalTimeEmbedding(nn.Module):
    """t [B] -> [B, dim] with sin/cos features at geometric frequencies (Vaswani et al.)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / max(half - 1, 1))
        args = t.float()[:, None] * freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)


class ResidualBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, with the embedding as scale/shift between them.

    ``resample="down"`` / ``"up"`` halves / doubles the length inside the block (2x average
    pooling / nearest repetition of both the normalized input and the skip path), the public
    code's ``resblock_updown``; then dim_in must equal dim_out."""

    def __init__(self, dim_in: int, dim_out: int, emb_dim: int, groups: int, dropout: float,
                 resample: str | None = None):
        super().__init__()
        if resample not in (None, "down", "up"):
            raise ValueError(f"resample must be None, 'down' or 'up', got {resample!r}")
        if resample and dim_in != dim_out:
            raise ValueError("a resampling residual block keeps its width")
        self.resample = resample
        self.norm1 = nn.GroupNorm(groups, dim_in)
        self.conv1 = nn.Conv1d(dim_in, dim_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * dim_out)
        self.norm2 = nn.GroupNorm(groups, dim_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(dim_out, dim_out, 3, padding=1)
        self.skip = nn.Conv1d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool1d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self._resample(F.silu(self.norm1(x))))
        x = self._resample(x)
        scale, shift = self.emb(F.silu(emb))[:, :, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class SelfAttention1D(nn.Module):
    """Multi-head softmax self-attention over the time axis, with a residual connection."""

    def __init__(self, dim: int, heads: int, head_dim: int, groups: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.norm = nn.GroupNorm(groups, dim)
        self.to_qkv = nn.Conv1d(dim, 3 * inner, 1, bias=False)
        self.to_out = nn.Conv1d(inner, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, length = x.shape
        q, k, v = self.to_qkv(self.norm(x)).reshape(b, 3, self.heads, self.head_dim, length).unbind(1)
        attn = torch.einsum("bhdi,bhdj->bhij", q, k).mul(self.head_dim**-0.5).softmax(dim=-1)
        out = torch.einsum("bhij,bhdj->bhdi", attn, v).reshape(b, self.heads * self.head_dim, length)
        return x + self.to_out(out)


class MultiHeadSelfAttention(nn.Module):
    """Softmax self-attention on tokens [B, N, D] -> [B, N, D]: heads of width D / heads,
    one bias-free qkv projection, an output projection with bias (scaled dot product)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        q, k, v = self.to_qkv(h).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, D / heads]
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class TransformerAttention1D(nn.Module):
    """The public code's attention over time, [B, C, L] -> [B, C, L], with a residual:
    GroupNorm (eps 1e-6) and 1x1 conv in; tokens h [B, L, C] go through
    h += attn1(LN h); h += attn2(LN h); h += W_out (a * GELU(gate)) with [a, gate] = W_in LN h
    (GEGLU, inner width 4C); 1x1 conv out."""

    def __init__(self, dim: int, heads: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, dim, eps=1e-6)
        self.proj_in = nn.Conv1d(dim, dim, 1)
        self.norm1, self.attn1 = nn.LayerNorm(dim), MultiHeadSelfAttention(dim, heads)
        self.norm2, self.attn2 = nn.LayerNorm(dim), MultiHeadSelfAttention(dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.ff_in = nn.Linear(dim, 8 * dim)
        self.ff_out = nn.Linear(4 * dim, dim)
        self.proj_out = nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj_in(self.norm(x)).transpose(1, 2)
        h = h + self.attn1(self.norm1(h))
        h = h + self.attn2(self.norm2(h))
        a, gate = self.ff_in(self.norm3(h)).chunk(2, dim=-1)
        h = h + self.ff_out(a * F.gelu(gate))
        return x + self.proj_out(h.transpose(1, 2))


def build_attention(dim: int, cfg: UNet1DConfig) -> nn.Module:
    """The attention block of ``cfg.attention`` style at width ``dim``."""
    if cfg.attention == "transformer":
        return TransformerAttention1D(dim, cfg.heads, cfg.groups)
    return SelfAttention1D(dim, cfg.heads, cfg.head_dim, cfg.groups)


class Level(nn.Module):
    """Residual blocks (+ attention) at one resolution of the encoder or decoder."""

    def __init__(self, dims_in: list[int], dim_out: int, emb_dim: int, cfg: UNet1DConfig, attend: bool):
        super().__init__()
        self.blocks = nn.ModuleList(ResidualBlock(d, dim_out, emb_dim, cfg.groups, cfg.dropout) for d in dims_in)
        self.attns = nn.ModuleList(build_attention(dim_out, cfg) if attend else nn.Identity() for _ in dims_in)


# ----------------------------------------------------------------------------- network


class UNet1D(nn.Module):
    """eps_phi(x_t, t, y): [B, C, L] x [B] x [B] -> [B, C, L]. See module docstring."""

    def __init__(self, config: UNet1DConfig):
        super().__init__()
        if config.in_channels == "auto":
            raise ValueError("UNet1DConfig.in_channels is 'auto': build the network with the data's channel count, "
                             "replace(config, in_channels=C)")
        self.config = cfg = config
        emb_dim = 4 * cfg.dim
        self.time_embedding = nn.Sequential(
            SinusoidalTimeEmbedding(cfg.dim), nn.Linear(cfg.dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.label_embedding = nn.Embedding(cfg.num_classes + 1, emb_dim)
        self.null_label = cfg.num_classes
        self.stem = nn.Conv1d(cfg.in_channels, cfg.dim, 3, padding=1)

        widths = [cfg.dim * m for m in cfg.dim_mults]
        self.down_levels, self.downsamples = nn.ModuleList(), nn.ModuleList()
        skip_widths = [cfg.dim]
        current = cfg.dim
        for level, width in enumerate(widths):
            dims_in = [current] + [width] * (cfg.num_res_blocks - 1)
            self.down_levels.append(Level(dims_in, width, emb_dim, cfg, level in cfg.attention_levels))
            skip_widths += [width] * cfg.num_res_blocks
            current = width
            last = level == len(widths) - 1
            self.downsamples.append(nn.Identity() if last else self._resampler(width, emb_dim, "down"))
            if not last:
                skip_widths.append(width)

        self.mid_block1 = ResidualBlock(current, current, emb_dim, cfg.groups, cfg.dropout)
        self.mid_attn = build_attention(current, cfg)
        self.mid_block2 = ResidualBlock(current, current, emb_dim, cfg.groups, cfg.dropout)

        self.up_levels, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            dims_in = []
            for _ in range(cfg.num_res_blocks + 1):
                dims_in.append(current + skip_widths.pop())
                current = width
            self.up_levels.append(Level(dims_in, width, emb_dim, cfg, level in cfg.attention_levels))
            self.upsamples.append(nn.Identity() if level == 0 else self._resampler(width, emb_dim, "up"))
        self.final_norm = nn.GroupNorm(cfg.groups, current)
        self.final_conv = nn.Conv1d(current, cfg.in_channels, cfg.out_kernel, padding=cfg.out_kernel // 2)
        self.length_multiple = 2 ** (len(widths) - 1)

    def _resampler(self, width: int, emb_dim: int, direction: str) -> nn.Module:
        """Halve / double the length: a residual block (``resample="resblock"``), else a
        stride-2 conv / nearest upsampling + conv."""
        cfg = self.config
        if cfg.resample == "resblock":
            return ResidualBlock(width, width, emb_dim, cfg.groups, cfg.dropout, resample=direction)
        if direction == "down":
            return nn.Conv1d(width, width, 3, stride=2, padding=1)
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv1d(width, width, 3, padding=1))

    @staticmethod
    def _resample_step(module: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return module(h, emb) if isinstance(module, ResidualBlock) else module(h)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        length = x.shape[-1]
        pad = (-length) % self.length_multiple
        if pad:
            x = F.pad(x, (0, pad), mode="replicate")
        if y is None:
            y = torch.full((x.shape[0],), self.null_label, device=x.device, dtype=torch.long)
        emb = self.time_embedding(t) + self.label_embedding(y)

        h = self.stem(x)
        skips = [h]
        for level, down in zip(self.down_levels, self.downsamples):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(h, emb))
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = self._resample_step(down, h, emb)
                skips.append(h)

        h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb)), emb)

        for level, up in zip(self.up_levels, self.upsamples):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))
            h = self._resample_step(up, h, emb)
        out = self.final_conv(F.silu(self.final_norm(h)))
        return out[..., :length]

    def drop_labels(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Classifier-free training: replace each label by the null label with prob. label_dropout."""
        p = self.config.label_dropout
        if p <= 0:
            return y
        drop = torch.rand(y.shape, generator=generator, device="cpu").to(y.device) < p
        return torch.where(drop, torch.full_like(y, self.null_label), y)
