"""Client-level DP (DP-FedAvg): Flower's DifferentialPrivacy{Server,Client}Side{Fixed,Adaptive}
Clipping wrapped around fedpriv's privacy-aware strategy, and the client-level epsilon.

Each round: every reply is first checked and recorded by the privacy-aware strategy (a
malformed update is never clipped, only rejected); the accepted updates are clipped to norm C
(by the server, or by the sites with Flower's clipping mods, then also checked against C here),
averaged with equal weights over the n accepted sites, and Gaussian noise of std sigma * C / m
is added to the average (m = sites sampled this round; Flower's rule).

Client-level epsilon: each round is one Poisson-subsampled Gaussian release on the sites'
updates, common.privacy.client_level (q = m/N, z = std * n / C from the std actually added and
the C the updates were clipped with; adaptive clipping composes the noisy count of clipped
updates into z), composed over the rounds at delta = client-dp-delta.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.differential_privacy import compute_stdv

from common.config import RunSettings
from common.privacy import client_level
from common.privacy.client_level import (
    CLIENT_DP_ACCOUNTANT,
    ClientLevelRelease,
    central_noise_multiplier,
    client_sample_rate,
    with_clipped_count,
)
from server.strategy import PrivacyAware, RoundRecord


class _CheckedFirst:
    """Mixed in front of a Flower DP wrapper whose inner strategy is a PrivacyAware one:
    replies are checked (and recorded) before the wrapper clips and aggregates them; what
    the round actually did (m, N, n, C, noise std) is recorded for the client-level epsilon."""

    strategy: PrivacyAware
    clipping_norm: float
    noise_multiplier: float
    num_sampled_clients: int
    mode = ""
    client_side = False  # the sites clip: the server checks ||update|| <= C
    adaptive = False
    delta = 1e-5

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        clip = self.clipping_norm  # the C of this round's clipping (adaptive: before updating)
        messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
        self.num_sampled_clients = max(len(messages), 1)  # noise std sigma * C / m, m = sampled
        self._round = {
            "sampled-sites": len(messages),
            "available-sites": len(list(grid.get_node_ids())),
            "clipping-norm": clip,
        }
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        clip = float(self._round["clipping-norm"])
        bound = clip if self.client_side else 0.0
        accepted = self.strategy.accept(
            server_round, replies, bound, norm_bit=self.client_side and self.adaptive
        )
        self.strategy._accepted_round = server_round
        self._std = 0.0
        arrays, metrics = super().aggregate_train(server_round, accepted)  # type: ignore[misc]
        rec = self.strategy.record(server_round + self.strategy.round_offset)
        rec.client_dp = self._release(len(accepted), clip)
        rec.client_dp["epsilon"] = client_level_epsilon(self.strategy.rounds, self.delta)
        return arrays, metrics

    def _add_noise_to_aggregated_arrays(self, aggregated: ArrayRecord) -> ArrayRecord:
        self._std = compute_stdv(
            self.noise_multiplier, self.clipping_norm, self.num_sampled_clients
        )
        return super()._add_noise_to_aggregated_arrays(aggregated)  # type: ignore[misc]

    def _release(self, aggregated: int, clip: float) -> dict[str, Any]:
        z_update = central_noise_multiplier(self._std, aggregated, clip)
        sigma_b = float(getattr(self, "clipped_count_stddev", 0.0)) if self.adaptive else 0.0
        z = with_clipped_count(z_update, sigma_b) if self.adaptive else z_update
        sampled, available = self._round["sampled-sites"], self._round["available-sites"]
        return {
            "mode": self.mode,
            "noise-multiplier": z,
            "update-noise-multiplier": z_update,
            "clipped-count-stddev": sigma_b,
            "sample-rate": client_sample_rate(sampled, available),
            "clipping-norm": clip,
            "noise-std": self._std,
            "aggregated-sites": aggregated,
            "sampled-sites": sampled,
            "available-sites": available,
            "delta": self.delta,
        }


class ServerFixed(_CheckedFirst, DifferentialPrivacyServerSideFixedClipping):
    mode = "server-fixed"


class ServerAdaptive(_CheckedFirst, DifferentialPrivacyServerSideAdaptiveClipping):
    mode, adaptive = "server-adaptive", True


class ClientFixed(_CheckedFirst, DifferentialPrivacyClientSideFixedClipping):
    mode, client_side = "client-fixed", True


class ClientAdaptive(_CheckedFirst, DifferentialPrivacyClientSideAdaptiveClipping):
    mode, client_side, adaptive = "client-adaptive", True, True


def with_client_dp(strategy: PrivacyAware, settings: RunSettings) -> Strategy:
    """``strategy`` wrapped for the run's client-dp mode (unchanged when "off")."""
    mode = settings.client_dp
    if mode == "off":
        return strategy
    m = max(settings.min_train_nodes, 1)  # replaced by the real sample size every round
    sigma, clip = settings.client_noise_multiplier, settings.client_clipping_norm
    wrapper: _CheckedFirst
    if mode in ("server-fixed", "client-fixed"):
        cls = ServerFixed if mode == "server-fixed" else ClientFixed
        wrapper = cls(strategy, sigma, clip, m)
    else:
        cls_a = ServerAdaptive if mode == "server-adaptive" else ClientAdaptive
        wrapper = cls_a(
            strategy,
            sigma,
            m,
            initial_clipping_norm=clip,
            target_clipped_quantile=settings.client_target_quantile,
            clip_norm_lr=settings.client_clip_lr,
            clipped_count_stddev=settings.client_clipped_count_stddev,
        )
    wrapper.delta = settings.client_dp_delta
    wrapper._round = {"sampled-sites": 0, "available-sites": 0, "clipping-norm": clip}
    return wrapper  # type: ignore[return-value]


def client_level_epsilon(rounds: dict[int, RoundRecord], delta: float) -> float:
    """Epsilon at ``delta`` of every round's client-level release so far (z, q per round)."""
    releases = [
        ClientLevelRelease(dp["noise-multiplier"], dp["sample-rate"])
        for dp in (rounds[number].client_dp for number in sorted(rounds))
        if dp and dp.get("aggregated-sites")
    ]
    return client_level.client_level_epsilon(releases, delta)


def client_level_dp_summary(rounds: dict[int, RoundRecord], settings: RunSettings) -> dict:
    """The run's client-level DP for summary.json: mode, parameters, epsilon at delta after the
    last round, and each round's release (None when client-dp is off)."""
    if settings.client_dp == "off":
        return {"mode": "off"}
    released = {n: r.client_dp for n, r in sorted(rounds.items()) if r.client_dp}
    return {
        "mode": settings.client_dp,
        "epsilon": client_level_epsilon(rounds, settings.client_dp_delta),
        "delta": settings.client_dp_delta,
        "accountant": CLIENT_DP_ACCOUNTANT,
        "client-noise-multiplier": settings.client_noise_multiplier,
        "rounds": released,
    }
