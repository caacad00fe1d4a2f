"""Influence: G sums over partitions; fast influence gradients equal the double-backprop reference."""

import numpy as np
import pytest
import torch

from tardiff_common.influence.gradient_sum import GradientSum, guidance_gradient_sum
from tardiff_common.influence.guidance import GuidanceConfig, InfluenceGuidance
from tardiff_common.influence.influence_gradient import (
    FD_TOLERANCE,
    choose_fd_step,
    influence_grad_batch_normalized,
    influence_grad_central_difference,
    influence_grad_double_backprop,
    influence_grad_jvp,
    influence_scores,
    relative_error,
)
from tardiff_common.models.classifier import ClassifierConfig, build_classifier, per_example_loss


def model_and_data(kind, dtype=torch.float64, n=12, seed=0):
    torch.manual_seed(seed)
    model = build_classifier(3, ClassifierConfig(kind=kind, hidden=8, num_layers=2)).to(dtype)
    x = torch.randn(n, 3, 10, dtype=dtype)
    y = (torch.arange(n) % 3 == 0).long()
    return model, x, y


@pytest.mark.parametrize("kind", ["gru", "cnn"])
def test_guidance_sum_over_any_partition_equals_union(kind):
    model, x, y = model_and_data(kind, torch.float32, n=40)
    model = model.float()
    whole = guidance_gradient_sum(model, x, y)
    rng = np.random.default_rng(0)
    for _ in range(3):
        cuts = np.sort(rng.choice(np.arange(1, 40), size=3, replace=False))
        parts = [guidance_gradient_sum(model, xs, ys, batch_size=7)
                 for xs, ys in zip(np.split(x.numpy(), cuts), np.split(y.numpy(), cuts))]
        merged = GradientSum.sum(parts)
        assert merged.count == 40
        torch.testing.assert_close(merged.total, whole.total, rtol=1e-5, atol=1e-6)


def test_guidance_sum_is_sum_of_per_example_gradients_and_class_filter():
    model, x, y = model_and_data("cnn")
    per = []
    for i in range(len(y)):
        loss = per_example_loss(model(x[i : i + 1]), y[i : i + 1]).sum()
        per.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))]))
    per = torch.stack(per)
    torch.testing.assert_close(guidance_gradient_sum(model, x, y).total, per.sum(0).double())
    minority = guidance_gradient_sum(model, x, y, target_class=1)
    assert minority.count == int(y.sum())
    torch.testing.assert_close(minority.total, per[y == 1].sum(0).double())


def test_direction_is_unit_and_rejects_zero():
    g = GradientSum(torch.tensor([3.0, 4.0], dtype=torch.float64), 2).direction()
    assert torch.allclose(g, torch.tensor([0.6, 0.8]))
    with pytest.raises(ValueError, match="cannot normalize"):
        GradientSum(torch.zeros(2, dtype=torch.float64), 0).direction()
    with pytest.raises(ValueError, match="differ in size"):
        GradientSum(torch.zeros(2), 1) + GradientSum(torch.zeros(3), 1)


@pytest.mark.parametrize("kind", ["gru", "cnn"])
def test_fast_influence_gradients_match_reference(kind):
    model, x, y = model_and_data(kind)
    g = guidance_gradient_sum(model.float(), x.float(), y).direction().double()
    model = model.double()
    ref = influence_grad_double_backprop(model, x, y, g)
    assert ref.abs().max() > 0
    torch.testing.assert_close(influence_grad_jvp(model, x, y, g), ref, rtol=1e-9, atol=1e-12)
    cd = influence_grad_central_difference(model, x, y, g, eps=1e-4)
    assert ((cd - ref).norm() / ref.norm()).item() < 1e-6


def test_central_difference_float32_accuracy():
    """In float32 with the default step the relative error stays near the design's 3e-5."""
    model, x, y = model_and_data("gru", torch.float32)
    model = model.float()
    g = guidance_gradient_sum(model, x, y).direction()
    ref = influence_grad_double_backprop(model, x, y, g)
    cd = influence_grad_central_difference(model, x, y, g)
    assert ((cd - ref).norm() / ref.norm()).item() < 1e-4


def test_summed_objective_decouples_samples_but_public_code_form_does_not():
    model, x, y = model_and_data("gru")
    g = guidance_gradient_sum(model, x, y).direction().double()
    full = influence_grad_jvp(model, x, y, g)
    alone = influence_grad_jvp(model, x[:1], y[:1], g)
    torch.testing.assert_close(full[:1], alone)
    coupled_full = influence_grad_batch_normalized(model, x, y, g)
    coupled_alone = influence_grad_batch_normalized(model, x[:1], y[:1], g)
    assert not torch.allclose(coupled_full[:1], coupled_alone)


