"""common/releases.py: the release inventory lets only listed values leave a site."""

from __future__ import annotations

import pytest

from common.config import SIMULATED_SITE, SiteSettings
from common.protocol.records import TRAIN_METRIC_KEYS
from common.releases import ReleaseError, check_reply, coverage


def test_every_train_reply_key_is_covered():
    assert all(coverage(key, "train") for key in TRAIN_METRIC_KEYS)


@pytest.mark.parametrize("key", ["train-loss", "truncated-texts", "record-0-label", "eval-x"])
def test_a_key_outside_the_inventory_never_leaves(key):
    with pytest.raises(ReleaseError, match="not in the release inventory"):
        check_reply({key: 1.0}, "train", SiteSettings())


def test_per_type_and_per_group_counts_are_covered_as_gaussian_answers():
    assert coverage("eval-entity-tp/person", "evaluate") == "dp-gaussian"
    assert coverage("group/Female/tp", "evaluate") == "dp-gaussian"


def test_audit_figures_need_the_release_policy():
    with pytest.raises(ReleaseError, match="release-audit-figures"):
        check_reply({"audit-loss-auc": 0.5}, "evaluate", SiteSettings())
    check_reply({"audit-loss-auc": 0.5}, "evaluate", SIMULATED_SITE)  # the researcher's site
