"""The strategy a run uses, composed explicitly from its settings.

From the inside out: Flower's aggregation (``aggregation``: the weighted mean FedAvg, or a
robust rule; with FedAvg, the ``server-optimizer`` stepping from the weighted mean), Flower's
DP-FedAvg wrapper around it when ``client-dp`` is on (server/client_dp.py), fedpriv's
privacy-aware strategy around that (server/strategy.py: every reply checked and recorded), and
around all of it, what drives the rounds: SecAgg+ (server/secure_aggregation.py) when
``secure-aggregation`` is on, else ``ClientLevelDp`` when ``client-dp`` is on. Each wrapper calls
its inner strategy's public methods only.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)

from common.config import RunSettings
from server.client_dp import ClientLevelDp, flower_client_dp
from server.metrics import evaluate_metrics, train_metrics
from server.secure_aggregation import with_secure_aggregation
from server.strategy import UNIFORM_WEIGHT, PrivacyAware

# aggregation -> the Flower strategy whose aggregate_train combines the accepted replies
AGGREGATIONS: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,  # sum_k (n_k / n) w_k
    "median": FedMedian,  # coordinate-wise median
    "trimmed-mean": FedTrimmedAvg,  # coordinate-wise mean without the beta tails
    "krum": Krum,  # the update closest to its n - f - 2 nearest neighbours
    "multi-krum": MultiKrum,  # the mean of the m best-scored updates
}

# server-optimizer -> the Flower strategy stepping from the weighted mean (Reddi et al. 2021),
# with the pseudo-gradient delta = mean(w_site) - w:
# FedAvgM (Hsu et al. 2019): with g = -delta, v <- beta v + g, w <- w - eta v;
# FedAdam: m <- b1 m + (1 - b1) delta, v <- b2 v + (1 - b2) delta^2,
#   w <- w + eta m / (sqrt(v) + tau) (Flower's, with its bias-corrected eta);
# FedYogi: as FedAdam but v <- v - (1 - b2) delta^2 sign(v - delta^2).
SERVER_OPTIMIZERS: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
}


def build_strategy(
    settings: RunSettings, *, site_names: dict[int, str] | None = None, round_offset: int = 0
) -> tuple[PrivacyAware, Strategy]:
    """(the privacy-aware strategy, which holds the round records; the strategy Flower's loop
    runs: it, or a wrapper around it). site_names: partition id -> display name;
    round_offset: rounds a resumed run completed before."""
    aggregation = flower_aggregation(settings)
    # SecAgg+: the server never sees an update to clip; the sites clip and share the noise
    dp = None if settings.secure_aggregation else flower_client_dp(aggregation, settings)
    strategy = PrivacyAware(
        dp or aggregation,
        min_train_nodes=aggregation.min_train_nodes,
        site_names=site_names,
        round_offset=round_offset,
        max_update_norm=settings.max_update_norm,
        uniform_weights=aggregation.weighted_by_key == UNIFORM_WEIGHT,
    )
    if settings.secure_aggregation:
        return strategy, with_secure_aggregation(strategy, settings)
    if dp is not None:
        return strategy, ClientLevelDp(strategy, dp, settings.client_dp, settings.client_dp_delta)
    return strategy, strategy


def flower_aggregation(settings: RunSettings) -> FedAvg:
    """Flower's strategy for the run's ``aggregation`` (or, with "fedavg", its
    ``server-optimizer``): node sampling, the combination of the accepted replies, and the
    metric figures Flower logs each round (server/metrics.py)."""
    aggregation, optimizer = settings.aggregation, settings.server_optimizer
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {sorted(AGGREGATIONS)}, got {aggregation!r}")
    if optimizer not in SERVER_OPTIMIZERS:
        raise ValueError(
            f"server-optimizer must be one of {sorted(SERVER_OPTIMIZERS)}, got {optimizer!r}"
        )
    if optimizer != "fedavg" and aggregation != "fedavg":
        raise ValueError(
            f"server-optimizer={optimizer!r} steps from the weighted mean: it needs "
            f"aggregation='fedavg', got {aggregation!r}"
        )
    cls = SERVER_OPTIMIZERS[optimizer] if aggregation == "fedavg" else AGGREGATIONS[aggregation]
    return cls(
        fraction_train=settings.fraction_train,
        min_train_nodes=settings.min_train_nodes,
        min_available_nodes=settings.min_train_nodes,
        # evaluate-with-train: sites evaluate inside the train message, none separately
        fraction_evaluate=0.0 if settings.evaluate_with_train else settings.fraction_evaluate,
        min_evaluate_nodes=0 if settings.evaluate_with_train else settings.min_evaluate_nodes,
        train_metrics_aggr_fn=train_metrics,
        evaluate_metrics_aggr_fn=evaluate_metrics,
        **_aggregation_options(settings),
        **_server_optimizer_options(settings),
    )


def _aggregation_options(settings: RunSettings) -> dict[str, Any]:
    """The robust aggregation's own parameters (Flower's names)."""
    if settings.aggregation == "trimmed-mean":
        return {"beta": settings.trim_fraction}
    if settings.aggregation in ("krum", "multi-krum"):
        options: dict[str, Any] = {"num_malicious_nodes": settings.malicious_sites}
        if settings.aggregation == "multi-krum":  # keep the n - f best-scored updates
            options["num_nodes_to_select"] = max(
                settings.min_train_nodes - settings.malicious_sites, 1
            )
        return options
    if settings.client_dp != "off":  # DP-FedAvg: noise is calibrated to an unweighted mean
        return {"weighted_by_key": UNIFORM_WEIGHT}
    return {}


def _server_optimizer_options(settings: RunSettings) -> dict[str, Any]:
    """The server optimizer's parameters (Flower's names); server-learning-rate 0 keeps
    Flower's default (FedAvgM 1.0, FedAdam/FedYogi 0.1)."""
    lr = settings.server_learning_rate
    if settings.server_optimizer == "fedavgm":
        return {"server_momentum": settings.server_momentum} | (
            {"server_learning_rate": lr} if lr else {}
        )
    if settings.server_optimizer in ("fedadam", "fedyogi"):
        return {
            "beta_1": settings.server_beta_1,
            "beta_2": settings.server_beta_2,
            "tau": settings.server_tau,
        } | ({"eta": lr} if lr else {})
    return {}
