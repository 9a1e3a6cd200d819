"""The delta a site accounts at: below 1/n for its n records, never loosened by a server."""

from __future__ import annotations

from common.config import SiteSettings

DEFAULT_DELTA_TIMES_N = 0.1  # delta = 0.1 / n when neither the site nor the run sets one


def default_delta(num_records: int) -> float:
    """delta = 0.1 / n for n records: below 1/n, the usual bar (publishing one record picked
    at random is (0, 1/n)-DP, so delta must be well under 1/n to mean anything)."""
    return DEFAULT_DELTA_TIMES_N / num_records


def site_delta(policy: SiteSettings, requested_delta: float, num_records: int) -> float:
    """The site's delta: its policy's; else the run's target-delta if at most 0.1/n; else
    0.1/n for the n records the releases are on. A server cannot loosen it."""
    default = default_delta(num_records)
    if policy.delta:
        return policy.delta
    return min(requested_delta, default) if requested_delta else default
