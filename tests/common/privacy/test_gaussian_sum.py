import numpy as np
import pytest

from common.privacy.accounting import DpRelease
from common.privacy.gaussian_sum import clip_rows, gaussian_release, gaussian_sum


def test_rows_beyond_the_sensitivity_are_scaled_to_it_and_the_others_kept():
    rows = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    clipped = clip_rows(rows, 1.0)
    np.testing.assert_allclose(clipped, [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]])
    with pytest.raises(ValueError, match="sensitivity"):
        clip_rows(rows, 0.0)


def test_one_record_moves_the_noiseless_sum_by_at_most_the_sensitivity():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(50, 3)) * 5
    total = clip_rows(rows, 2.0).sum(axis=0)
    assert np.linalg.norm(total - clip_rows(rows[1:], 2.0).sum(axis=0)) <= 2.0 + 1e-12


def test_noise_has_std_z_times_delta_around_the_clipped_sum():
    rows = np.tile([[1.0, 0.0]], (10, 1))
    answers = np.array(
        [gaussian_sum(rows, 1.0, 3.0, np.random.default_rng(seed)) for seed in range(4000)]
    )
    np.testing.assert_allclose(answers.mean(axis=0), [10.0, 0.0], atol=0.3)
    np.testing.assert_allclose(answers.std(axis=0), [3.0, 3.0], rtol=0.05)
    with pytest.raises(ValueError, match="noise multiplier"):
        gaussian_sum(rows, 1.0, 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="2-D"):
        gaussian_sum(np.ones(3), 1.0, 1.0, np.random.default_rng(0))


def test_one_answer_is_recorded_as_one_full_batch_gaussian_step():
    assert gaussian_release(2.5) == DpRelease(2.5, 1.0, 1)
