"""Client-level DP (DP-FedAvg, McMahan et al. 2018): one round as a release on the sites' updates.

Each round, m of the N available sites are sampled; the n that answer send updates clipped to
L2 norm C (the sensitivity of their sum to one site), and Gaussian noise is added to the sum,
by the server or (secure aggregation) as shares by the sites. The round is one release of the
Poisson-subsampled Gaussian mechanism with
- q = m / N (Flower samples a fixed number m; the Poisson approximation with q = m/N is the usual
  one for DP-FedAvg; q = 1 when all sites take part, then it is exact),
- z = (noise std on the sum) / C, the noise multiplier actually applied (n < m after dropouts
  or rejections gives a smaller z than the configured sigma).
Rounds compose with dp-accounting's PLD accountant at delta = client-dp-delta. Our own few
lines because Flower's accountant covers only fixed clipping without sampling amplification.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import dp_accounting

from common.privacy.accounting import make_accountant

CLIENT_DP_ACCOUNTANT = "pld"
MIN_NOISE_MULTIPLIER = 0.01  # below this z the release is reported as epsilon = inf


def client_sample_rate(sampled: int, available: int) -> float:
    """q = m / N for m sites sampled of N available (1 when N is not known)."""
    return sampled / available if available else 1.0


def central_noise_multiplier(noise_std: float, aggregated: int, clipping_norm: float) -> float:
    """z = std * n / C for noise of std ``noise_std`` added to the mean of n updates clipped to
    C (the mean's noise times n is the sum's); 0 when no update was aggregated."""
    return noise_std * aggregated / clipping_norm if aggregated else 0.0


def with_clipped_count(update_noise_multiplier: float, clipped_count_stddev: float) -> float:
    """Adaptive clipping releases, besides the update, the noisy count of clipped updates (std
    sigma_b, sensitivity 1); both Gaussian releases compose to one with
    z = (z_update^-2 + sigma_b^-2)^-1/2 (0 when either is 0: no bound)."""
    if update_noise_multiplier > 0 and clipped_count_stddev > 0:
        return (update_noise_multiplier**-2 + clipped_count_stddev**-2) ** -0.5
    return 0.0


def distributed_noise_std(noise_multiplier: float, clipping_norm: float, sampled: int) -> float:
    """Each sampled site's noise share, std sigma C / sqrt(m): the m shares sum to std sigma C."""
    return noise_multiplier * clipping_norm / math.sqrt(sampled)


def distributed_noise_multiplier(noise_multiplier: float, contributed: int, sampled: int) -> float:
    """z = sigma sqrt(n / m): the shares of the n sites that contributed (of m sampled) sum to
    std sigma C sqrt(n / m) on the sum of their updates; 0 when none contributed."""
    return noise_multiplier * math.sqrt(contributed / sampled) if contributed else 0.0


@dataclass(frozen=True)
class ClientLevelRelease:
    """One round's client-level release: noise multiplier z, site sample rate q."""

    noise_multiplier: float
    sample_rate: float

    def event(self) -> dp_accounting.DpEvent:
        """PoissonSampled(q, Gaussian(z)); NonPrivate (epsilon = inf) for z below 0.01."""
        if self.noise_multiplier < MIN_NOISE_MULTIPLIER:
            return dp_accounting.NonPrivateDpEvent()
        return dp_accounting.PoissonSampledDpEvent(
            self.sample_rate, dp_accounting.GaussianDpEvent(self.noise_multiplier)
        )


def client_level_epsilon(releases: Iterable[ClientLevelRelease], delta: float) -> float:
    """Epsilon at ``delta`` of the rounds' releases composed (0.0 for none)."""
    if not 0 < delta < 1:
        raise ValueError(f"client-dp-delta must be in (0, 1), got {delta}")
    accountant = make_accountant(CLIENT_DP_ACCOUNTANT)
    for release in releases:
        accountant.compose(release.event())
    return float(accountant.get_epsilon(delta))
