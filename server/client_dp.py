"""Client-level DP (DP-FedAvg): Flower's DifferentialPrivacy{Server,Client}Side{Fixed,Adaptive}
Clipping around the aggregation, inside fedpriv's privacy-aware strategy; ``ClientLevelDp``
around both records each round's release; the client-level epsilon.

Each round: every reply is first checked and recorded by the privacy-aware strategy (a
malformed update is never clipped, only rejected); the accepted updates are clipped to norm C
(by the server, or by the sites with Flower's clipping mods, then also checked against C here),
averaged with equal weights over the n accepted sites, and Gaussian noise of std sigma * C / m
is added to the average (m = sites sampled this round; Flower's rule).

Client-level epsilon (our own, because Flower's accountant covers only fixed clipping without
sampling amplification): each round is one Poisson-subsampled Gaussian release with
- q = sites sampled / sites available (Flower samples a fixed number m of the N sites; the
  Poisson approximation with q = m/N is the usual one for DP-FedAvg, McMahan et al. 2018;
  q = 1 when all sites take part, then it is exact),
- noise multiplier z = std * n / C, from the std actually added and the C the updates were
  clipped with (n < m after dropouts or rejections gives a smaller z than sigma),
- adaptive clipping: the noisy count of clipped updates (std sigma_b, sensitivity 1: Flower
  counts raw bits) is a second Gaussian release; both compose to
  z = (z_update^-2 + sigma_b^-2)^-1/2,
composed over the rounds with dp-accounting's PLD accountant at delta = client-dp-delta.
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
from server.records import RoundRecord
from server.strategy import PrivacyAware

FlowerDp = (
    DifferentialPrivacyServerSideFixedClipping
    | DifferentialPrivacyServerSideAdaptiveClipping
    | DifferentialPrivacyClientSideFixedClipping
    | DifferentialPrivacyClientSideAdaptiveClipping
)


def flower_client_dp(aggregation: Strategy, settings: RunSettings) -> FlowerDp | None:
    """Flower's DP-FedAvg wrapper of the run's client-dp mode around ``aggregation`` (None
    when "off"). It clips (server-fixed/-adaptive; the sites clip with Flower's mods in the
    client- modes), averages through ``aggregation`` and adds N(0, (sigma C / m)^2)."""
    mode = settings.client_dp
    if mode == "off":
        return None
    m = max(settings.min_train_nodes, 1)  # replaced by the real sample size every round
    sigma, clip = settings.client_noise_multiplier, settings.client_clipping_norm
    if mode == "server-fixed":
        return DifferentialPrivacyServerSideFixedClipping(aggregation, sigma, clip, m)
    if mode == "client-fixed":
        return DifferentialPrivacyClientSideFixedClipping(aggregation, sigma, clip, m)
    adaptive = (
        DifferentialPrivacyServerSideAdaptiveClipping
        if mode == "server-adaptive"
        else DifferentialPrivacyClientSideAdaptiveClipping
    )
    return adaptive(
        aggregation,
        sigma,
        m,
        initial_clipping_norm=clip,
        target_clipped_quantile=settings.client_target_quantile,
        clip_norm_lr=settings.client_clip_lr,
        clipped_count_stddev=settings.client_clipped_count_stddev,
    )


class ClientLevelDp(Strategy):
    """Client-level DP rounds of ``strategy``, a PrivacyAware strategy whose inner strategy is
    ``dp`` (``flower_client_dp``): replies are checked and recorded first
    (``strategy.accept``: a malformed update is never clipped, only rejected; in the client-
    modes an update above this round's C is rejected too), then ``dp`` clips, averages and
    noises the accepted ones (``strategy.aggregate_accepted``); what the round did (m, N, n,
    C, noise std) is recorded as this round's client-level release, with epsilon so far.

    mode: the run's client-dp mode; delta: client-dp-delta, the delta of the epsilon.
    """

    def __init__(self, strategy: PrivacyAware, dp: FlowerDp, mode: str, delta: float) -> None:
        self.strategy = strategy
        self.dp = dp
        self.mode = mode
        self.delta = delta
        self.client_side = mode.startswith("client-")  # the sites clip: check ||update|| <= C
        self.adaptive = mode.endswith("-adaptive")
        self._round = {"sampled-sites": 0, "available-sites": 0, "clipping-norm": dp.clipping_norm}

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        clip = self.dp.clipping_norm  # the C of this round's clipping (adaptive: before updating)
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self.dp.num_sampled_clients = max(len(messages), 1)  # noise std sigma * C / m, m = sampled
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
        accepted = self.strategy.accept(
            server_round,
            replies,
            clip if self.client_side else 0.0,
            norm_bit=self.client_side and self.adaptive,
        )
        arrays, metrics = self.strategy.aggregate_accepted(server_round, accepted)
        # the std dp added (none without an aggregate), with the C and m it used then
        dp = self.dp
        std = compute_stdv(dp.noise_multiplier, dp.clipping_norm, dp.num_sampled_clients)
        rec = self.strategy.record(server_round + self.strategy.round_offset)
        rec.client_dp = self._release(len(accepted), clip, std if arrays else 0.0)
        rec.client_dp["epsilon"] = client_level_epsilon(self.strategy.rounds, self.delta)
        return arrays, metrics

    def _release(self, aggregated: int, clip: float, std: float) -> dict[str, Any]:
        """The round's release (common/privacy/client_level.py: z from the noise std, the n
        updates clipped to C; adaptive: composed with the clipped-count release)."""
        z_update = central_noise_multiplier(std, aggregated, clip)
        sigma_b = float(getattr(self.dp, "clipped_count_stddev", 0.0)) if self.adaptive else 0.0
        z = with_clipped_count(z_update, sigma_b) if self.adaptive else z_update
        sampled, available = self._round["sampled-sites"], self._round["available-sites"]
        return {
            "mode": self.mode,
            "noise-multiplier": z,
            "update-noise-multiplier": z_update,
            "clipped-count-stddev": sigma_b,
            "sample-rate": client_sample_rate(sampled, available),
            "clipping-norm": clip,
            "noise-std": std,
            "aggregated-sites": aggregated,
            "sampled-sites": sampled,
            "available-sites": available,
            "delta": self.delta,
        }

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)


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
