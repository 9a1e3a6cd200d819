"""The site's policy applied to the server's request: clamp what it can, refuse what it cannot.

Our own code: the rules are the site's (noise floor, clip cap, rounds cap, budget, no
non-private training unless allowed); no library decides them. Every clamp is reported back to
the server with the value asked for, the value used and why.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.config import SiteSettings
from common.protocol.records import NON_PRIVATE_REFUSED, ROUND_LIMIT
from common.protocol.request import TrainRequest


@dataclass(frozen=True)
class Clamp:
    """One requested value the site replaced by what its policy allows."""

    key: str
    requested: float
    used: float
    why: str

    def __str__(self) -> str:
        return f"{self.key} {self.requested:g} -> {self.used:g} ({self.why})"


class RoundRefused(Exception):
    """The site trains nothing this round. status: a protocol status code; str(): the reason."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        super().__init__(reason)


def check_non_private(request: TrainRequest, policy: SiteSettings) -> None:
    """Refuse a dp=false request unless the site's policy allows non-private training."""
    if not request.dp and not policy.allow_non_private:
        raise RoundRefused(
            NON_PRIVATE_REFUSED,
            "non-private training (dp=false) refused: this site's policy allows DP-SGD only "
            "(allow-non-private = false)",
        )


def clip_norm(request: TrainRequest, policy: SiteSettings) -> tuple[float, list[Clamp]]:
    """C used: the request's, capped at the site's max-grad-norm."""
    cap = policy.max_grad_norm
    if cap and request.max_grad_norm > cap:
        return cap, [Clamp("max-grad-norm", request.max_grad_norm, cap, "site max-grad-norm")]
    return request.max_grad_norm, []


def run_target_epsilon(request: TrainRequest, budget: float) -> tuple[float, list[Clamp]]:
    """Epsilon the run is planned to cost: the request's, at most the site's lifetime budget."""
    if request.target_epsilon > budget:
        return budget, [Clamp("target-epsilon", request.target_epsilon, budget, "site budget")]
    return request.target_epsilon, []


def planned_rounds(request: TrainRequest, policy: SiteSettings) -> tuple[int, list[Clamp]]:
    """Rounds the run's sigma is calibrated for: the run's, at most the site's rounds cap."""
    cap = policy.max_rounds_per_run
    if cap and request.num_server_rounds > cap:
        why = "site max-rounds-per-run"
        return cap, [Clamp("num-server-rounds", request.num_server_rounds, cap, why)]
    return request.num_server_rounds, []


def noise_multiplier(
    asked: float, planned: float, policy: SiteSettings
) -> tuple[float, list[Clamp]]:
    """sigma used this round: max(sigma asked for or calibrated, the run's plan, site floor).

    More noise is always allowed; less never is: neither the request nor the plan can go
    below the site's min-noise-multiplier, and a later request cannot go below the plan.
    """
    used = max(asked, planned, policy.min_noise_multiplier)
    if used == asked:
        return used, []
    why = "site min-noise-multiplier" if used == policy.min_noise_multiplier else "run plan"
    return used, [Clamp("noise-multiplier", asked, used, why)]


def check_round_cap(rounds_trained: int, policy: SiteSettings) -> None:
    """Refuse once the site has trained max-rounds-per-run rounds in this run."""
    cap = policy.max_rounds_per_run
    if cap and rounds_trained >= cap:
        raise RoundRefused(
            ROUND_LIMIT,
            f"round limit: this site trains at most {cap} round(s) per run and has trained "
            f"{rounds_trained}",
        )
