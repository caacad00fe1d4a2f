"""Missingness masks as classifier input channels (the classifier benchmark's --masks rows)."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.classifier_benchmark import with_mask_channels


def test_mask_channels_follow_the_values_and_mark_imputed_steps():
    x = np.arange(12, dtype=np.float32).reshape(1, 2, 6)
    mask = np.ones(x.shape, dtype=bool)
    mask[0, 1, 2:] = False
    out = with_mask_channels(x, mask)
    assert out.shape == (1, 4, 6) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :2], x)
    np.testing.assert_array_equal(out[0, 2], np.ones(6))
    np.testing.assert_array_equal(out[0, 3], [1, 1, -1, -1, -1, -1])
    np.testing.assert_array_equal(with_mask_channels(x, None)[:, 2:], np.ones((1, 2, 6)))
    with pytest.raises(ValueError, match="mask shape"):
        with_mask_channels(x, mask[:, :1])
