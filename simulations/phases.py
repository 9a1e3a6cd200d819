"""Phased simulations, e.g. linear-probe-then-fine-tune (LP-FT): ``[[phase]]`` tables run in
order as separate Flower runs, each a planned share of the run's epsilon.

Phase k (k = 1..K) runs with run-config ``[run]`` + its own keys, ``target-epsilon`` =
``epsilon-share_k`` x the total target epsilon (shares > 0, sum_k share_k <= 1), its own run key
and plan (sigma calibrated to its own target), and ``init-head-from`` = phase k-1's results model
directory. Every simulated site keeps ONE ledger over all phases and takes the TOTAL target as
its budget (a generated sites file), so the ledger composes the phases as any two runs on the same
data: a record's epsilon over all phases stays <= the total (each site's budget rule enforces it;
by composition it is at most, and usually well below, sum_k share_k x total).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from common.config import SIMULATED_SITE, ConfigError, RunSettings, SiteSettings, load_sites_file
from common.config.fields import kebab
from common.config.toml_files import read_toml
from server.results import MODEL_DIR

PHASE_OWN_KEYS = ("name", "epsilon-share")
# Set by the launcher, or the same for every phase: the sites' data (so each record is one
# dataset in one ledger), their policies and the model the head is read against.
FIXED_KEYS = {
    "target-epsilon": "each phase's target is its epsilon-share x [run] target-epsilon",
    "init-head-from": "the launcher passes each phase the previous phase's model",
    "run-name": "phases are named <run-name>-<phase name>",
    "results-dir": "every phase writes under the launcher's results folder",
    "resume": "a phased simulation is not resumed phase by phase",
    "sites-file": "the sites' policies are the same in every phase",
    "dp": "set dp in [run]: every phase is private or none is",
    "dataset": "every phase trains on the same records",
    "seed": "the seed decides the partition: every phase trains on the same records",
    "partitioner": "every phase trains on the same records",
    "partition-by": "every phase trains on the same records",
    "dirichlet-alpha": "every phase trains on the same records",
    "validation-fraction": "every phase holds out the same records",
    "model": "every phase fine-tunes the same model",
    "model-name-or-path": "every phase fine-tunes the same base model",
}
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


@dataclass(frozen=True)
class Phase:
    """One phase: its name, its share of the total epsilon and its complete run-config
    overrides (target-epsilon, run-name, init-head-from, sites-file filled in)."""

    name: str
    epsilon_share: float
    run_config: dict[str, Any]

    @property
    def run_name(self) -> str:
        return str(self.run_config["run-name"])


def check_phase_tables(tables: Any, where: str) -> list[dict[str, Any]]:
    """The ``[[phase]]`` tables of a simulation config: each a name, an epsilon-share and
    run-config keys (none of FIXED_KEYS). ConfigError names the phase and the key."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{where}: 'phase' must be [[phase]] tables")
    known = {kebab(f.name) for f in fields(RunSettings)}
    names: list[str] = []
    for i, table in enumerate(tables, 1):
        label = f"{where} [[phase]] {i}"
        name = table.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{label}: name must be 1-40 letters, digits, '-' or '_'")
        if name in names:
            raise ConfigError(f"{label}: a second phase named {name!r}")
        names.append(name)
        share = table.get("epsilon-share")
        if isinstance(share, bool) or not isinstance(share, int | float):
            raise ConfigError(f"{label} ({name}): epsilon-share must be a number in (0, 1]")
        if not (math.isfinite(share) and 0 < share <= 1):
            raise ConfigError(f"{label} ({name}): epsilon-share must be in (0, 1], got {share}")
        fixed = sorted(set(table) & set(FIXED_KEYS))
        if fixed:
            why = "; ".join(f"{k}: {FIXED_KEYS[k]}" for k in fixed)
            raise ConfigError(f"{label} ({name}): a phase may not set {fixed} ({why})")
        unknown = sorted(set(table) - known - set(PHASE_OWN_KEYS))
        if unknown:
            raise ConfigError(
                f"{label} ({name}): unknown keys {unknown}; a phase holds name, epsilon-share "
                "and run-config keys (pyproject [tool.flwr.app.config])"
            )
    total = sum(float(t["epsilon-share"]) for t in tables)
    if total > 1 + 1e-9:
        raise ConfigError(
            f"{where}: the phases' epsilon-shares sum to {total:g} > 1: together they would "
            "plan more than the run's target-epsilon"
        )
    return [dict(t) for t in tables]


def plan_phases(
    tables: list[dict[str, Any]],
    base: dict[str, Any],
    defaults: dict[str, Any],
    sites_file: Path,
) -> list[Phase]:
    """Each phase's run-config overrides from ``base`` ([run] + overrides, with run-name and
    results-dir), checked as a whole run config (``defaults``: pyproject's) before any starts."""
    if "init-head-from" in base:
        raise ConfigError(
            "init-head-from is set by the launcher between phases: remove it from [run] "
            "(or run without [[phase]] tables)"
        )
    if base.get("resume"):
        raise ConfigError(
            "resume applies to one run; a phased simulation starts each phase afresh (resume a "
            "phase's own run with `flwr run` and its run-name)"
        )
    total = total_epsilon(base, defaults)
    results = Path(str(base["results-dir"]))
    phases: list[Phase] = []
    for table in tables:
        own = {k: v for k, v in table.items() if k not in PHASE_OWN_KEYS}
        share = float(table["epsilon-share"])
        config = {
            **base,
            **own,
            "target-epsilon": share * total,
            "run-name": f"{base['run-name']}-{table['name']}",
            "sites-file": str(sites_file),
        }
        if phases:
            config["init-head-from"] = str(results / phases[-1].run_name / MODEL_DIR)
        try:
            RunSettings.from_run_config({**defaults, **config})
        except ConfigError as err:
            raise ConfigError(f"phase {table['name']!r}: {err}") from err
        phases.append(Phase(str(table["name"]), share, config))
    return phases


def total_epsilon(base: dict[str, Any], defaults: dict[str, Any]) -> float:
    """The run's total target epsilon: [run] (or an override) target-epsilon, else pyproject's."""
    return float(base.get("target-epsilon", defaults["target-epsilon"]))


def shared_site_policies(
    user_sites_file: str, num_sites: int, ledger_dir: Path, epsilon_budget: float
) -> str:
    """A sites file (TOML) giving every simulated site 0..num_sites-1 a ledger shared by all
    phases (``ledger_dir``/site-N.sqlite) and the TOTAL target epsilon as its budget. A site's
    own [site.N] table (in ``user_sites_file``) is kept as written; only a ledger and a budget it
    does not set itself are added. A site without one gets SIMULATED_SITE's settings."""
    user = load_sites_file(user_sites_file) if user_sites_file else {}
    tables = read_toml(Path(user_sites_file), "sites file").get("site", {}) if user else {}
    raw = {int(key): table for key, table in tables.items()}  # checked by load_sites_file
    simulated = {
        kebab(f.name): getattr(SIMULATED_SITE, f.name)
        for f in fields(SiteSettings)
        if getattr(SIMULATED_SITE, f.name) != f.default
    }
    out: list[str] = []
    for n in sorted(set(range(num_sites)) | set(user)):
        table = dict(raw[n]) if n in user else dict(simulated)
        parsed = user.get(n, SIMULATED_SITE)
        if not parsed.ledger:
            table["ledger"] = str(ledger_dir / f"site-{n}.sqlite")
        if not parsed.epsilon_budget:
            table["epsilon-budget"] = float(epsilon_budget)
        out.append(f"[site.{n}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    return "\n".join(out)
