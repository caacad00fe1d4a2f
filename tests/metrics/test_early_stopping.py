"""Early stopping of the evaluation classifier on the tuning split's loss."""

import numpy as np
import pytest
import torch

from tardiff_common.metrics import utility
from tardiff_common.models.classifier import ClassifierConfig, build_classifier
from tardiff_common.pipeline.config import EvaluationConfig
from tardiff_common.training.classifier import ClassifierTrainConfig, train_classifier
from tardiff_common.training.early_stopping import train_early_stopped, validation_loss

from .series import ar1


def _split(n, seed, signal=0.6):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.int64)
    x = ar1(n, channels=2, length=12, seed=seed)
    x[y == 1] += signal
    return x, y


def _model(seed=0):
    torch.manual_seed(seed)
    return build_classifier(2, ClassifierConfig(kind="cnn", hidden=16, num_layers=2))


# a small training set and a large learning rate: the validation loss turns up within a few epochs
TRAIN, VALIDATION = _split(40, 1), _split(200, 2)
OVERFIT = ClassifierTrainConfig(epochs=25, batch_size=8, lr=1e-2)


def test_keeps_the_epoch_with_the_lowest_validation_loss_and_its_exact_weights():
    model = _model()
    result = train_early_stopped(model, TRAIN, VALIDATION, OVERFIT, seed=3, patience=25)
    losses = np.asarray(result.val_losses)
    assert result.epochs_run == OVERFIT.epochs  # patience = max epochs: never stops early
    assert result.best_epoch == int(np.argmin(losses)) + 1
    assert 1 < result.best_epoch < OVERFIT.epochs  # the set-up overfits, so the best epoch is inside
    assert validation_loss(model, *VALIDATION) == pytest.approx(losses.min(), rel=1e-6)
    # the kept weights are the ones plain training reaches after best_epoch epochs (same seed and loop)
    reference = _model()
    train_classifier(reference, *TRAIN, ClassifierTrainConfig(epochs=result.best_epoch, batch_size=8, lr=1e-2),
                     seed=3)
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_stops_after_patience_epochs_without_improvement():
    full = train_early_stopped(_model(), TRAIN, VALIDATION, OVERFIT, seed=3, patience=25)
    stopped = train_early_stopped(_model(), TRAIN, VALIDATION, OVERFIT, seed=3, patience=2)
    losses = np.asarray(full.val_losses)
    # the first epoch after which two epochs in a row do not beat the running minimum
    running = np.minimum.accumulate(losses)
    stale = [e for e in range(2, len(losses)) if losses[e] >= running[e - 1] and losses[e - 1] >= running[e - 2]]
    assert stopped.epochs_run == stale[0] + 1 < OVERFIT.epochs
    assert stopped.val_losses == full.val_losses[: stopped.epochs_run]  # same trajectory until it stops
    assert stopped.best_epoch == stopped.epochs_run - 2


def test_validation_split_never_the_test_split(monkeypatch):
    """score_training_set stops on the validation (tuning) split; the test labels cannot move the result."""
    seen = []
    real = utility.train_early_stopped

    def spy(model, train, validation, config, **kw):
        seen.append(validation[1])
        return real(model, train, validation, config, **kw)

    monkeypatch.setattr(utility, "train_early_stopped", spy)
    config = EvaluationConfig(hidden=4, num_layers=1, epochs=6, patience=2, seeds=(0,))
    x_test, y_test = _split(60, 5)
    first = utility.score_training_set(TRAIN, VALIDATION, {"test": (x_test, y_test)}, config)
    second = utility.score_training_set(TRAIN, VALIDATION, {"test": (x_test, 1 - y_test)}, config)
    assert len(seen) == 2 and all(y is VALIDATION[1] for y in seen)
    assert first["test"]["runs"] and second["test"]["runs"]


def test_patience_zero_trains_the_fixed_epochs():
    config = EvaluationConfig(hidden=4, num_layers=1, epochs=3, patience=0, seeds=(0,))
    a = utility.fit_evaluation_classifier(TRAIN, config, 0, validation=VALIDATION)
    b = utility.fit_evaluation_classifier(TRAIN, config, 0)
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(p, q)


def test_bad_patience_and_empty_validation_are_refused():
    with pytest.raises(ValueError, match="patience"):
        train_early_stopped(_model(), TRAIN, VALIDATION, OVERFIT, seed=0, patience=0)
    with pytest.raises(ValueError, match="validation"):
        train_early_stopped(_model(), TRAIN, (VALIDATION[0][:0], VALIDATION[1][:0]), OVERFIT, seed=0, patience=2)
    with pytest.raises(ValueError, match="patience"):
        EvaluationConfig(patience=-1)
