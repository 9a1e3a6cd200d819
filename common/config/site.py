"""Site settings: what a site decided for itself (its data, its privacy policy, what may leave).
The server never sets them; they come from the site's policy file / node config (deployment) or
a simulation's sites file. Limits are declared once per field (``common/config/fields.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from common.config.fields import check_fields, require, setting, typed_values
from common.config.limits import MAX_CLIP_NORM, MAX_NOISE_MULTIPLIER
from common.config.toml_files import read_policy_file, read_toml

EVALUATION_MODES = ("dp", "exact", "off")
MIN_EVALUATION_NOISE = 0.5  # z of a DP evaluation answer (one answer at z 0.5: eps ~ 10)


@dataclass(frozen=True)
class SiteSettings:
    """What a site decided for itself: its data and its privacy policy. The server never sets it.

    data-file: the site's own CSV/JSONL ("" = its partition of the run's registered dataset).
    epsilon-budget: lifetime epsilon budget of this dataset (0 = the run's target-epsilon).
    delta: the site's delta (0 = 0.1/n for its n training records, i.e. < 1/n).
    min-noise-multiplier: the least sigma the site trains with (0 = no floor); more is clamped in.
    max-grad-norm: the largest clip norm C it accepts (0 = no cap); a larger request is clamped.
    max-rounds-per-run: rounds it trains in one run at most (0 = no cap); later rounds refused.
    allow-non-private: whether it accepts a dp=false (non-private) request at all.
    ledger: path of the site's privacy ledger ("" = the default location).
    policy-file: a TOML file of these keys (deployment: ``--node-config "policy-file='...'"``).

    The split (fixed by the site; no server setting moves a record):
    validation-fraction: share of records held out for evaluation (0 = 0.2; a simulated site
    without its own takes the run's). split-key: hex secret that assigns records to splits
    ("" = random at first use, then kept in the ledger).

    What may leave (the release inventory, common/releases.py):
    evaluation: "dp" (Gaussian noisy counts and clipped loss sums, each answer accounted),
    "exact" (non-private answers, at most max-exact-answers-per-day) or "off".
    evaluation-noise-multiplier: z of each DP evaluation answer (noise std = z x sensitivity).
    evaluation-loss-bound: B, per-record loss clipped to [0, B] before it is summed.
    max-exact-answers-per-day: cap on non-private answers (exact evaluation, audit figures).
    max-rounds-per-day: training rounds in any 24 h, all runs together (0 = no cap), counted
    from the ledger. release-record-count: send the training record count (FedAvg weight,
    q); false = weight 1 and no q. release-timings: send train-seconds.
    allow-audit: run the membership audit when asked; release-audit-figures: send its figures
    (non-private statistics of training records, capped). group-columns: columns whose groups
    may get (noisy) fairness counts ("*" = any that is not identifier-like; "" = none).
    min-cell-size: group cells with fewer (noisy) records are suppressed.

    What the service runs: base-models: the pretrained models it loads for a run (comma list of
    local directories or hub names; "" = only the packaged MiniLM; "*" = any). A deployed site
    refuses a run whose model-name-or-path it does not list: the coordinator does not choose
    what the site's service reads from its disk or downloads.
    """

    name: str = ""
    data_file: str = ""
    label_column: str = "label"
    text_column: str = ""
    feature_columns: str = ""
    class_names: str = ""
    epsilon_budget: float = setting(0.0, low=0)
    delta: float = setting(0.0, low=0, high=1, open_high=True)
    min_noise_multiplier: float = setting(0.0, low=0, cap=MAX_NOISE_MULTIPLIER, hint="0 = no floor")
    max_grad_norm: float = setting(0.0, low=0, cap=MAX_CLIP_NORM, hint="0 = no cap")
    max_rounds_per_run: int = setting(0, low=0, hint="0 = no cap")
    allow_non_private: bool = False
    ledger: str = ""
    policy_file: str = ""
    validation_fraction: float = setting(
        0.0, low=0, high=1, open_low=True, open_high=True, zero="0.2"
    )
    split_key: str = ""
    evaluation: str = setting("dp", choices=EVALUATION_MODES)
    evaluation_noise_multiplier: float = setting(
        3.0,
        low=MIN_EVALUATION_NOISE,
        cap=MAX_NOISE_MULTIPLIER,
        hint='below, an answer is as good as exact: say evaluation = "exact"',
    )
    evaluation_loss_bound: float = setting(5.0, low=0, cap=1e3, open_low=True)
    max_exact_answers_per_day: int = setting(100, low=0)
    max_rounds_per_day: int = setting(0, low=0, hint="0 = no cap")
    release_record_count: bool = True
    release_timings: bool = False
    allow_audit: bool = False
    release_audit_figures: bool = False
    group_columns: str = ""
    min_cell_size: int = setting(10, low=0)
    base_models: str = ""

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], where: str, defaults: SiteSettings | None = None
    ) -> SiteSettings:
        """Parse and check a site's keys; ``policy-file`` keys are merged in (a key set in both
        places is an error). Unknown keys and impossible values raise ConfigError."""
        values = dict(values)
        policy_file = values.get("policy-file", "")
        if policy_file:
            require(isinstance(policy_file, str), f"{where}: policy-file must be a path string")
            from_file = read_policy_file(Path(str(policy_file)).expanduser())
            both = sorted(set(from_file) & set(values))
            require(not both, f"{where}: {both} set both here and in policy file {policy_file}")
            values |= from_file
        base = defaults or cls()
        settings = replace(base, **typed_values(cls, values, where))
        settings.validate(where)
        return settings

    def validate(self, where: str) -> None:
        check_fields(self, where)
        try:
            key = bytes.fromhex(self.split_key)
        except ValueError:
            key = b""
        require(
            not self.split_key or len(key) >= 16,
            f"{where}: split-key must be at least 32 hex digits (e.g. `openssl rand -hex 32`)",
        )

    @property
    def feature_list(self) -> list[str] | None:
        names = [c.strip() for c in self.feature_columns.split(",") if c.strip()]
        return names or None

    @property
    def class_list(self) -> list[str] | None:
        names = [c.strip() for c in self.class_names.split(",") if c.strip()]
        return names or None

    @property
    def base_model_list(self) -> list[str]:
        return [c.strip() for c in self.base_models.split(",") if c.strip()]

    @property
    def group_column_list(self) -> list[str]:
        return [c.strip() for c in self.group_columns.split(",") if c.strip()]


# A simulated site without a [site.N] table belongs to the researcher running the simulation:
# it accepts non-private baselines. Deployed sites refuse them unless their policy allows it.
# It also runs audits and group counts the researcher asks for and reports timings.
SIMULATED_SITE = SiteSettings(
    allow_non_private=True,
    release_timings=True,
    allow_audit=True,
    release_audit_figures=True,
    group_columns="*",
    base_models="*",
)


def load_sites_file(path: str | Path) -> dict[int, SiteSettings]:
    """Per-site settings for a simulation: a TOML file of ``[site.N]`` tables (N = partition id)."""
    file = Path(path)
    raw = read_toml(file, "sites file")
    # a simulation config may hold all of these (simulations/run.py)
    unknown = set(raw) - {"site", "run", "simulation", "phase"}
    require(not unknown, f"sites file {file}: unknown top-level keys {sorted(unknown)}")
    tables = raw.get("site", {})
    require(isinstance(tables, dict), f"sites file {file}: 'site' must hold [site.N] tables")
    sites: dict[int, SiteSettings] = {}
    for key, table in tables.items():
        require(
            key.isascii() and key.isdecimal() and isinstance(table, dict),
            f"sites file {file}: expected [site.N] tables with N a partition id, got {key!r}",
        )
        sites[int(key)] = SiteSettings.from_mapping(table, f"sites file {file} [site.{key}]")
    return sites
