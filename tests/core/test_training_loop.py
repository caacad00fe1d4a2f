"""The one training loop: hooks, stopping, and that it is the loop both trainers run."""

import numpy as np
import torch
import torch.nn.functional as F

from tardiff_common.models.classifier import ClassifierConfig, build_classifier
from tardiff_common.training.classifier import ClassifierTrainConfig, train_classifier
from tardiff_common.training.loop import train_epochs


def data(n=40):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 2, 6)).astype(np.float32), (rng.random(n) < 0.5).astype(np.int64)


def model():
    torch.manual_seed(0)
    return build_classifier(2, ClassifierConfig(kind="gru", hidden=4, num_layers=1))


def bce(net, xb, yb, _generator):
    return F.binary_cross_entropy_with_logits(net(xb), yb.float())


def adam(params):
    return torch.optim.Adam(params, lr=1e-3)


def test_after_step_runs_once_per_step_and_after_epoch_stops():
    x, y = data()
    calls, epochs = [], []
    stats = train_epochs(model(), x, y, bce, adam, epochs=5, batch_size=16, seed=1,
                         after_step=lambda m: calls.append(1), after_epoch=lambda e: epochs.append(e) or e == 2)
    assert epochs == [1, 2]  # stopped after epoch 2 of 5
    assert stats["steps"] == len(calls) == 2 * 3  # ceil(40 / 16) batches per epoch


def test_train_classifier_is_the_loop_with_the_bce_loss():
    """Same seed, same loss and optimizer -> the same weights, bit for bit."""
    x, y = data()
    a, b = model(), model()
    train_classifier(a, x, y, ClassifierTrainConfig(epochs=2, batch_size=16, lr=1e-3, grad_clip=None), seed=3)
    train_epochs(b, x, y, bce, adam, epochs=2, batch_size=16, seed=3)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_a_different_seed_changes_the_batch_order():
    x, y = data()
    a, b = model(), model()
    train_epochs(a, x, y, bce, adam, epochs=1, batch_size=8, seed=3)
    train_epochs(b, x, y, bce, adam, epochs=1, batch_size=8, seed=4)
    assert any(not torch.equal(pa, pb) for pa, pb in zip(a.state_dict().values(), b.state_dict().values()))
