"""Secure aggregation (run-config secure-aggregation = true): Flower's SecAgg+ protocol around the
privacy-aware strategy, so that the server learns only the weighted sum of the sites' models.

Flower 1.42 has SecAgg+ only on its legacy path: ``SecAggPlusWorkflow`` runs inside a
``DefaultWorkflow`` with a LegacyContext and a legacy Strategy. Its stages are reused here as
they are (setup, share keys, unmask) from a Message-API strategy: ``configure_train`` runs the
key exchange and returns the collect-masked-vectors messages, which carry fedpriv's training
request, so Flower's round loop sends them (with the round timeout) like any train message;
``aggregate_train`` sums the masked vectors, runs the unmask stage (which recovers the masks of
sites that dropped after the key exchange, from the shares of at least
``reconstruction_threshold`` of their neighbours) and hands the privacy-aware strategy one
record per site: its metrics and decision as it sent them, and the aggregate in place of arrays
the server never had. Individual updates therefore cannot be checked (shapes, NaN, norm): the
aggregate is, and each site's value range is bounded by the quantization's clipping range.

With client-dp = client-fixed the server cannot clip or noise (it never sees an update), so
the sites do both (client/client_dp.py): each clips its update to C and adds Gaussian noise
of std sigma C / sqrt(m) (m sites sampled), every site's weight is 1, and the securely summed
noise has std sigma C sqrt(n / m) for the n sites that contributed: client-level DP without
trusting the server, accounted as in server/client_dp.py with z = sigma sqrt(n / m)
(common.privacy.client_level).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Parameters,
    Status,
    bytes_to_ndarray,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.ndarrays_arithmetic import parameters_addition, parameters_mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from common.config import RunSettings
from common.privacy import client_level
from common.protocol.records import ARRAYS, CONFIG, DECISION, DISTRIBUTED_NOISE_STDDEV, METRICS
from server.client_dp import client_level_epsilon
from server.strategy import PrivacyAware, RoundFailed


@dataclass
class _Site:
    """What the workflow's stages call a client proxy: only the node id is used."""

    node_id: int


class _LegacyBridge:
    """What SecAggPlusWorkflow's stages ask of a LegacyContext: the round and global arrays in
    ``state``, the sampled sites from ``strategy.configure_fit``, the aggregate handed to
    ``strategy.aggregate_fit`` (kept here), ``client_manager.num_available`` for a log line."""

    def __init__(self, server_round: int, arrays: ArrayRecord, sites: list[int]) -> None:
        self.state = RecordDict(
            {
                MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round}),
                MAIN_PARAMS_RECORD: arrays,
            }
        )
        self.strategy = self
        self.client_manager = self
        self.sites = sites
        self.aggregate: list[np.ndarray] | None = None

    def num_available(self) -> int:
        return len(self.sites)

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
        empty = FitIns(Parameters(tensors=[], tensor_type=""), {})  # the request goes later
        return [(_Site(node), empty) for node in self.sites]

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple:
        if results:  # every result carries the unmasked aggregate
            self.aggregate = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}


