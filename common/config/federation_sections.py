"""Run-config sections of what the coordinator does: federation, robustness, client-level DP,
secure aggregation, output. Declared as in ``training_sections`` (limits once per field)."""

from __future__ import annotations

from dataclasses import dataclass

from common.config.fields import check_fields, positive, require, setting
from common.config.limits import MAX_CLIP_NORM, MAX_NOISE_MULTIPLIER, MAX_ROUNDS

SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi")
AGGREGATIONS = ("fedavg", "median", "trimmed-mean", "krum", "multi-krum")
CLIENT_DP_MODES = ("off", "server-fixed", "server-adaptive", "client-fixed", "client-adaptive")


@dataclass(frozen=True)
class FederationSettings:
    """Rounds and who takes part: num-server-rounds; the fraction of sites sampled to train and
    to evaluate (at least min-*-nodes); evaluate-with-train: sites evaluate the received model
    inside the train message; round-timeout (s); the server's step from the weighted mean of the
    updates (server-optimizer: Flower's FedAvg, FedAvgM, FedAdam, FedYogi; learning rate 0 =
    Flower's default)."""

    num_server_rounds: int = setting(3, low=1, cap=MAX_ROUNDS)
    fraction_train: float = setting(1.0, low=0, high=1)
    min_train_nodes: int = setting(2, low=1)
    fraction_evaluate: float = setting(1.0, low=0, high=1)
    min_evaluate_nodes: int = setting(2, low=0)
    evaluate_with_train: bool = False
    round_timeout: float = setting(3600.0, low=0, open_low=True, hint="seconds")
    server_optimizer: str = setting("fedavg", choices=SERVER_OPTIMIZERS)
    server_learning_rate: float = setting(0.0, low=0, open_low=True, zero="Flower's default")
    server_momentum: float = setting(0.9, low=0, high=1, open_high=True)
    server_beta_1: float = setting(0.9, low=0, high=1, open_high=True)
    server_beta_2: float = setting(0.99, low=0, high=1, open_high=True)
    server_tau: float = setting(1e-3, low=0, open_low=True)

    def check_section(self) -> None:
        check_fields(self, section=FederationSettings)


@dataclass(frozen=True)
class RobustnessSettings:
    """What the server does against hostile updates: reject an update with
    ||w_site - w_global||_2 > max-update-norm (0 = no bound); combine the rest by aggregation
    (trimmed-mean: beta = trim-fraction per tail; krum / multi-krum: tolerate f =
    malicious-sites)."""

    max_update_norm: float = setting(0.0, low=0, open_low=True, zero="no bound")
    aggregation: str = setting("fedavg", choices=AGGREGATIONS)
    trim_fraction: float = setting(0.2, low=0, high=0.5, open_high=True)
    malicious_sites: int = setting(0, low=0)

    def check_section(self) -> None:
        check_fields(self, section=RobustnessSettings)


@dataclass(frozen=True)
class ClientDpSettings:
    """Client-level DP (DP-FedAvg, Flower's wrappers): each update clipped to C =
    client-clipping-norm, noise std z * C / m on the mean of m sampled updates (z =
    client-noise-multiplier), epsilon reported at client-dp-delta; adaptive clipping (Andrew et
    al.) moves C towards the client-target-quantile at client-clip-lr, with the clipped count
    noised at client-clipped-count-stddev."""

    client_dp: str = setting("off", choices=CLIENT_DP_MODES)
    client_noise_multiplier: float = setting(1.0, low=0, cap=MAX_NOISE_MULTIPLIER, open_low=True)
    client_clipping_norm: float = setting(1.0, low=0, cap=MAX_CLIP_NORM, open_low=True)
    client_target_quantile: float = setting(0.5, low=0, high=1)
    client_clip_lr: float = setting(0.2, low=0, open_low=True)
    client_clipped_count_stddev: float = setting(1.0, low=0, open_low=True)
    client_dp_delta: float = setting(1e-5, low=0, high=1, open_low=True, open_high=True)

    def check_section(self) -> None:
        check_fields(self, section=ClientDpSettings)
        if self.client_dp.endswith("adaptive"):
            require(
                positive(self.client_clipped_count_stddev)
                and self.client_noise_multiplier < 2 * self.client_clipped_count_stddev,
                "adaptive clipping needs client-clipped-count-stddev > client-noise-multiplier"
                f" / 2 (Andrew et al.), got {self.client_clipped_count_stddev}",
            )


@dataclass(frozen=True)
class SecureAggregationSettings:
    """Flower's SecAgg+: the server learns only the weighted sum. secagg-num-shares (0 = every
    sampled site), reconstruction threshold (0 = half the shares), the largest weight, the
    clipping and quantization ranges of the masked integers."""

    secure_aggregation: bool = False
    secagg_num_shares: int = setting(0, low=3, zero="every sampled site")
    secagg_reconstruction_threshold: int = setting(0, low=2, zero="half the shares")
    secagg_max_weight: float = setting(1000.0, low=0, open_low=True)
    secagg_clipping_range: float = setting(8.0, low=0, open_low=True)
    secagg_quantization_range: int = setting(
        4194304, low=0, high=2**32, open_low=True, open_high=True
    )

    def check_section(self) -> None:
        check_fields(self, section=SecureAggregationSettings)
        require(
            not self.secure_aggregation
            or self.secagg_num_shares == 0
            or self.secagg_reconstruction_threshold < self.secagg_num_shares,
            "secagg-reconstruction-threshold must be below secagg-num-shares",
        )


@dataclass(frozen=True)
class OutputSettings:
    """Where results go and what the final report holds: results-dir/run-name (resume=true
    continues that run); audit: membership-inference audit of the final model at the sites that
    allow it; sensitive-column: the column whose groups get fairness counts."""

    results_dir: str = "results"
    run_name: str = ""
    resume: bool = False
    audit: bool = False
    sensitive_column: str = ""

    def check_section(self) -> None:
        require(
            not self.resume or bool(self.run_name),
            "resume=true needs the run-name of the run to resume",
        )
