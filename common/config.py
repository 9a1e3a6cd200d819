"""Typed, validated run settings (Flower run config, kebab-case keys) and site settings.

The run config is what the coordinator asks for (pyproject ``[tool.flwr.app.config]`` plus
``--run-config`` overrides). Site settings come from the site (``--node-config`` in deployment,
a ``sites-file`` TOML in simulation) and are the site's own: the server never sets them.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from common.privacy.accounting import ACCOUNTANTS


class ConfigError(ValueError):
    """A run or site setting is missing, unknown, of the wrong type or out of range."""


MODELS = ("mlp", "logreg", "text")
PARTITIONERS = ("iid", "dirichlet", "natural")
OPTIMIZERS = ("sgd", "adam")
GRAD_SAMPLE_MODES = ("auto", "bookkeeping", "ghost", "hooks")
FINETUNE_MODES = ("head", "lora", "full")
POOLING_CHOICES = ("auto", "pooler", "mean", "cls")
SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi")
AGGREGATIONS = ("fedavg", "median", "trimmed-mean", "krum", "multi-krum")
CLIENT_DP_MODES = ("off", "server-fixed", "server-adaptive", "client-fixed", "client-adaptive")
# Upper limits of noise and clip settings (beyond them nothing useful is learnt).
MAX_NOISE_MULTIPLIER = 1e4
MAX_CLIP_NORM = 1e6


@dataclass(frozen=True)
class RunSettings:
    """What the coordinator configured for one run (see pyproject.toml for the defaults)."""

    num_server_rounds: int = 3
    seed: int = 0
    dataset: str = "heart-disease"
    partitioner: str = "natural"
    partition_by: str = "dataset"
    dirichlet_alpha: float = 0.5
    validation_fraction: float = 0.2
    server_eval: bool = True
    server_eval_max_records: int = 0
    model: str = "mlp"
    model_name_or_path: str = ""
    pooler_init: str = "pretrained"
    pooling: str = "auto"
    normalize: bool = False
    finetune: str = ""
    lora: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    lora_target_modules: str = "query,value"
    max_length: int = 64
    outside_tag_weight: float = 1.0
    local_epochs: int = 1
    local_steps: int = 0
    batch_size: int = 32
    learning_rate: float = 0.05
    head_learning_rate: float = 0.0
    optimizer: str = "sgd"
    max_physical_batch_size: int = 0
    grad_sample_mode: str = "auto"
    freeze_word_embeddings: bool = True
    dp: bool = True
    target_epsilon: float = 8.0
    target_delta: float = 0.0
    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    accountant: str = "pld"
    fraction_train: float = 1.0
    min_train_nodes: int = 2
    fraction_evaluate: float = 1.0
    min_evaluate_nodes: int = 2
    evaluate_with_train: bool = False
    max_update_norm: float = 0.0
    aggregation: str = "fedavg"
    server_optimizer: str = "fedavg"
    server_learning_rate: float = 0.0
    server_momentum: float = 0.9
    server_beta_1: float = 0.9
    server_beta_2: float = 0.99
    server_tau: float = 1e-3
    trim_fraction: float = 0.2
    malicious_sites: int = 0
    client_dp: str = "off"
    client_noise_multiplier: float = 1.0
    client_clipping_norm: float = 1.0
    client_target_quantile: float = 0.5
    client_clip_lr: float = 0.2
    client_clipped_count_stddev: float = 1.0
    client_dp_delta: float = 1e-5
    secure_aggregation: bool = False
    secagg_num_shares: int = 0
    secagg_reconstruction_threshold: int = 0
    secagg_max_weight: float = 1000.0
    secagg_clipping_range: float = 8.0
    secagg_quantization_range: int = 4194304
    round_timeout: float = 3600.0
    sites_file: str = ""
    results_dir: str = "results"
    run_name: str = ""
    resume: bool = False
    audit: bool = False
    sensitive_column: str = ""

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunSettings:
        """Parse Flower's run config; unknown keys and bad values raise ConfigError."""
        values = _typed_values(cls, run_config, "run config")
        settings = cls(**values)
        settings.validate()
        return settings

    @property
    def finetune_mode(self) -> str:
        """ "head" (frozen encoder), "lora" or "full"; ``finetune`` unset ("") follows ``lora``."""
        return self.finetune or ("lora" if self.lora else "full")

    @property
    def lora_targets(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.lora_target_modules.split(",") if t.strip())

    def validate(self) -> None:
        _require(self.num_server_rounds >= 1, "num-server-rounds must be >= 1")
        _require(self.partitioner in PARTITIONERS, f"partitioner must be one of {PARTITIONERS}")
        _require(self.model in MODELS, f"model must be one of {MODELS}, got {self.model!r}")
        _require(
            self.pooler_init in ("pretrained", "identity"),
            "pooler-init must be 'pretrained' or 'identity'",
        )
        _require(
            self.finetune in ("", *FINETUNE_MODES),
            f"finetune must be one of {FINETUNE_MODES} (or unset: lora), got {self.finetune!r}",
        )
        _require(
            not self.finetune or self.model == "text",
            f"finetune={self.finetune!r} applies to model='text' (a tabular model trains whole)",
        )
        _require(
            self.pooling in POOLING_CHOICES,
            f"pooling must be one of {POOLING_CHOICES}, got {self.pooling!r}",
        )
        _require(
            not self.normalize or self.pooling in ("auto", "mean", "cls"),
            "normalize (L2 norm of the pooled vector) needs pooling 'auto', 'mean' or 'cls'",
        )
        _require(_positive(self.dirichlet_alpha), "dirichlet-alpha must be a finite number > 0")
        _require(0 < self.validation_fraction < 1, "validation-fraction must be in (0, 1)")
        _require(self.local_epochs >= 1, "local-epochs must be >= 1")
        _require(self.local_steps >= 0, "local-steps must be >= 0 (0 = local-epochs passes)")
        _require(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}")
        _require(self.server_eval_max_records >= 0, "server-eval-max-records must be >= 0")
        _require(self.batch_size >= 1, "batch-size must be >= 1")
        _require(
            self.max_physical_batch_size >= 0,
            "max-physical-batch-size must be >= 0 (0 = the whole batch at once)",
        )
        _require(
            self.grad_sample_mode in GRAD_SAMPLE_MODES,
            f"grad-sample-mode must be one of {GRAD_SAMPLE_MODES}, got {self.grad_sample_mode!r}",
        )
        _require(_positive(self.learning_rate), "learning-rate must be a finite number > 0")
        _require(
            self.head_learning_rate == 0 or _positive(self.head_learning_rate),
            "head-learning-rate must be a finite number > 0 (0 = learning-rate)",
        )
        _require(self.max_length >= 8, "max-length must be >= 8 tokens")
        _require(
            _positive(self.outside_tag_weight) and self.outside_tag_weight <= 1e3,
            "outside-tag-weight (the NER loss weight of the O tag; entity tags weigh 1) must be "
            f"in (0, 1000], got {self.outside_tag_weight}",
        )
        _require(self.lora_r >= 1 and self.lora_alpha >= 1, "lora-r and lora-alpha must be >= 1")
        _require(bool(self.lora_targets), "lora-target-modules must name at least one module")
        _require(
            _positive(self.target_epsilon),
            f"target-epsilon must be a finite number > 0, got {self.target_epsilon} "
            "(set dp=false for a non-private baseline)",
        )
        _require(
            0 <= self.target_delta < 1,
            f"target-delta must be in [0, 1) (0 = 0.1/n per site), got {self.target_delta}",
        )
        _require(
            0 <= self.noise_multiplier <= MAX_NOISE_MULTIPLIER,
            f"noise-multiplier must be in [0, {MAX_NOISE_MULTIPLIER:g}] (0 = calibrate sigma to "
            f"target-epsilon), got {self.noise_multiplier}",
        )
        _require(
            _positive(self.max_grad_norm) and self.max_grad_norm <= MAX_CLIP_NORM,
            f"max-grad-norm (clip norm C) must be in (0, {MAX_CLIP_NORM:g}]",
        )
        _require(self.accountant in ACCOUNTANTS, f"accountant must be one of {ACCOUNTANTS}")
        _require(0 <= self.fraction_train <= 1, "fraction-train must be in [0, 1]")
        _require(0 <= self.fraction_evaluate <= 1, "fraction-evaluate must be in [0, 1]")
        _require(self.min_train_nodes >= 1, "min-train-nodes must be >= 1")
        _require(self.min_evaluate_nodes >= 0, "min-evaluate-nodes must be >= 0")
        _require(
            self.aggregation in AGGREGATIONS,
            f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}",
        )
        self._validate_server_optimizer()
        _require(0 <= self.trim_fraction < 0.5, "trim-fraction must be in [0, 0.5)")
        _require(self.malicious_sites >= 0, "malicious-sites must be >= 0")
        self._validate_client_dp()
        self._validate_secure_aggregation()
        _require(
            self.max_update_norm == 0 or _positive(self.max_update_norm),
            f"max-update-norm must be a finite number > 0 (0 = no bound), got "
            f"{self.max_update_norm}",
        )
        _require(
            _positive(self.round_timeout),
            f"round-timeout must be a finite number of seconds > 0, got {self.round_timeout}",
        )
        _require(
            not self.resume or bool(self.run_name),
            "resume=true needs the run-name of the run to resume",
        )

    def _validate_server_optimizer(self) -> None:
        _require(
            self.server_optimizer in SERVER_OPTIMIZERS,
            f"server-optimizer must be one of {SERVER_OPTIMIZERS}, got {self.server_optimizer!r}",
        )
        if self.server_optimizer == "fedavg":
            return
        _require(
            self.aggregation == "fedavg",
            f"server-optimizer={self.server_optimizer} steps from the weighted mean of the "
            f"updates: it needs aggregation='fedavg', got {self.aggregation!r}",
        )
        _require(
            not self.secure_aggregation,
            "server-optimizer other than fedavg is not combined with secure-aggregation yet",
        )
        _require(
            self.server_learning_rate == 0 or _positive(self.server_learning_rate),
            "server-learning-rate must be a finite number > 0 (0 = Flower's default)",
        )
        _require(0 <= self.server_momentum < 1, "server-momentum must be in [0, 1)")
        _require(0 <= self.server_beta_1 < 1, "server-beta-1 must be in [0, 1)")
        _require(0 <= self.server_beta_2 < 1, "server-beta-2 must be in [0, 1)")
        _require(_positive(self.server_tau), "server-tau must be a finite number > 0")

    def _validate_client_dp(self) -> None:
        _require(
            self.client_dp in CLIENT_DP_MODES,
            f"client-dp must be one of {CLIENT_DP_MODES}, got {self.client_dp!r}",
        )
        if self.client_dp == "off":
            return
        _require(
            self.aggregation == "fedavg",
            f"client-dp={self.client_dp} needs aggregation='fedavg' (its noise is calibrated to "
            f"the mean of clipped updates), got {self.aggregation!r}",
        )
        _require(
            _positive(self.client_noise_multiplier)
            and self.client_noise_multiplier <= MAX_NOISE_MULTIPLIER,
            f"client-noise-multiplier must be in (0, {MAX_NOISE_MULTIPLIER:g}], got "
            f"{self.client_noise_multiplier}",
        )
        _require(
            _positive(self.client_clipping_norm) and self.client_clipping_norm <= MAX_CLIP_NORM,
            f"client-clipping-norm (C) must be in (0, {MAX_CLIP_NORM:g}]",
        )
        _require(0 < self.client_dp_delta < 1, "client-dp-delta must be in (0, 1)")
        if self.client_dp.endswith("adaptive"):
            _require(0 <= self.client_target_quantile <= 1, "client-target-quantile: [0, 1]")
            _require(_positive(self.client_clip_lr), "client-clip-lr must be > 0")
            _require(
                _positive(self.client_clipped_count_stddev)
                and self.client_noise_multiplier < 2 * self.client_clipped_count_stddev,
                "adaptive clipping needs client-clipped-count-stddev > client-noise-multiplier"
                f" / 2 (Andrew et al.), got {self.client_clipped_count_stddev}",
            )

    def _validate_secure_aggregation(self) -> None:
        if not self.secure_aggregation:
            return
        _require(
            self.aggregation == "fedavg",
            "secure-aggregation needs aggregation='fedavg' (the server sees only the sum)",
        )
        _require(
            self.client_dp in ("off", "client-fixed"),
            "secure-aggregation combines with client-dp='client-fixed' only (the sites clip "
            "and add the noise; the server never sees an update to clip or a norm bit)",
        )
        _require(
            self.secagg_num_shares == 0 or self.secagg_num_shares > 2,
            "secagg-num-shares must be 0 (every sampled site) or > 2",
        )
        _require(
            self.secagg_reconstruction_threshold == 0 or 2 <= self.secagg_reconstruction_threshold,
            "secagg-reconstruction-threshold must be 0 (half the shares) or >= 2",
        )
        _require(
            self.secagg_num_shares == 0
            or self.secagg_reconstruction_threshold < self.secagg_num_shares,
            "secagg-reconstruction-threshold must be below secagg-num-shares",
        )
        _require(_positive(self.secagg_max_weight), "secagg-max-weight must be > 0")
        _require(_positive(self.secagg_clipping_range), "secagg-clipping-range must be > 0")
        _require(
            0 < self.secagg_quantization_range < 2**32,
            "secagg-quantization-range must be in (0, 2^32)",
        )


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
    """

    name: str = ""
    data_file: str = ""
    label_column: str = "label"
    text_column: str = ""
    feature_columns: str = ""
    class_names: str = ""
    epsilon_budget: float = 0.0
    delta: float = 0.0
    min_noise_multiplier: float = 0.0
    max_grad_norm: float = 0.0
    max_rounds_per_run: int = 0
    allow_non_private: bool = False
    ledger: str = ""
    policy_file: str = ""
    validation_fraction: float = 0.0
    split_key: str = ""
    evaluation: str = "dp"
    evaluation_noise_multiplier: float = 3.0
    evaluation_loss_bound: float = 5.0
    max_exact_answers_per_day: int = 100
    max_rounds_per_day: int = 0
    release_record_count: bool = True
    release_timings: bool = False
    allow_audit: bool = False
    release_audit_figures: bool = False
    group_columns: str = ""
    min_cell_size: int = 10

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], where: str, defaults: SiteSettings | None = None
    ) -> SiteSettings:
        """Parse and check a site's keys; ``policy-file`` keys are merged in (a key set in both
        places is an error). Unknown keys and impossible values raise ConfigError."""
        values = dict(values)
        policy_file = values.get("policy-file", "")
        if policy_file:
            _require(isinstance(policy_file, str), f"{where}: policy-file must be a path string")
            from_file = _read_policy_file(Path(str(policy_file)).expanduser())
            both = sorted(set(from_file) & set(values))
            _require(not both, f"{where}: {both} set both here and in policy file {policy_file}")
            values |= from_file
        base = defaults or cls()
        settings = replace(base, **_typed_values(cls, values, where))
        settings.validate(where)
        return settings

    def validate(self, where: str) -> None:
        _require(
            self.epsilon_budget >= 0 and math.isfinite(self.epsilon_budget),
            f"{where}: epsilon-budget must be a finite number >= 0, got {self.epsilon_budget}",
        )
        _require(0 <= self.delta < 1, f"{where}: delta must be in [0, 1), got {self.delta}")
        _require(
            0 <= self.min_noise_multiplier <= MAX_NOISE_MULTIPLIER,
            f"{where}: min-noise-multiplier must be in [0, {MAX_NOISE_MULTIPLIER:g}] "
            f"(0 = no floor), got {self.min_noise_multiplier}",
        )
        _require(
            0 <= self.max_grad_norm <= MAX_CLIP_NORM,
            f"{where}: max-grad-norm must be in [0, {MAX_CLIP_NORM:g}] (0 = no cap), "
            f"got {self.max_grad_norm}",
        )
        _require(
            self.max_rounds_per_run >= 0,
            f"{where}: max-rounds-per-run must be >= 0 (0 = no cap), got {self.max_rounds_per_run}",
        )
        _require(
            self.validation_fraction == 0 or 0 < self.validation_fraction < 1,
            f"{where}: validation-fraction must be in (0, 1) (0 = 0.2), "
            f"got {self.validation_fraction}",
        )
        try:
            key = bytes.fromhex(self.split_key)
        except ValueError:
            key = b""
        _require(
            not self.split_key or len(key) >= 16,
            f"{where}: split-key must be at least 32 hex digits (e.g. `openssl rand -hex 32`)",
        )
        _require(
            self.evaluation in EVALUATION_MODES,
            f"{where}: evaluation must be one of {list(EVALUATION_MODES)}, got {self.evaluation!r}",
        )
        _require(
            MIN_EVALUATION_NOISE <= self.evaluation_noise_multiplier <= MAX_NOISE_MULTIPLIER,
            f"{where}: evaluation-noise-multiplier must be in [{MIN_EVALUATION_NOISE:g}, "
            f"{MAX_NOISE_MULTIPLIER:g}] (below, an answer is as good as exact: say "
            f'evaluation = "exact"), got {self.evaluation_noise_multiplier}',
        )
        _require(
            0 < self.evaluation_loss_bound <= 1e3,
            f"{where}: evaluation-loss-bound must be in (0, 1000], "
            f"got {self.evaluation_loss_bound}",
        )
        for key_name, value in (
            ("max-exact-answers-per-day", self.max_exact_answers_per_day),
            ("max-rounds-per-day", self.max_rounds_per_day),
            ("min-cell-size", self.min_cell_size),
        ):
            _require(value >= 0, f"{where}: {key_name} must be >= 0, got {value}")

    @property
    def feature_list(self) -> list[str] | None:
        names = [c.strip() for c in self.feature_columns.split(",") if c.strip()]
        return names or None

    @property
    def class_list(self) -> list[str] | None:
        names = [c.strip() for c in self.class_names.split(",") if c.strip()]
        return names or None

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
)
EVALUATION_MODES = ("dp", "exact", "off")
MIN_EVALUATION_NOISE = 0.5  # z of a DP evaluation answer (one answer at z 0.5: eps ~ 10)


def _read_toml(file: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{what} {file} cannot be read: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{what} {file} is not valid TOML: {err}") from err


def _read_policy_file(file: Path) -> dict[str, Any]:
    raw = _read_toml(file, "policy file")
    _require("policy-file" not in raw, f"policy file {file} must not name another policy-file")
    tables = sorted(k for k, v in raw.items() if isinstance(v, dict))
    _require(not tables, f"policy file {file}: expected flat keys, found tables {tables}")
    return raw


def load_sites_file(path: str | Path) -> dict[int, SiteSettings]:
    """Per-site settings for a simulation: a TOML file of ``[site.N]`` tables (N = partition id)."""
    file = Path(path)
    raw = _read_toml(file, "sites file")
    unknown = set(raw) - {"site", "run", "simulation"}  # a simulation config may hold all three
    _require(not unknown, f"sites file {file}: unknown top-level keys {sorted(unknown)}")
    tables = raw.get("site", {})
    _require(isinstance(tables, dict), f"sites file {file}: 'site' must hold [site.N] tables")
    sites: dict[int, SiteSettings] = {}
    for key, table in tables.items():
        _require(
            key.isascii() and key.isdecimal() and isinstance(table, dict),
            f"sites file {file}: expected [site.N] tables with N a partition id, got {key!r}",
        )
        sites[int(key)] = SiteSettings.from_mapping(table, f"sites file {file} [site.{key}]")
    return sites


def _typed_values(cls: type, values: Mapping[str, Any], where: str) -> dict[str, Any]:
    known = {f.name.replace("_", "-"): f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    _require(not unknown, f"{where}: unknown keys {unknown}; known keys: {sorted(known)}")
    out: dict[str, Any] = {}
    for key, value in values.items():
        field = known[key]
        default = field.default
        if isinstance(default, bool):
            _require(
                isinstance(value, bool), f"{where}: {key} must be true or false, not {value!r}"
            )
        elif isinstance(default, int):
            _require(
                isinstance(value, int) and not isinstance(value, bool),
                f"{where}: {key} must be an integer, got {value!r}",
            )
        elif isinstance(default, float):
            _require(
                isinstance(value, int | float) and not isinstance(value, bool),
                f"{where}: {key} must be a number, got {value!r}",
            )
            value = float(value)
            _require(not math.isnan(value), f"{where}: {key} must not be NaN")
        else:
            _require(isinstance(value, str), f"{where}: {key} must be a string, got {value!r}")
        out[field.name] = value
    return out


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
