"""The DP-SGD sample rate q and the steps per epoch, as Opacus's Poisson data loader has them."""

from __future__ import annotations

import math


def sample_rate(num_examples: int, batch_size: int) -> float:
    """q = 1 / ceil(n / B): Opacus's Poisson sample rate for a loader of batch size B over n
    examples (equal to B / n when B divides n); the expected batch size is q * n."""
    if num_examples < 1 or batch_size < 1:
        raise ValueError(
            f"need num_examples >= 1 and batch_size >= 1, got {num_examples}, {batch_size}"
        )
    return 1.0 / math.ceil(num_examples / batch_size)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Steps (DP releases) per epoch: int(1 / q), exactly as Opacus's DPDataLoader yields them;
    also the number of batches of the non-DP loader."""
    return int(1.0 / sample_rate(num_examples, batch_size))
