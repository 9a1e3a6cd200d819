"""common/privacy/sampling.py: q and the steps per epoch are what Opacus's Poisson loader uses."""

import pytest
import torch
from opacus.data_loader import DPDataLoader
from torch.utils.data import DataLoader, TensorDataset

from common.privacy.sampling import sample_rate, steps_per_epoch


@pytest.mark.parametrize(
    ("n", "batch", "q", "steps"), [(100, 32, 0.25, 4), (96, 32, 1 / 3, 3), (5, 64, 1.0, 1)]
)
def test_sample_rate_and_steps(n, batch, q, steps):
    assert sample_rate(n, batch) == pytest.approx(q)
    assert steps_per_epoch(n, batch) == steps


def test_steps_per_epoch_equals_opacus_loader_length():
    for n in range(1, 300, 7):
        for batch in (1, 3, 16, 32, 49, 64, 500):
            loader = DPDataLoader.from_data_loader(
                DataLoader(TensorDataset(torch.zeros(n, 1)), batch_size=batch)
            )
            assert len(loader) == steps_per_epoch(n, batch), (n, batch)
            assert loader.sample_rate == sample_rate(n, batch)


@pytest.mark.parametrize(("n", "batch"), [(0, 32), (10, 0), (-1, 1)])
def test_no_examples_or_no_batch_raises(n, batch):
    with pytest.raises(ValueError, match="num_examples >= 1 and batch_size >= 1"):
        sample_rate(n, batch)
