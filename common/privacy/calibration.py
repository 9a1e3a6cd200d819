"""Choose sigma once for a whole planned run (rounds x local steps) to a target epsilon."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import dp_accounting

from common.privacy.accounting import DpRelease, make_accountant

_SIGMA_LIMITS = (1e-3, 1e4)
_RELATIVE_TOLERANCE = 2e-3  # of the bracket's upper end


@lru_cache(maxsize=64)
def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "pld",
    spent: tuple[DpRelease, ...] = (),
) -> float:
    """Smallest sigma (to 0.2% relative tolerance) such that ``steps`` DP-SGD steps at rate q,
    composed after the already ``spent`` releases, stay within ``target_epsilon`` at ``delta``.

    dp-accounting's ``calibrate_dp_mechanism`` finds sigma inside a bracket chosen here: PLD is
    slow for small sigma, so the bracket comes from the (fast, looser) RDP accountant first:
    eps_PLD <= eps_RDP, hence sigma_PLD <= sigma_RDP. Raises ValueError for impossible targets.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target epsilon must be a finite number > 0, got {target_epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample rate q must be in (0, 1], got {sample_rate}")
    if steps < 1:
        raise ValueError(f"planned steps must be >= 1, got {steps}")
    make_accountant(accountant)  # validates the name

    def event(sigma: float) -> dp_accounting.DpEvent:
        events = [r.event() for r in spent if r.steps]
        events.append(DpRelease(sigma, sample_rate, steps).event())
        return dp_accounting.ComposedDpEvent(events)

    def gap(name: str) -> Callable[[float], float]:
        return lambda sigma: (
            make_accountant(name).compose(event(sigma)).get_epsilon(delta) - target_epsilon
        )

    def search(name: str, upper: float) -> float:
        """calibrate_dp_mechanism in [lower, upper]: upper meets the target, lower does not."""
        lower = upper / 2
        while gap(name)(lower) <= 0:
            if lower <= _SIGMA_LIMITS[0]:
                return lower  # less noise than any run would use already meets the target
            lower /= 2
        bracket = dp_accounting.ExplicitBracketInterval(lower, upper)
        return float(
            dp_accounting.calibrate_dp_mechanism(
                lambda: make_accountant(name),
                event,
                target_epsilon,
                delta,
                bracket_interval=bracket,
                tol=_RELATIVE_TOLERANCE * upper,
            )
        )

    sigma_rdp = search("rdp", _grow_until_within(gap("rdp")))
    if accountant == "rdp":
        return sigma_rdp
    upper = sigma_rdp
    while gap(accountant)(upper) > 0:  # PLD is tighter than RDP, but never trust a bracket
        upper *= 1.5
        if upper > _SIGMA_LIMITS[1]:
            raise ValueError("no noise multiplier up to 1e4 meets the target epsilon")
    return search(accountant, upper)


def _grow_until_within(gap: Callable[[float], float]) -> float:
    """The smallest sigma = 2^j >= 1 that meets the target (gap <= 0)."""
    sigma = 1.0
    while gap(sigma) > 0:
        sigma *= 2
        if sigma > _SIGMA_LIMITS[1]:
            raise ValueError(
                "no noise multiplier up to 1e4 meets the target epsilon: the budget already "
                "spent leaves no room for this run (lower the rounds/steps or raise the budget)"
            )
    return sigma