class SecureAggregation(Strategy):
    """SecAgg+ rounds around a PrivacyAware strategy (which samples the sites, records every
    reply, and aggregates). ``workflow`` holds the protocol's parameters."""

    def __init__(
        self,
        strategy: PrivacyAware,
        workflow: SecAggPlusWorkflow,
        client_dp: tuple[float, float, float] | None = None,
    ) -> None:
        self.strategy = strategy
        self.workflow = workflow
        self.client_dp = client_dp  # (sigma, C, delta): sites clip to C and add noise shares
        self.received: list[Message] = []  # every reply of the last round, as the server got it

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        requests = {
            m.metadata.dst_node_id: m
            for m in self.strategy.configure_train(server_round, arrays, config, grid)
        }
        self._grid, self._arrays = grid, arrays
        self._sampling = (len(requests), len(list(grid.get_node_ids())))  # m, N
        self._bridge = _LegacyBridge(server_round, arrays, list(requests))
        self._state = state = WorkflowState()
        started = self.workflow.setup_stage(grid, self._bridge, state)  # type: ignore[arg-type]
        started = started and self.workflow.share_keys_stage(grid, self._bridge, state)  # type: ignore[arg-type]
        if not started:
            raise RoundFailed(
                f"round {server_round + self.strategy.round_offset}: secure aggregation could "
                f"not start: fewer than {state.threshold} sites took part in its key exchange"
            )
        messages = []
        for node in sorted(state.active_node_ids):
            protocol = ConfigRecord(
                {
                    Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
                    Key.CIPHERTEXT_LIST: state.forward_ciphertexts[node],
                    Key.SOURCE_LIST: state.forward_srcs[node],
                }
            )
            request = requests[node].content
            config = ConfigRecord(dict(request[CONFIG]))
            if self.client_dp is not None:  # each site: clip to C, add N(0, (sigma C)^2 / m)
                sigma, clip, _ = self.client_dp
                config[KEY_CLIPPING_NORM] = clip
                config[DISTRIBUTED_NOISE_STDDEV] = client_level.distributed_noise_std(
                    sigma, clip, len(requests)
                )
            content = RecordDict(
                {ARRAYS: request[ARRAYS], CONFIG: config, RECORD_KEY_CONFIGS: protocol}
            )
            messages.append(
                Message(
                    content=content,
                    dst_node_id=node,
                    message_type=MessageType.TRAIN,
                    group_id=str(server_round),
                )
            )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.received = list(replies)
        state = self._state
        shapes = [(1,), *(array.shape for array in self._arrays.values())]  # weight, model
        replies = [_checked_masked_reply(m, shapes) for m in self.received]
        answered = [m for m in replies if not m.has_error()]
        state.active_node_ids = {m.metadata.src_node_id for m in answered}
        masked = None
        for msg in answered:
            vector = _masked_vector(msg)
            masked = vector if masked is None else parameters_addition(masked, vector)
        weights = [int(m.content["fitres.num_examples"]["num_examples"]) for m in answered]
        if masked is not None and sum(weights) > 0:
            state.aggregate_ndarrays = parameters_mod(masked, state.mod_range)
            state.legacy_results = [
                (_Site(m.metadata.src_node_id), _empty_fit_res()) for m in answered
            ]
            unmasked = self.workflow._check_threshold(state) and self.workflow.unmask_stage(
                self._grid,
                self._bridge,  # type: ignore[arg-type]
                state,
            )
            if not unmasked or self._bridge.aggregate is None:
                raise RoundFailed(
                    f"round {server_round + self.strategy.round_offset}: secure aggregation "
                    f"could not remove the masks: fewer than {state.threshold} shares of a "
                    "site's keys came back"
                )
        sent = self._arrays
        aggregate = ArrayRecord(
            {
                key: Array(np.asarray(value, dtype=sent[key].numpy().dtype))
                for key, value in zip(sent.keys(), self._bridge.aggregate or [], strict=False)
            }
        )
        result = self.strategy.aggregate_train(
            server_round, [_site_record(m, aggregate) for m in replies]
        )
        if self.client_dp is not None:
            contributed = sum(1 for weight in weights if weight > 0)
            rec = self.strategy.record(server_round + self.strategy.round_offset)
            rec.client_dp = self._release(contributed)
            rec.client_dp["epsilon"] = client_level_epsilon(self.strategy.rounds, self.client_dp[2])
        return result

    def _release(self, contributed: int) -> dict[str, Any]:
        """This round's client-level release: the n contributing sites' noise shares sum to
        std sigma C sqrt(n / m) on the sum of n updates clipped to C: z = sigma sqrt(n / m)."""
        assert self.client_dp is not None
        sigma, clip, delta = self.client_dp
        sampled, available = self._sampling
        z = client_level.distributed_noise_multiplier(sigma, contributed, sampled)
        return {
            "mode": "client-fixed, secure aggregation (distributed noise)",
            "noise-multiplier": z,
            "sample-rate": client_level.client_sample_rate(sampled, available),
            "clipping-norm": clip,
            "noise-std": z * clip / contributed if contributed else 0.0,  # on the mean
            "aggregated-sites": contributed,
            "sampled-sites": sampled,
            "available-sites": available,
            "delta": delta,
        }

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)


def _masked_vector(msg: Message) -> list[np.ndarray]:
    protocol = msg.content.config_records[RECORD_KEY_CONFIGS]
    return [bytes_to_ndarray(b) for b in protocol[Key.MASKED_PARAMETERS]]  # type: ignore[union-attr]


def _checked_masked_reply(msg: Message, shapes: list[tuple[int, ...]]) -> Message:
    """The reply, or an error in its place when it holds no well-formed masked vector (the
    site then counts as dropped: its masks are removed from its neighbours' shares)."""
    if msg.has_error():
        return msg
    try:
        weight = msg.content["fitres.num_examples"]["num_examples"]
        vector = _masked_vector(msg)
        if [v.shape for v in vector] != shapes or not isinstance(weight, int) or weight < 0:
            raise ValueError("shapes or weight differ from the round's")
        if METRICS not in msg.content.metric_records:
            raise ValueError("no metrics")
    except (KeyError, TypeError, ValueError) as err:
        reason = f"no well-formed SecAgg+ masked vector ({err}); counted as dropped"
        return Message(error=Error(code=0, reason=reason), metadata=msg.metadata)
    return msg


def _empty_fit_res() -> FitRes:
    return FitRes(Status(Code.OK, ""), Parameters(tensors=[], tensor_type=""), 0, {})


def _site_record(msg: Message, aggregate: ArrayRecord) -> Message:
    """A site's reply as the privacy-aware strategy reads it: its metrics and decision, and,
    if it trained, the secure aggregate in place of its own arrays (never sent)."""
    if msg.has_error():
        return msg
    content = RecordDict({METRICS: msg.content[METRICS]})
    if DECISION in msg.content:
        content[DECISION] = msg.content[DECISION]
    if int(msg.content["fitres.num_examples"]["num_examples"]) > 0 and len(aggregate):
        content[ARRAYS] = aggregate
    return Message(content=content, metadata=msg.metadata)


def with_secure_aggregation(strategy: PrivacyAware, settings: RunSettings) -> Strategy:
    """``strategy`` inside SecAgg+ rounds when the run asks for secure aggregation."""
    if not settings.secure_aggregation:
        return strategy
    workflow = SecAggPlusWorkflow(
        num_shares=settings.secagg_num_shares or 1.0,  # 0 = every sampled site
        reconstruction_threshold=settings.secagg_reconstruction_threshold or 0.5,
        max_weight=settings.secagg_max_weight,
        clipping_range=settings.secagg_clipping_range,
        quantization_range=settings.secagg_quantization_range,
        timeout=settings.round_timeout,
    )
    client_dp = None
    if settings.client_dp == "client-fixed":
        client_dp = (
            settings.client_noise_multiplier,
            settings.client_clipping_norm,
            settings.client_dp_delta,
        )
    return SecureAggregation(strategy, workflow, client_dp)
