"""Who this site is in a Flower Context: the run's settings, the site's own settings, its data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context

from client.site_data import SiteData, load_site_data, load_site_records
from common.config import (
    SIMULATED_SITE,
    ConfigError,
    RunSettings,
    SiteSettings,
    load_sites_file,
)
from common.privacy.ledger import default_ledger_path
from common.task import model_source, pick_device


@dataclass(frozen=True)
class Site:
    """settings: the run's (server-requested) settings; policy: the site's own settings;
    partition_id: the simulation partition (-1 in deployment); ledger_path: its privacy ledger."""

    settings: RunSettings
    policy: SiteSettings
    partition_id: int
    num_partitions: int
    data: SiteData
    ledger_path: Path
    device: torch.device
    session: str = ""  # who asked: the Flower run (the site's own count of rounds per run)


def site_from_context(context: Context) -> Site:
    """Resolve settings, site policy and data from a simulation ``context`` (cached per
    process)."""
    node_config = dict(context.node_config)
    partition_id = int(node_config.pop("partition-id", -1))
    num_partitions = int(node_config.pop("num-partitions", 1))
    policy = simulated_policy(context.run_config, partition_id)
    return build_site(context.run_config, policy, partition_id, num_partitions, context.run_id)


def simulated_policy(run_config: Mapping[str, Any], partition_id: int) -> SiteSettings:
    """A simulated site's own settings: its [site.N] table in the sites file, if any."""
    settings = RunSettings.from_run_config(run_config)
    sites = _sites(settings.sites_file) if settings.sites_file else {}
    return sites.get(partition_id, SIMULATED_SITE)


def build_site(
    run_config: Mapping[str, Any],
    policy: SiteSettings,
    partition_id: int,
    num_partitions: int,
    run_id: int,
) -> Site:
    """The site for one run: the run's (checked) settings, the site's own policy and data."""
    settings = RunSettings.from_run_config(run_config)
    if partition_id < 0:
        _check_deployed_policy(policy)
    if partition_id < 0 or policy.base_models:
        check_base_model(settings, policy)
    name, _ = load_site_records(settings, policy, max(partition_id, 0), num_partitions)
    ledger_path = _ledger_path(settings, policy, partition_id, run_id, name)
    data = load_site_data(settings, policy, partition_id, num_partitions, str(ledger_path))
    return Site(
        settings=settings,
        policy=policy,
        partition_id=partition_id,
        num_partitions=num_partitions,
        data=data,
        ledger_path=ledger_path,
        device=pick_device(),
        session=f"flower-run-{run_id}",
    )


def check_base_model(settings: RunSettings, policy: SiteSettings) -> None:
    """A text run's pretrained model must be one the site's policy lists (``base-models``; ""
    = the packaged MiniLM only, "*" = any): the coordinator names it, the site decides whether
    its service loads it. Local paths compare by their resolved directory."""
    if settings.model != "text" or "*" in policy.base_model_list:
        return
    wanted = settings.model_name_or_path
    if not policy.base_model_list:
        allowed = not wanted  # the packaged MiniLM only
    else:
        listed = {_canonical(name) for name in policy.base_model_list}
        allowed = _canonical(model_source(settings)) in listed
    if not allowed:
        raise ConfigError(
            f"this site does not load the model {wanted or 'the packaged MiniLM'!r}: its "
            f"policy's base-models lists {policy.base_model_list or ['the packaged MiniLM']}"
        )


def _canonical(name_or_path: str) -> str:
    path = Path(name_or_path).expanduser()
    local = path.is_absolute() or name_or_path.startswith((".", "~"))
    return str(path.resolve()) if local else name_or_path


def _check_deployed_policy(policy: SiteSettings) -> None:
    """A deployed site names its data and its own budget: neither may come from the server."""
    if not policy.data_file:
        raise ConfigError(
            "this site has no data: name data-file (and label-column) in the policy file "
            "given to `fedpriv-site serve --policy /etc/fedpriv/policy.toml`"
        )
    if not policy.epsilon_budget:
        raise ConfigError(
            "this site has no privacy budget: set epsilon-budget in the policy file given to "
            "`fedpriv-site serve` (the lifetime epsilon each record may spend, over all runs)"
        )


@lru_cache(maxsize=4)
def _sites(path: str) -> dict[int, SiteSettings]:
    return load_sites_file(path)


def _ledger_path(
    settings: RunSettings, policy: SiteSettings, partition_id: int, run_id: int, name: str
) -> Path:
    """The site's ledger. Deployment default: $FEDPRIV_HOME/ledger.sqlite (~/.fedpriv). A
    simulated site without one gets a ledger per run under the results folder."""
    if policy.ledger:
        return Path(policy.ledger).expanduser()
    if partition_id < 0:
        return default_ledger_path()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Path(settings.results_dir) / "ledgers" / f"run-{run_id}" / f"{safe}.sqlite"
