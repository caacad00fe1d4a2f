"""The one training loop: hooks, stopping, and that it is the loop both trainers run."""

import numpy as np
import pytest
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


@pytest.mark.parametrize("n,batch_size", [(10, 4), (12, 4), (5, 64), (64, 64), (1, 3)])
def test_seeded_batches_are_the_dataloaders_batches_and_draws(n, batch_size):
    """SeededBatches replaces the DataLoader on the plain path: the same batches in the same order,
    and the same draws from the shared generator, also when the loss draws from it in between
    (the diffusion loss's t and noise), over several epochs."""
    from tardiff_common.training.loop import SeededBatches, seeded_loader

    x = np.arange(n * 2 * 3, dtype=np.float32).reshape(n, 2, 3)
    y = np.arange(n) % 2
    g_ref, g_new = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    reference, fast = seeded_loader(x, y, batch_size, g_ref), SeededBatches(x, y, batch_size, g_new)
    assert len(fast) == len(reference)
    for _ in range(3):
        ref_batches = []
        for xb, yb in reference:
            ref_batches.append((xb, yb, torch.rand(2, generator=g_ref)))
        new_batches = [(xb, yb, torch.rand(2, generator=g_new)) for xb, yb in fast]
        assert len(ref_batches) == len(new_batches)
        for (xr, yr, dr), (xn, yn, dn) in zip(ref_batches, new_batches, strict=True):
            assert torch.equal(xr, xn) and torch.equal(yr, yn) and torch.equal(dr, dn)
    assert torch.equal(g_ref.get_state(), g_new.get_state())
