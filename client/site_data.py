"""A site's records: its own data file, or (in simulation) its partition of a registered dataset,
split by the site itself into training and validation records for good.

The split is the site's: each record's side is a keyed hash of the record under the site's
secret split key (kept in its ledger), and the ledger remembers the side a record got first,
so no server choice (seed, validation-fraction, run key) re-splits a record and gives it a
fresh budget. The ledger's datasets are ``<site name>/train`` and ``<site name>/validation``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from common.config import ConfigError, RunSettings, SiteSettings
from common.data.registry import load_dataset
from common.data.site_file import load_site_file
from common.data.split import keyed_validation_mask
from common.data.types import LabeledData
from common.privacy.fingerprint import record_hashes
from common.privacy.ledger import PrivacyLedger

TRAIN_SPLIT = "train"
VALIDATION_SPLIT = "validation"
DEFAULT_VALIDATION_FRACTION = 0.2


@dataclass(frozen=True)
class SiteData:
    """name: the site's display name; train: the records it trains on (the DP unit);
    validation: its local held-out records for federated evaluation.

    train_since / validation_since: the ledger's ``since`` of the oldest record present in
    each split (releases after it count for that record, the one with the most spend).
    """

    name: str
    train: LabeledData
    validation: LabeledData
    train_since: int = 0
    validation_since: int = 0

    @property
    def train_key(self) -> str:
        return ledger_key(self.name, TRAIN_SPLIT)

    @property
    def validation_key(self) -> str:
        return ledger_key(self.name, VALIDATION_SPLIT)


def ledger_key(name: str, split: str) -> str:
    """The ledger's dataset for one split of a site's records."""
    return f"{name}/{split}"


@lru_cache(maxsize=2)
def registered_dataset(dataset: str, seed: int) -> tuple[LabeledData, LabeledData]:
    """(training pool, held-out test set) of a registered dataset, loaded once per process:
    a simulation worker serves many sites, each a partition of the same pool."""
    return load_dataset(dataset, seed)


def reference_schema(dataset: str, seed: int) -> LabeledData:
    """The registered dataset's held-out test set: fixes classes and features for the run."""
    return registered_dataset(dataset, seed)[1]


def load_site_data(
    settings: RunSettings,
    site: SiteSettings,
    partition_id: int,
    num_partitions: int,
    ledger_path: str | None = None,
) -> SiteData:
    """The records this site trains and evaluates on, split by the site (see module doc).

    ledger_path: where the site's split key and record memberships live (None: the split is
    computed from the key alone and nothing is recorded, e.g. a researcher's preview).
    """
    name, records = load_site_records(settings, site, max(partition_id, 0), num_partitions)
    return _split(settings, site, partition_id, name, records, ledger_path)


@lru_cache(maxsize=16)
def _split(
    settings: RunSettings,
    site: SiteSettings,
    partition_id: int,
    name: str,
    records: LabeledData,
    ledger_path: str | None,
) -> SiteData:
    hashes = record_hashes(records)
    fraction = site.validation_fraction or (
        settings.validation_fraction if partition_id >= 0 else DEFAULT_VALIDATION_FRACTION
    )
    default_key = _default_split_key(site, settings, partition_id)
    if ledger_path is None:
        mask = keyed_validation_mask(hashes, fraction, default_key)
        return SiteData(
            name, records.subset(np.flatnonzero(~mask)), records.subset(np.flatnonzero(mask))
        )
    with PrivacyLedger(ledger_path) as ledger:
        key = ledger.split_key(default_key)
        mask = keyed_validation_mask(hashes, fraction, key)
        proposed = {
            h.hex(): ledger_key(name, VALIDATION_SPLIT if m else TRAIN_SPLIT)
            for h, m in zip(hashes, mask, strict=True)
        }
        stored = ledger.register_records(proposed)
    validation_key = ledger_key(name, VALIDATION_SPLIT)
    sides = [stored[h.hex()] for h in hashes]
    in_validation = np.array([k == validation_key for k, _ in sides])
    if in_validation.all() or not in_validation.any():
        raise ConfigError(
            f"site {name}: its {len(records)} records all belong to one split in its ledger; "
            "a site needs at least one training and one validation record"
        )
    since = {False: 0, True: 0}
    for side in (False, True):
        values = [s for (_, s), v in zip(sides, in_validation, strict=True) if v == side]
        since[side] = min(values)
    return SiteData(
        name,
        records.subset(np.flatnonzero(~in_validation)),
        records.subset(np.flatnonzero(in_validation)),
        train_since=since[False],
        validation_since=since[True],
    )


