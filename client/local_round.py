"""One training round at a site: request -> the site's gate (client/gate.py: policy, caps, plan,
budget, reservation) -> DP-SGD -> record the release.

Over 300 lines because the round's order (check, reserve, train, mark released or cancel, reply)
is the privacy argument itself and is read top to bottom in one file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from client.gate import authorize_round, check_request, site_budget
from client.policy import Clamp, RoundRefused
from client.released_updates import ReleasedUpdate, keep_released, released_again
from client.site_context import Site
from client.site_data import reference_schema
from client.training import DpSgdSettings, TrainResult, train_locally
from common.config import RunSettings
from common.data.types import LabeledData
from common.evaluation import record_outcomes
from common.models.weights import load_trainable_state, trainable_state, weights_digest
from common.privacy.delta import site_delta
from common.privacy.ledger import PrivacyLedger
from common.privacy.sampling import sample_rate, steps_per_epoch
from common.protocol.records import (
    INVALID_REQUEST,
    STATUS_NAMES,
    TRAIN_METRIC_KEYS,
    TRAINED,
)
from common.protocol.request import RequestError, TrainRequest
from common.task import build_model, check_model_fits, head_features, to_tensors

log = logging.getLogger("fedpriv.client")

Metrics = dict[str, float | int]


def site_model(
    site: Site, weights: dict[str, np.ndarray], split: str
) -> tuple[nn.Module, TensorDataset, int]:
    """The run's model holding the server's ``weights``, and the site's tensors for ``split``.

    The base model (e.g. frozen BERT weights) is loaded once per process and reused; only the
    trainable parameters are replaced each round. In head mode (``finetune="head"``) the model
    is the head alone (FeatureHead, the same trainable names) and the tensors are the frozen
    encoder's features of the records, encoded once and cached under
    ``$FEDPRIV_CACHE/features/``.
    """
    records = site.data.train if split == "train" else site.data.validation
    check_model_fits(site.settings, records)
    # One base model per process, shaped by the run's reference data (a site's own data file
    # was checked to match it): a simulation worker serving many sites builds it once.
    schema = reference_schema(site.settings.dataset, site.settings.seed)
    model, tokenizer = _base_model(site.settings, schema, site.device)
    load_trainable_state(model, weights)
    tensors, truncated = _tensors(records, tokenizer, site.settings.max_length)
    if records.kind == "tokens" and site.settings.outside_tag_weight != 1.0:
        # public per-tag loss weights (TokenCrossEntropy): w = outside-tag-weight on "O", else 1
        tensors.tag_weights = [  # type: ignore[attr-defined]
            site.settings.outside_tag_weight if name == "O" else 1.0 for name in records.class_names
        ]
    if site.settings.model == "text" and site.settings.finetune_mode == "head":
        head, features = _head_features(site.settings, model, tensors, site.device)
        return head, features, truncated
    return model, tensors, truncated


@lru_cache(maxsize=8)
def _head_features(
    settings: RunSettings, model: nn.Module, tensors: TensorDataset, device: torch.device
) -> tuple[nn.Module, TensorDataset]:
    return head_features(settings, model, tensors, device)


@lru_cache(maxsize=2)
def _base_model(settings: RunSettings, data: LabeledData, device: torch.device) -> tuple:
    return build_model(settings, data, device)


@lru_cache(maxsize=8)
def _tensors(records: LabeledData, tokenizer: object, max_length: int) -> tuple[TensorDataset, int]:
    return to_tensors(records, tokenizer, max_length)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RoundReply:
    """What a site sends back: arrays (None when it trained nothing), scalar metrics, and its
    decision (status name, the reason of a refusal, the values its policy clamped)."""

    arrays: dict[str, np.ndarray] | None
    metrics: Metrics
    decision: dict[str, str | list[str]]


def run_train_round(
    site: Site, weights: dict[str, np.ndarray], config: Mapping[str, Any]
) -> RoundReply:
    """Read the server's request, apply the site's policy, train one round if allowed. The
    run's plan and rounds are kept in the ledger under the request's run key; caps count the
    site's own recorded releases (per run key, per asking Flower run, per day), and a (run,
    round) already released is never trained again."""
    n = len(site.data.train)
    base: Metrics = {"partition-id": site.partition_id}
    try:
        request = TrainRequest.from_config(config)
    except RequestError as err:
        reason = f"invalid request: {err}"
        log.warning("site %s: %s", site.data.name, reason)
        state = _ledger_state(site, None, n, None)
        return _refusal(site, base | state, INVALID_REQUEST, reason)
    run_id = request.run_key
    received_sha256 = weights_digest(weights)  # before anything can touch the arrays
    again = released_again(
        site.ledger_path, site.data.train_key, request, received_sha256, site.session
    )
    if again is not None:  # a resumed run asks a round released to an earlier Flower run
        reason = (
            f"round {request.server_round} was released to {again.session}: the same update "
            "sent again (no training, nothing new released)"
        )
        log.info("site %s: %s", site.data.name, reason)
        return RoundReply(again.arrays, again.metrics, _decision(site, TRAINED, reason, ()))
    if request.evaluate_received:  # a DP answer about held-out records, as in evaluate
        base |= evaluate_received(site, weights, run_id, request.server_round)
    q = sample_rate(n, request.batch_size)
    steps = request.local_steps or steps_per_epoch(n, request.batch_size) * request.local_epochs
    base |= {"sample-rate": q if site.policy.release_record_count else 0.0, "dp": int(request.dp)}
    try:
        check_request(site, request)
    except RoundRefused as refusal:
        log.warning("site %s round %s: %s", site.data.name, request.server_round, refusal)
        state = _ledger_state(site, run_id, n, request)
        return _refusal(site, base | state, refusal.status, str(refusal))
    model, tensors, truncated = site_model(site, weights, "train")
    if truncated:  # a statistic of the training texts: logged here, never sent
        log.info("site %s: %d training texts longer than max-length", site.data.name, truncated)
    key = site.data.train_key
    if not request.dp:  # the policy allows it; the ledger learns the data lost its DP bound
        result = _train(site, request, model, tensors, None)
        with PrivacyLedger(site.ledger_path) as ledger:
            ledger.register_dataset(key, site.data.name, n)
            ledger.record_non_private(key, run_id, request.server_round)
        budget = site_budget(site.policy, request.target_epsilon)
        metrics = _metrics(site, base, result, (math.inf, budget, 0.0), rounds_trained=0)
        reply = RoundReply(trainable_state(model), metrics, _decision(site, TRAINED, "", ()))
        return _kept(site, request, received_sha256, reply)

    with PrivacyLedger(site.ledger_path) as ledger:
        ledger.register_dataset(key, site.data.name, n)
        try:
            grant = authorize_round(
                ledger,
                key,
                run_id,
                request.server_round,
                request,
                site.policy,
                requested_delta=request.target_delta,
                accountant=request.accountant,
                num_records=n,
                sample_rate=q,
                steps=steps,
                since=site.data.train_since,
                session=site.session,
            )
        except RoundRefused as refusal:
            log.warning("site %s round %s: %s", site.data.name, request.server_round, refusal)
            state = _ledger_state(site, run_id, n, request, ledger)
            return _refusal(site, base | state, refusal.status, str(refusal))
        dp = DpSgdSettings(grant.release.noise_multiplier, grant.max_grad_norm)
        try:
            result = _train(site, request, model, tensors, dp)
        except BaseException:
            ledger.cancel(grant.row_id)  # nothing left the site: the reservation is void
            raise
        ledger.mark_released(grant.row_id, result.num_steps)  # recorded before the update leaves
        spent = ledger.epsilon_spent(
            key, grant.delta, grant.plan.accountant, since=site.data.train_since
        )
        rounds_trained = ledger.rounds_recorded(key, run_id)
    for clamp in grant.clamps:
        log.info("site %s round %s: clamped %s", site.data.name, request.server_round, clamp)
    log.info(
        "site %s round %s: loss %.4f, epsilon %.3f of %.3f (delta %.2g, sigma %.3f, C %g, "
        "q %.4f, %d steps, %s clipping, %.1f s)",
        site.data.name,
        request.server_round,
        result.loss,
        spent,
        grant.epsilon_budget,
        grant.delta,
        dp.noise_multiplier,
        dp.max_grad_norm,
        q,
        result.num_steps,
        result.grad_sample_mode,
        result.seconds,
    )
    metrics = _metrics(
        site, base, result, (spent, grant.epsilon_budget, grant.delta), rounds_trained
    )
    reply = RoundReply(trainable_state(model), metrics, _decision(site, TRAINED, "", grant.clamps))
    return _kept(site, request, received_sha256, reply)


def _kept(site: Site, request: TrainRequest, received_sha256: str, reply: RoundReply) -> RoundReply:
    """Keep a released reply (client/released_updates.py) so a resumed run can get it again."""
    assert reply.arrays is not None
    update = ReleasedUpdate(reply.arrays, reply.metrics, site.session, received_sha256)
    keep_released(site.ledger_path, site.data.train_key, request, update)
    return reply


def evaluate_received(
    site: Site, weights: dict[str, np.ndarray], run_key: str, server_round: int
) -> Metrics:
    """The site's (DP) answer about the received global model on its validation records, as
    the ``eval-*`` metrics of a train reply; a refused answer has eval-examples 0."""
    from client.evaluation_release import EvaluationRefused, release_evaluation

    model, dataset, _ = site_model(site, weights, "validation")
    outcomes = record_outcomes(
        model, dataset, device=site.device, tag_names=site.data.validation.class_names
    )
    try:
        metrics = release_evaluation(site, outcomes, run_key=run_key, server_round=server_round)
    except EvaluationRefused as refusal:
        log.warning("site %s: %s", site.data.name, refusal)
        return {"eval-examples": 0, "eval-status": refusal.status}
    metrics.pop("num-examples")
    return {"eval-status": metrics.pop("status")} | metrics


def _ledger_state(
    site: Site,
    run_id: str | None,
    num_records: int,
    request: TrainRequest | None,
    ledger: PrivacyLedger | None = None,
) -> Metrics:
    """The site's privacy state for a refusal: epsilon spent, budget, left, delta, rounds; at
    the run plan's delta, else the request's (an unreadable request: the site's own delta and
    the run settings' target epsilon for a simulated site's budget)."""
    requested_epsilon = request.target_epsilon if request else site.settings.target_epsilon
    budget = site_budget(site.policy, requested_epsilon)
    key = site.data.train_key
    owned = ledger is None
    ledger = ledger or PrivacyLedger(site.ledger_path)
    try:
        plan = None if run_id is None else ledger.run_plan(key, run_id)
        if plan is not None:
            delta, accountant = plan.delta, plan.accountant
        else:
            delta = site_delta(site.policy, request.target_delta if request else 0.0, num_records)
            accountant = request.accountant if request else site.settings.accountant
        spent = ledger.epsilon_spent(key, delta, accountant, since=site.data.train_since)
        rounds = 0 if run_id is None else ledger.rounds_recorded(key, run_id)
    finally:
        if owned:
            ledger.close()
    return {
        "epsilon-spent": spent,
        "epsilon-budget": budget,
        "epsilon-left": max(budget - spent, 0.0),
        "delta": delta,
        "rounds-trained": rounds,
    }


def _refusal(site: Site, base: Metrics, status: int, reason: str) -> RoundReply:
    """A refusal: no arrays, zero counts, the site's privacy state and the reason."""
    metrics = {key: 0 for key in TRAIN_METRIC_KEYS} | base | {"status": status}
    return RoundReply(None, metrics, _decision(site, status, reason, ()))


