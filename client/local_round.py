"""One training round at a site: budget check -> reserve spend -> DP-SGD -> record release."""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from client.privacy_round import plan_round, this_round
from client.site_context import Site
from client.training import DpSgdSettings, TrainResult, sample_rate, steps_per_epoch, train_locally
from common.config import RunSettings
from common.data.types import LabeledData
from common.models.weights import load_trainable_state, trainable_state
from common.privacy.fingerprint import dataset_fingerprint
from common.privacy.ledger import BudgetExceededError, PrivacyLedger
from common.protocol import BUDGET_EXHAUSTED, TRAINED
from common.task import build_model, to_tensors

log = logging.getLogger("fedpriv.client")

Metrics = dict[str, float | int]


def site_model(
    site: Site, weights: dict[str, np.ndarray], split: str
) -> tuple[nn.Module, TensorDataset, int]:
    """The run's model holding the server's ``weights``, and the site's tensors for ``split``.

    The base model (e.g. frozen BERT weights) is loaded once per process and reused; only the
    trainable parameters are replaced each round.
    """
    records = site.data.train if split == "train" else site.data.validation
    model, tokenizer = _base_model(site.settings, site.data.train, site.device)
    load_trainable_state(model, weights)
    tensors, truncated = _tensors(records, tokenizer, site.settings.max_length)
    return model, tensors, truncated


@lru_cache(maxsize=2)
def _base_model(settings: RunSettings, data: LabeledData, device: torch.device) -> tuple:
    return build_model(settings, data, device)


@lru_cache(maxsize=8)
def _tensors(records: LabeledData, tokenizer: object, max_length: int) -> tuple[TensorDataset, int]:
    return to_tensors(records, tokenizer, max_length)  # type: ignore[arg-type]


@lru_cache(maxsize=8)
def _fingerprint(records: LabeledData) -> str:
    return dataset_fingerprint(records)


def run_train_round(
    site: Site, weights: dict[str, np.ndarray], run_id: str, server_round: int
) -> tuple[dict[str, np.ndarray] | None, Metrics]:
    """Train one round; returns (trainable arrays or None if refused, scalar metrics)."""
    settings = site.settings
    model, tensors, truncated = site_model(site, weights, "train")
    n = len(tensors)
    q = sample_rate(n, settings.batch_size)
    steps = settings.local_steps or steps_per_epoch(n, settings.batch_size) * settings.local_epochs
    base: Metrics = {
        "partition-id": site.partition_id,
        "truncated-texts": truncated,
        "dp": int(settings.dp),
        "max-grad-norm": settings.max_grad_norm if settings.dp else 0.0,
        "sample-rate": q,
    }
    if not settings.dp:
        result = _train(site, model, tensors, None)
        return trainable_state(model), _metrics(base, result, TRAINED, 0.0, 0.0, 0.0)

    fingerprint = _fingerprint(site.data.train)
    with PrivacyLedger(site.ledger_path) as ledger:
        ledger.register_dataset(fingerprint, site.data.name, n)
        privacy = plan_round(
            ledger,
            fingerprint,
            run_id,
            settings,
            site.policy,
            num_records=n,
            sample_rate=q,
            steps_per_round=steps,
        )
        try:
            row = ledger.reserve(
                fingerprint,
                run_id,
                server_round,
                this_round(privacy),
                delta=privacy.delta,
                accountant=privacy.plan.accountant,
                epsilon_budget=privacy.epsilon_budget,
            )
        except BudgetExceededError as refusal:
            log.warning("site %s round %s: %s", site.data.name, server_round, refusal)
            metrics = _metrics(
                base,
                None,
                BUDGET_EXHAUSTED,
                refusal.epsilon_spent,
                privacy.epsilon_budget,
                privacy.delta,
            )
            return None, metrics | {"noise-multiplier": privacy.plan.noise_multiplier}
        dp = DpSgdSettings(privacy.plan.noise_multiplier, settings.max_grad_norm)
        try:
            result = _train(site, model, tensors, dp)
        except BaseException:
            ledger.cancel(row)  # nothing left the site: the reservation is void
            raise
        ledger.mark_released(row, result.num_steps)  # recorded before the update leaves
        spent = ledger.epsilon_spent(fingerprint, privacy.delta, privacy.plan.accountant)
    log.info(
        "site %s round %s: loss %.4f, epsilon %.3f of %.3f (delta %.2g, sigma %.3f, q %.4f, "
        "%d steps)",
        site.data.name,
        server_round,
        result.loss,
        spent,
        privacy.epsilon_budget,
        privacy.delta,
        dp.noise_multiplier,
        q,
        result.num_steps,
    )
    arrays = trainable_state(model)
    return arrays, _metrics(base, result, TRAINED, spent, privacy.epsilon_budget, privacy.delta)


def _train(
    site: Site, model: nn.Module, tensors: TensorDataset, dp: DpSgdSettings | None
) -> TrainResult:
    s = site.settings
    return train_locally(
        model,
        tensors,
        batch_size=s.batch_size,
        epochs=s.local_epochs,
        learning_rate=s.learning_rate,
        dp=dp,
        device=site.device,
        seed=None,
        optimizer=s.optimizer,
        max_steps=s.local_steps or None,
        head_learning_rate=s.head_learning_rate or None,
    )


def _metrics(
    base: Metrics,
    result: TrainResult | None,
    status: int,
    spent: float,
    budget: float,
    delta: float,
) -> Metrics:
    return base | {
        "num-examples": 0 if result is None else result.num_examples,
        "status": status,
        "train-loss": 0.0 if result is None else result.loss,
        "epsilon-spent": spent,
        "epsilon-budget": budget,
        "delta": delta,
        "noise-multiplier": 0.0 if result is None else result.noise_multiplier,
        "steps": 0 if result is None else result.num_steps,
        "train-seconds": 0.0 if result is None else result.seconds,
    }
