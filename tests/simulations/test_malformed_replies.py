"""End to end: 50 malformed replies of 10 kinds injected into a real Flower simulation.

12 simulated sites (heart-disease, iid), 5 rounds; sites 2..11 train for real and then corrupt
their reply (tests/simulations/corrupting_app.py, a Flower mod around fedpriv's ClientApp), 10
per round. The run must complete, every malformed reply must be rejected with its reason and
counted in the summary, and the final model must be exactly the FedAvg of the two honest
sites' last replies (saved by the mod as they left the sites).
"""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from simulations import run as simulation
from tests.simulations.corrupting_app import KINDS, kind_of

ROOT = Path(__file__).resolve().parents[2]
SITES, ROUNDS = 12, 5


def _corrupting_app(folder: Path) -> Path:
    """A copy of the app whose ClientApp is the corrupting one (nothing else differs)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("client", "common", "server", "simulations", "tests"):
        shutil.copytree(ROOT / package, folder / package, ignore=ignore)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'clientapp = "client.app:app"' in pyproject
    (folder / "pyproject.toml").write_text(
        pyproject.replace(
            'clientapp = "client.app:app"',
            'clientapp = "tests.simulations.corrupting_app:app"',
        )
    )
    return folder


@pytest.mark.slow
def test_fifty_malformed_replies_in_a_simulation_never_reach_the_model(tmp_path, monkeypatch):
    monkeypatch.setattr(simulation, "APP_DIR", _corrupting_app(tmp_path / "app"))
    results = tmp_path / "results"
    log = io.StringIO()
    try:
        folder = simulation.run_simulation(
            None,
            {
                "run-name": "corrupted",
                "partitioner": "iid",
                "num-server-rounds": ROUNDS,
                "min-train-nodes": 2,
                "fraction-evaluate": 0.0,
                "min-evaluate-nodes": 0,
                "dp": False,  # validation does not depend on DP; no accounting keeps it quick
                "max-update-norm": 1000.0,
            },
            results,
            num_supernodes=SITES,
            stream=log,
        )
    except simulation.SimulationError as err:
        raise AssertionError(log.getvalue()[-6000:]) from err

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rounds-completed"] == ROUNDS and summary["stopped-early"] is None
    rejected = summary["rejected-updates"]
    assert len(rejected) == 50
    # each rejection names its round, its site and the reason of its kind of damage
    expected = Counter(
        (r, f"site-{pid}", kind_of(pid, SITES, r))
        for r in range(1, ROUNDS + 1)
        for pid in range(2, SITES)
    )
    found = Counter()
    for line in rejected:
        head, site, reason = line.split(": ", 2)
        r = int(head.removeprefix("round "))
        (kind,) = [k for k in KINDS if KINDS[k] in reason and (r, site, k) in expected]
        found[(r, site, kind)] += 1
    assert found == expected
    assert Counter(k for _, _, k in found.elements()) == dict.fromkeys(KINDS, 5)

    rounds = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    for rec in rounds[1:]:
        assert rec["trained-sites"] == 2 and len(rec["rejected"]) == 10
        statuses = Counter(m["status"] for m in rec["sites"].values())
        assert statuses == {"trained": 2, "rejected": 10}

    # The final model is the weighted mean of the honest sites' last replies, nothing else.
    honest = [
        np.load(results / "honest-replies" / f"round-{ROUNDS}-site-{pid}.npz") for pid in (0, 1)
    ]
    weights = np.array([float(h["num_examples"]) for h in honest])
    state = torch.load(folder / "model" / "tabular_model.pt", weights_only=False)["state_dict"]
    for key, value in state.items():
        mean = (
            sum(w * h[key].astype(np.float64) for w, h in zip(weights, honest, strict=True))
            / weights.sum()
        )
        np.testing.assert_allclose(value.numpy(), mean, rtol=1e-5, atol=1e-6)
