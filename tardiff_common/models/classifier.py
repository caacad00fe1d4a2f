"""Downstream classifiers f_theta: [B, C, L] -> one logit [B].

* ``GRUClassifier`` — a bidirectional GRU; ``readout="final"`` feeds the concatenated final
  hidden states of the last layer (forward after step L, backward after step 1) to a linear
  head; ``readout="last_step"`` feeds the last layer's output at the last time step (forward
  after step L, backward after step L only), as the public TarDiff code's ``RNNClassifier``
  does (``ClassifierConfig.paper()``: 2 layers, hidden 256, dropout 0.2 between layers). ``rnn="opacus"``
  swaps ``torch.nn.GRU`` for Opacus' ``DPGRU`` (same parameter names and shapes, built from
  Linear layers) so per-sample gradients exist for differential privacy.
* ``ConvClassifier`` — a small temporal CNN (dilated Conv1d + GELU, global average and max
  pooling). No normalization layer, so absolute levels (a heart rate of 130 vs 80) survive to
  the head; smooth activations keep the influence gradient well defined almost everywhere.

Loss: binary cross-entropy on the logit, L(x, y; theta) = BCEWithLogits(f_theta(x), y).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClassifierConfig", "GRUClassifier", "ConvClassifier", "build_classifier", "CLASSIFIERS", "READOUTS"]

CLASSIFIERS = ("gru", "cnn")
READOUTS = ("final", "last_step")


@dataclass(frozen=True)
class ClassifierConfig:
    """``kind`` in {"gru", "cnn"}; ``readout`` (GRU only) in {"final", "last_step"};
    ``paper()`` is the public code's BiGRU. The defaults (a small CNN) are the run's."""

    kind: str = "cnn"
    hidden: int = 32
    num_layers: int = 3
    bidirectional: bool = True
    dropout: float = 0.0
    rnn: str = "torch"
    readout: str = "final"

    def __post_init__(self) -> None:
        if self.kind not in CLASSIFIERS:
            raise ValueError(f"unknown classifier {self.kind!r}; choose one of {CLASSIFIERS}")
        if self.rnn not in ("torch", "opacus"):
            raise ValueError(f"rnn must be 'torch' or 'opacus', got {self.rnn!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if self.hidden < 1 or self.num_layers < 1:
            raise ValueError("hidden and num_layers must be positive")

    @classmethod
    def paper(cls) -> ClassifierConfig:
        return cls(kind="gru", hidden=256, num_layers=2, bidirectional=True, dropout=0.2, readout="last_step")

    def to_dict(self) -> dict:
        return asdict(self)


class GRUClassifier(nn.Module):
    """GRU over time; logit = Linear([h_fwd_L, h_bwd_1]) of the last layer (``readout="final"``)
    or Linear(output at step L) (``readout="last_step"``)."""

    smooth_in_parameters = True  # sigmoid / tanh gates: grad_x L is smooth in theta

    def __init__(self, in_channels: int, config: ClassifierConfig):
        super().__init__()
        if config.rnn == "opacus":
            from opacus.layers import DPGRU as rnn_cls
        else:
            rnn_cls = nn.GRU
        self.rnn = rnn_cls(
            in_channels,
            config.hidden,
            num_layers=config.num_layers,
            bidirectional=config.bidirectional,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        directions = 2 if config.bidirectional else 1
        self.directions = directions
        self.head = nn.Linear(directions * config.hidden, 1)
        self.readout = config.readout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, h_n = self.rnn(x.transpose(1, 2))  # out [B, L, directions * hidden]; h_n [layers * directions, B, hidden]
        if self.readout == "last_step":
            return self.head(out[:, -1]).squeeze(-1)
        last = h_n[-self.directions :].transpose(0, 1).reshape(x.shape[0], self.head.in_features)
        return self.head(last).squeeze(-1)


class ConvClassifier(nn.Module):
    """Dilated temporal CNN: num_layers x (Conv1d k=5, dilation 2^i, GELU); [mean, max] over
    time; Linear. Receptive field 1 + 4 (2^layers - 1) steps."""

    # the max over time makes grad_x L jump where the arg-max moves with theta: finite
    # differences in theta are unreliable (``influence_gradient.choose_fd_step`` refuses them)
    smooth_in_parameters = False

    def __init__(self, in_channels: int, config: ClassifierConfig):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for i in range(config.num_layers):
            dilation = 2**i
            layers += [nn.Conv1d(width, config.hidden, 5, padding=2 * dilation, dilation=dilation), nn.GELU()]
            width = config.hidden
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(2 * config.hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        pooled = torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=-1)
        return self.head(self.dropout(pooled)).squeeze(-1)


def build_classifier(in_channels: int, config: ClassifierConfig = ClassifierConfig()) -> nn.Module:
    """A fresh classifier for inputs with ``in_channels`` channels."""
    if config.kind == "gru":
        return GRUClassifier(in_channels, config)
    return ConvClassifier(in_channels, config)


def per_example_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L_i = BCEWithLogits(logit_i, y_i); [B] -> [B]."""
    return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), reduction="none")
