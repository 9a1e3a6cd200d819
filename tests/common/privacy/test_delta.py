"""common/privacy/delta.py: the site's delta is below 1/n and no server can loosen it."""

import pytest

from common.config import SiteSettings
from common.privacy.delta import default_delta, site_delta

NO_POLICY = SiteSettings()


@pytest.mark.parametrize(("n", "expected"), [(1, 0.1), (500, 2e-4), (303, 0.1 / 303)])
def test_the_default_is_a_tenth_of_one_over_n(n, expected):
    assert default_delta(n) == pytest.approx(expected, rel=1e-15)
    assert default_delta(n) < 1 / n


def test_default_delta_is_a_tenth_of_one_over_n():
    delta = site_delta(NO_POLICY, 0.0, num_records=500)
    assert delta == pytest.approx(2e-4) and delta < 1 / 500


def test_the_server_may_ask_for_a_smaller_delta_but_not_a_larger_one():
    assert site_delta(NO_POLICY, 1e-6, num_records=500) == 1e-6
    assert site_delta(NO_POLICY, 0.5, num_records=500) == pytest.approx(2e-4)


def test_the_site_delta_wins_over_the_request():
    assert site_delta(SiteSettings(delta=1e-7), 1e-6, num_records=500) == 1e-7
    assert site_delta(SiteSettings(delta=1e-3), 1e-6, num_records=500) == 1e-3