def _decision(
    site: Site, status: int, reason: str, clamps: Iterable[Clamp]
) -> dict[str, str | list[str]]:
    return {
        "site": site.data.name,  # the site's own display name, for the coordinator's reports
        "status": STATUS_NAMES[status],
        "reason": reason,
        "clamped": [str(c) for c in clamps],
    }


def _train(
    site: Site,
    request: TrainRequest,
    model: nn.Module,
    tensors: TensorDataset,
    dp: DpSgdSettings | None,
) -> TrainResult:
    return train_locally(
        model,
        tensors,
        batch_size=request.batch_size,
        epochs=request.local_epochs,
        learning_rate=request.learning_rate,
        dp=dp,
        device=site.device,
        seed=None,
        optimizer=request.optimizer,
        max_steps=request.local_steps or None,
        head_learning_rate=request.head_learning_rate or None,
        grad_sample_mode=request.grad_sample_mode,
        max_physical_batch_size=request.max_physical_batch_size or None,
    )


def _metrics(
    site: Site,
    base: Metrics,
    result: TrainResult,
    epsilon: tuple[float, float, float],
    rounds_trained: int,
) -> Metrics:
    """A training reply's metrics: only what the release inventory lets leave (no training
    loss: an exact statistic of the training records; counts and timings by policy)."""
    spent, budget, delta = epsilon
    policy = site.policy
    not_evaluated = {"eval-examples": 0, "eval-loss": 0.0, "eval-accuracy": 0.0}
    return (
        not_evaluated
        | base
        | {
            "num-examples": result.num_examples if policy.release_record_count else 1,
            "status": TRAINED,
            "epsilon-spent": spent,
            "epsilon-budget": budget,
            "epsilon-left": max(budget - spent, 0.0),
            "delta": delta,
            "noise-multiplier": result.noise_multiplier,
            "max-grad-norm": result.max_grad_norm,
            "steps": result.num_steps,
            "train-seconds": round(result.seconds, 1) if policy.release_timings else 0.0,
            "rounds-trained": rounds_trained,
        }
    )