def test_influence_scores_are_gradient_dot_direction():
    model, x, y = model_and_data("cnn")
    g = guidance_gradient_sum(model, x, y).direction().double()
    scores = influence_scores(model, x, y, g)
    for i in (0, 5):
        loss = per_example_loss(model(x[i : i + 1]), y[i : i + 1]).sum()
        grad = torch.cat([p.reshape(-1) for p in torch.autograd.grad(loss, list(model.parameters()))])
        assert scores[i].item() == pytest.approx((grad @ g).item(), rel=1e-9)


def test_wrong_direction_size_is_named():
    model, x, y = model_and_data("cnn")
    with pytest.raises(ValueError, match="direction g has 3 entries"):
        influence_grad_jvp(model, x, y, torch.ones(3, dtype=torch.float64))


# ----------------------------------------------------------------------------- choice of the fd step


def _float32_classifier(kind, length, *, trained, hidden=16, seed=0):
    """A float32 classifier (optionally after a few Adam steps), a direction g, and a held-out batch."""
    torch.manual_seed(seed)
    layers = 3 if kind == "cnn" else 2
    model = build_classifier(3, ClassifierConfig(kind=kind, hidden=hidden, num_layers=layers))
    x = torch.randn(48, 3, length).cumsum(-1) / 5
    y = (torch.arange(48) % 3 == 0).long()
    if trained:
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(15):
            opt.zero_grad()
            per_example_loss(model(x), y).mean().backward()
            opt.step()
    g = guidance_gradient_sum(model, x[:24], y[:24]).direction()
    x_new = torch.randn(16, 3, length).cumsum(-1) / 5
    return model, g, x_new, (torch.arange(16) % 2).long()


@pytest.mark.parametrize("trained", [False, True], ids=["untrained", "trained"])
def test_gru_fd_step_chosen_on_one_batch_holds_on_another(trained):
    model, g, x, y = _float32_classifier("gru", 24, trained=trained)
    choice = choose_fd_step(model, x[:8], y[:8], g)
    assert choice.eps is not None, choice.message
    assert choice.errors[choice.eps] <= FD_TOLERANCE
    ref = influence_grad_double_backprop(model, x[8:], y[8:], g)
    assert relative_error(choice.grad_fn()(model, x[8:], y[8:], g), ref) <= FD_TOLERANCE


@pytest.mark.parametrize("trained", [False, True], ids=["untrained", "trained"])
def test_cnn_max_pooling_breaks_central_difference_so_it_is_refused(trained):
    model, g, x, y = _float32_classifier("cnn", 48, trained=trained)
    ref = influence_grad_double_backprop(model, x, y, g)
    # the kink: at the old default step the central difference is off by more than 1 %
    assert relative_error(influence_grad_central_difference(model, x, y, g, eps=1e-2), ref) > 1e-2
    choice = choose_fd_step(model, x[:8], y[:8], g)
    assert choice.eps is None and "refused" in choice.message and "ConvClassifier" in choice.message
    assert choice.grad_fn() is influence_grad_jvp
    assert relative_error(choice.grad_fn()(model, x, y, g), ref) <= 1e-5


def test_unflagged_kinked_classifier_fails_the_check_and_falls_back():
    """Without the smoothness flag the check against jvp itself finds that no step is good enough."""
    model, g, x, y = _float32_classifier("cnn", 288, trained=False, hidden=32)
    model.smooth_in_parameters = True
    choice = choose_fd_step(model, x[:8], y[:8], g)
    assert choice.eps is None and "cannot meet" in choice.message, choice.message
    assert len(choice.errors) == 5 and min(choice.errors.values()) > FD_TOLERANCE


@pytest.mark.parametrize("kind", ["gru", "cnn"])
def test_guidance_with_central_difference_picks_a_step_or_warns_and_uses_jvp(kind, recwarn):
    model, g, x, y = _float32_classifier(kind, 24, trained=True)
    guidance = InfluenceGuidance(model, g, GuidanceConfig(scale=1.0, method="central_difference"))
    grad = guidance.influence_grad(x, y)
    ref = influence_grad_double_backprop(model, x, y, g)
    assert relative_error(grad, ref) <= FD_TOLERANCE
    warned = [w for w in recwarn.list if issubclass(w.category, RuntimeWarning)]
    if kind == "cnn":
        assert len(warned) == 1 and "using jvp" in str(warned[0].message)
    else:
        assert not warned and guidance.fd_note.startswith("central difference for GRUClassifier: step")
