"""Property: whatever a coordinator sends — seeds, validation fractions, run keys, Flower runs,
replays, train or evaluate — and while the site's file grows, no record's composed epsilon ever
exceeds the site's budget. Checked per record, from the ledger's rows, with dp-accounting's own
RDP accountant (independent of fedpriv's accounting), over 1,000 adversarial requests."""

from __future__ import annotations

import tomllib
from collections import defaultdict
from pathlib import Path

import dp_accounting
import numpy as np

from client.evaluation_release import EvaluationRefused, release_evaluation
from client.gate import authorize_round, check_caps
from client.policy import RoundRefused
from client.site_context import build_site
from common.config import RunSettings, SiteSettings
from common.data.registry import load_dataset
from common.data.site_file import write_site_file
from common.evaluation import RecordOutcomes
from common.privacy.ledger import PrivacyLedger
from common.protocol.request import TrainRequest

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
BUDGET = 4.0
CASES = 1_000


def _grow_file(path: Path, pool, upto: int) -> None:
    """The site's own file holds the first ``upto`` records of ``pool``."""
    write_site_file(pool.subset(np.arange(upto)), path)


def _request(rng: np.random.Generator, n: int) -> tuple[dict, dict]:
    """A random adversarial run config and train request (on the wire)."""
    run = {
        **DEFAULTS,
        "model": "logreg",
        "accountant": "rdp",
        # the seed only picks the run's public schema here (the site holds its own file):
        # two values keep the schema cached while still changing the run config
        "seed": int(rng.choice([0, 12345])),
        "validation-fraction": float(rng.uniform(0.05, 0.95)),
        "num-server-rounds": int(rng.integers(1, 6)),
        "target-delta": float(rng.choice([0.0, 1e-7, 1e-3])),
    }
    settings = RunSettings.from_run_config(run)
    request = TrainRequest.of_run(settings, f"run-{int(rng.integers(0, 8))}")
    request |= {
        "server-round": int(rng.integers(1, run["num-server-rounds"] + 1)),
        "noise-multiplier": float(rng.choice([2.0, 10.0, 30.0])),
        "batch-size": int(rng.integers(1, n + 50)),
        "local-steps": int(rng.integers(1, 10)),
    }
    return run, request


def test_no_record_ever_exceeds_its_budget(tmp_path):
    pool = load_dataset("heart-disease")[0]
    data_file = tmp_path / "site.csv"
    sizes = [120, 160, 200, 260]  # the site adds records three times during the attack
    _grow_file(data_file, pool, sizes[0])
    policy = SiteSettings.from_mapping(
        {
            "name": "St Elsewhere",
            "data-file": str(data_file),
            "epsilon-budget": BUDGET,
            "evaluation-noise-multiplier": 20.0,
            "ledger": str(tmp_path / "ledger.sqlite"),
        },
        "policy",
    )
    rng = np.random.default_rng(0)
    outcomes = defaultdict(int)
    for case in range(CASES):
        if case and case % (CASES // len(sizes)) == 0:
            _grow_file(data_file, pool, sizes[case // (CASES // len(sizes))])
        n_file = len(pool.subset(np.arange(sizes[min(case // (CASES // len(sizes)), 3)])))
        run, wire = _request(rng, n_file)
        # partition 0 in simulation: the run's validation-fraction is the site's default
        site = build_site(run, policy, 0, 1, run_id=int(rng.integers(0, 50)))
        if rng.random() < 0.3:  # an evaluate message: a Gaussian answer on validation records
            n_val = len(site.data.validation)
            fake = RecordOutcomes(losses=rng.random(n_val), correct=rng.random(n_val) < 0.5)
            try:
                release_evaluation(site, fake, run_key=wire["run-key"], server_round=1)
                outcomes["evaluated"] += 1
            except EvaluationRefused:
                outcomes["evaluation refused"] += 1
            continue
        request = TrainRequest.from_config(wire)
        n = len(site.data.train)
        q = 1 / -(-n // request.batch_size)
        with PrivacyLedger(site.ledger_path) as ledger:
            try:
                check_caps(ledger, site, request.run_key, request.server_round)
                grant = authorize_round(
                    ledger,
                    site.data.train_key,
                    request.run_key,
                    request.server_round,
                    request,
                    site.policy,
                    requested_delta=site.settings.target_delta,
                    accountant=site.settings.accountant,
                    num_records=n,
                    sample_rate=q,
                    steps=request.local_steps,
                    since=site.data.train_since,
                    session=site.session,
                )
            except RoundRefused as refusal:
                outcomes[f"refused: {str(refusal).split(':')[0]}"] += 1
                continue
            ledger.mark_released(grant.row_id, request.local_steps)
            outcomes["trained"] += 1
    assert outcomes["trained"] >= 10 and outcomes["evaluated"] > 20, outcomes
    assert outcomes["refused: replay refused"] > 0, outcomes
    assert outcomes["refused: budget exhausted"] > 0, outcomes  # the budget was reached

    with PrivacyLedger(tmp_path / "ledger.sqlite") as ledger:
        memberships = ledger.record_memberships("St Elsewhere")
        rows = ledger.rows()
    assert len(memberships) == sizes[-1]  # every record of the grown file is known
    violations, checked = 0, 0
    for (key, since), count in _groups(memberships).items():
        mine = [r for r in rows if r.fingerprint == key and r.id > since]
        if not mine:
            continue
        accountant = dp_accounting.rdp.RdpAccountant()
        for r in mine:
            event = dp_accounting.PoissonSampledDpEvent(
                r.sample_rate, dp_accounting.GaussianDpEvent(r.noise_multiplier)
            )
            accountant.compose(event, r.steps)
        epsilon = accountant.get_epsilon(mine[-1].delta)  # at the site's delta of its last check
        checked += count
        violations += count * (epsilon > BUDGET * (1 + 1e-9))
    assert checked >= sizes[0] and violations == 0, (checked, violations)


def _groups(memberships: dict[str, tuple[str, int]]) -> dict[tuple[str, int], int]:
    """(ledger key, since) -> how many records share it (they compose the same releases)."""
    out: dict[tuple[str, int], int] = defaultdict(int)
    for key_since in memberships.values():
        out[key_since] += 1
    return out
