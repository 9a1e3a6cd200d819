"""A site's records: its own data file, or (in simulation) its partition of a registered dataset."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from common.config import ConfigError, RunSettings, SiteSettings
from common.data.registry import load_dataset
from common.data.site_file import load_site_file
from common.data.split import split_train_validation
from common.data.types import LabeledData


@dataclass(frozen=True)
class SiteData:
    """name: the site's display name; train: the records it trains on (the DP unit);
    validation: its local held-out records for federated evaluation."""

    name: str
    train: LabeledData
    validation: LabeledData


@lru_cache(maxsize=2)
def registered_dataset(dataset: str, seed: int) -> tuple[LabeledData, LabeledData]:
    """(training pool, held-out test set) of a registered dataset, loaded once per process:
    a simulation worker serves many sites, each a partition of the same pool."""
    return load_dataset(dataset, seed)


def reference_schema(dataset: str, seed: int) -> LabeledData:
    """The registered dataset's held-out test set: fixes classes and features for the run."""
    return registered_dataset(dataset, seed)[1]


@lru_cache(maxsize=16)
def load_site_data(
    settings: RunSettings, site: SiteSettings, partition_id: int, num_partitions: int
) -> SiteData:
    """Load (once per process) the records this site trains and evaluates on."""
    if site.data_file:
        reference = reference_schema(settings.dataset, settings.seed)
        tagged = reference.kind == "tokens"  # a token-tagged file is read against the run's tags
        records = load_site_file(
            site.data_file,
            label_column=site.label_column,
            text_column=site.text_column or None,
            feature_columns=site.feature_list,
            class_names=site.class_list or (reference.class_names if tagged else None),
        )
        _check_matches_run(records, reference, site)
        name = site.name or f"site-{partition_id}"
    else:  # flwr-datasets (and Hugging Face datasets) only where a site is a partition
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
    train, validation = split_train_validation(
        records, settings.validation_fraction, settings.seed + partition_id
    )
    return SiteData(name=name, train=train, validation=validation)


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
