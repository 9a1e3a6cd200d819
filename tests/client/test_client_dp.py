"""client/client_dp.py: with client-side clipping the site's reply leaves clipped to norm C,
after its DP-SGD spend is in its ledger; refusals pass through; nothing changes when off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, KEY_NORM_BIT

from client import app as client_app
from tests.client.test_app import _assert_refused, _context, _ledger_rows, _message, _site_context


def _update_norm(sent, reply) -> float:
    sent = {k: v.numpy() for k, v in sent.content["arrays"].items()}
    got = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    return float(np.sqrt(sum(np.sum((got[k] - sent[k]) ** 2) for k in sent)))


def test_client_fixed_clipping_clips_the_update_after_the_ledger_recorded_the_spend(tmp_path):
    context = _site_context(tmp_path, **{"epsilon-budget": 50.0})
    context.run_config["client-dp"] = "client-fixed"
    request = _message(context, "train", **{KEY_CLIPPING_NORM: 0.01, "noise-multiplier": 1.0})
    reply = client_app.app(request, context)
    assert not reply.has_error(), reply.error
    assert _update_norm(request, reply) <= 0.01 * (1 + 1e-3)
    assert len(_ledger_rows(tmp_path)) == 1  # the spend was recorded by the site itself
    assert dict(reply.content["decision"])["status"] == "trained"


def test_client_adaptive_clipping_reports_the_norm_bit(tmp_path):
    context = _context(tmp_path, **{"client-dp": "client-adaptive"})
    request = _message(context, "train", **{KEY_CLIPPING_NORM: 1e-3, "noise-multiplier": 1.0})
    reply = client_app.app(request, context)
    assert reply.content["metrics"][KEY_NORM_BIT] == 1  # it was clipped
    assert _update_norm(request, reply) <= 1e-3 * (1 + 1e-3)


def test_a_refusal_passes_the_clipping_mod_unchanged(tmp_path):
    context = _site_context(tmp_path, **{"epsilon-budget": 0.3})
    context.run_config["client-dp"] = "client-fixed"
    request = _message(context, "train", **{"noise-multiplier": 0.5, KEY_CLIPPING_NORM: 1.0})
    reply = client_app.app(request, context)
    assert not reply.has_error()
    _assert_refused(reply, "budget exhausted", "over the budget")


def test_without_client_side_clipping_the_update_is_untouched(tmp_path: Path):
    context = _context(tmp_path)
    request = _message(context, "train", **{"noise-multiplier": 1.0})
    reply = client_app.app(request, context)
    assert _update_norm(request, reply) > 1e-3
    assert KEY_NORM_BIT not in reply.content["metrics"]
