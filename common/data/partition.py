"""Dividing a training pool among simulated sites, and a site's share into train/validation.

The schemes are flwr-datasets' partitioners, run on a small Hugging Face ``Dataset`` holding only
the record index, the label and the ``by`` column; the chosen indices then select from the data.
- "iid": records shuffled with ``seed`` and cut into equal contiguous shards.
- "dirichlet": label skew; each class is divided among partitions in proportions drawn from
  Dirichlet(alpha) (smaller alpha = more skew).
- "natural": one partition per distinct value of ``data.columns[by]`` (e.g. hospital), sorted.
Every record is in exactly one partition, and the same seed gives the same partitions.
"""

from __future__ import annotations

import io
import warnings
from contextlib import nullcontext, redirect_stderr
from functools import lru_cache

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    NaturalIdPartitioner,
    Partitioner,
)

from common.data.types import LabeledData

SCHEMES = ("iid", "dirichlet", "natural")


def partition(
    data: LabeledData,
    *,
    num_partitions: int,
    partition_id: int,
    scheme: str,
    alpha: float = 0.5,
    by: str = "",
    seed: int = 0,
) -> LabeledData:
    """The records of partition ``partition_id`` out of ``num_partitions`` under ``scheme``."""
    if scheme not in SCHEMES:
        raise ValueError(
            f"unknown partition scheme {scheme!r}; known schemes: {', '.join(SCHEMES)}"
        )
    if num_partitions < 1 or not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition_id must be in [0, {num_partitions}) with num_partitions >= 1, "
            f"got partition_id={partition_id}, num_partitions={num_partitions}"
        )
    if num_partitions > len(data):
        raise ValueError(f"cannot split {len(data)} records into {num_partitions} partitions")
    if scheme == "natural":
        values = natural_partition_values(data, by)
        if len(values) != num_partitions:
            raise ValueError(
                f"natural partitioning by {by!r} gives {len(values)} partitions {values}, "
                f"but num_partitions is {num_partitions}; set num_partitions to {len(values)}"
            )
    partitioner = _fitted_partitioner(data, scheme, num_partitions, alpha, by, seed)
    try:
        # Keep site logs clean: NaturalIdPartitioner draws a tqdm bar on every call, and
        # DirichletPartitioner warns on each redraw (it redraws up to 10 times; we explain failure).
        with (
            redirect_stderr(io.StringIO()) if scheme == "natural" else nullcontext(),
            warnings.catch_warnings(),
        ):
            warnings.filterwarnings("ignore", message="The specified min_partition_size")
            chosen = partitioner.load_partition(partition_id)
    except ValueError as error:
        if scheme != "dirichlet":
            raise
        raise ValueError(
            f"Dirichlet partitioning of {len(data)} records into {num_partitions} partitions with "
            f"alpha={alpha} left a partition too small after 10 draws; use a larger alpha, fewer "
            f"partitions or another seed ({error})"
        ) from error
    return data.subset(np.asarray(chosen["_index"], dtype=np.int64))


@lru_cache(maxsize=4)
def _fitted_partitioner(
    data: LabeledData, scheme: str, num_partitions: int, alpha: float, by: str, seed: int
) -> Partitioner:
    """The partitioner of ``data`` (hashed by identity: the caller caches the pool), kept per
    process: with many simulated sites each call then only reads its share, instead of
    rebuilding the index table and redrawing every partition (Dirichlet draws all at once)."""
    table = {"_index": np.arange(len(data)), "_label": data.labels}
    if scheme == "natural":
        table["_by"] = [str(v) for v in data.columns[by]]
    partitioner = _partitioner(scheme, num_partitions, alpha, by, seed, len(data))
    dataset = Dataset.from_dict(table)
    partitioner.dataset = dataset.shuffle(seed=seed) if scheme == "iid" else dataset
    return partitioner


def natural_partition_values(data: LabeledData, by: str) -> list[str]:
    """The distinct values of column ``by`` in sorted order: partition i holds value i."""
    if by not in data.columns:
        raise ValueError(
            f"natural partitioning needs a column to partition by; {by!r} is not one "
            f"of the data's columns {sorted(data.columns)}"
        )
    return sorted({str(v) for v in data.columns[by]})


def _partitioner(
    scheme: str, num_partitions: int, alpha: float, by: str, seed: int, n: int
) -> Partitioner:
    if scheme == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if scheme == "natural":
        return NaturalIdPartitioner(partition_by="_by")
    if alpha <= 0:
        raise ValueError(f"Dirichlet alpha must be > 0, got {alpha}")
    # At least 2 records per site (one to train, one to validate), up to 10 when there are plenty.
    min_size = max(2, min(10, n // (2 * num_partitions)))
    return DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="_label",
        alpha=alpha,
        min_partition_size=min_size,
        self_balancing=False,
        shuffle=True,
        seed=seed,
    )