def _default_split_key(site: SiteSettings, settings: RunSettings, partition_id: int) -> bytes:
    """The split key a site's ledger keeps from its first use: the policy's ``split-key``; a
    simulated site's is derived from the run's seed and its partition (reproducible research
    runs); a deployed site's is random."""
    if site.split_key:
        return bytes.fromhex(site.split_key)
    if partition_id >= 0:
        return hashlib.sha256(f"fedpriv-split/{settings.seed}/{partition_id}".encode()).digest()
    return secrets.token_bytes(32)


def load_site_records(
    settings: RunSettings, site: SiteSettings, partition_id: int, num_partitions: int
) -> tuple[str, LabeledData]:
    """(site name, all its records): a site's own file is read again only when it changed (a
    long-lived site service sees records added to it); a partition is made once per run."""
    if site.data_file:
        version = _file_version(site.data_file)
        records = _own_records(settings.dataset, settings.seed, site, version)
        return site.name or f"site-{partition_id}", records
    return _partition_records(settings, site, partition_id, num_partitions)


@lru_cache(maxsize=16)
def _own_records(
    dataset: str, seed: int, site: SiteSettings, version: tuple[int, int]
) -> LabeledData:
    reference = reference_schema(dataset, seed)
    tagged = reference.kind == "tokens"  # a token-tagged file is read against the run's tags
    records = _read_file(site, tuple(reference.class_names) if tagged else None, version)
    _check_matches_run(records, reference, site)
    return records


@lru_cache(maxsize=16)
def _partition_records(
    settings: RunSettings, site: SiteSettings, partition_id: int, num_partitions: int
) -> tuple[str, LabeledData]:
    # flwr-datasets (and Hugging Face datasets) only where a site is a partition
    from common.data.partition import natural_partition_values, partition

    pool = registered_dataset(settings.dataset, settings.seed)[0]
    by = settings.partition_by if settings.partitioner == "natural" else ""
    records = partition(
        pool,
        num_partitions=num_partitions,
        partition_id=partition_id,
        scheme=settings.partitioner,
        alpha=settings.dirichlet_alpha,
        by=by,
        seed=settings.seed,
    )
    natural = natural_partition_values(pool, by)[partition_id] if by else ""
    name = site.name or natural or f"site-{partition_id}"
    return name, records


def _file_version(path: str) -> tuple[int, int]:
    """(size, mtime in ns) of the site's file: a changed file is read again."""
    try:
        stat = Path(path).stat()
    except OSError:
        return (-1, -1)  # load_site_file names the problem
    return (stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=4)
def _read_file(
    site: SiteSettings, tags: tuple[str, ...] | None, version: tuple[int, int]
) -> LabeledData:
    """The site's own file, read once per version (the service keeps it between runs)."""
    del version  # part of the cache key only
    return load_site_file(
        site.data_file,
        label_column=site.label_column,
        text_column=site.text_column or None,
        feature_columns=site.feature_list,
        class_names=site.class_list or (list(tags) if tags else None),
    )


def _check_matches_run(records: LabeledData, reference: LabeledData, site: SiteSettings) -> None:
    where = f"site {site.name or '?'} data file {site.data_file}"
    if records.kind != reference.kind:
        raise ConfigError(f"{where} holds {records.kind} data; this run trains on {reference.kind}")
    if records.num_classes != reference.num_classes:
        raise ConfigError(
            f"{where} has {records.num_classes} classes {records.class_names}; the run's model "
            f"has {reference.num_classes} {reference.class_names} (declare class-names to match)"
        )
    if records.kind == "tokens" and records.class_names != reference.class_names:
        raise ConfigError(
            f"{where} has the tag set {records.class_names}; the run's model has "
            f"{reference.class_names} (same tags, same order)"
        )
    if records.kind == "tabular":
        assert records.features is not None and reference.features is not None
        if records.features.shape[1] != reference.features.shape[1]:
            raise ConfigError(
                f"{where} has {records.features.shape[1]} feature columns; the run's model "
                f"expects {reference.features.shape[1]} ({', '.join(reference.feature_names)})"
            )
