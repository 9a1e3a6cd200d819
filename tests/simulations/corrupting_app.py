"""Test-only ClientApp: fedpriv's real ClientApp behind a Flower mod that corrupts the training
replies of some simulated sites, one kind of corruption per site and round.

Sites with partition id < HONEST train and reply as usual (their reply is also saved under
``<results-dir>/honest-replies`` so a test can recompute the aggregate); every other site
trains for real (its ledger records the spend) and then its reply is damaged in one of KINDS.
Used by tests/simulations/test_malformed_replies.py through a copy of the app whose
pyproject names ``tests.simulations.corrupting_app:app`` as the ClientApp.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord
from flwr.app.message_type import MessageType
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from client import app as real
from common.protocol.records import ARRAYS, CONFIG, METRICS

HONEST = 2  # partitions 0 and 1 stay honest
HUGE = 1e4  # added to every weight: far beyond the run's max-update-norm

# kind -> the words of the rejection reason the server must give for it
KINDS = {
    "wrong shape": "has shape",
    "missing key": "array keys differ from the model's: missing",
    "extra key": "unexpected ['backdoor']",
    "NaN": "NaN or infinite",
    "Inf": "NaN or infinite",
    "huge norm": "exceeds the bound",
    "wrong dtype": "has dtype float64, expected float32",
    "negative example count": "num-examples must be a whole number",
    "missing metric": "metrics lack ['epsilon-spent']",
    "NaN metric": "metric steps is not finite",
}


def kind_of(partition_id: int, num_partitions: int, server_round: int) -> str:
    """The corruption a dishonest site applies in a round: every kind in turn."""
    dishonest = num_partitions - HONEST
    index = (server_round - 1) * dishonest + partition_id - HONEST
    return list(KINDS)[index % len(KINDS)]


def corrupt(arrays: dict[str, np.ndarray], metrics: dict, kind: str) -> None:
    """Damage a reply's arrays and metrics in place."""
    first, last = next(iter(arrays)), list(arrays)[-1]
    if kind == "wrong shape":
        arrays[first] = np.resize(arrays[first], arrays[first].size + 1)
    elif kind == "missing key":
        del arrays[last]
    elif kind == "extra key":
        arrays["backdoor"] = np.ones(3, np.float32)
    elif kind in ("NaN", "Inf"):
        arrays[first] = arrays[first].copy()
        arrays[first].flat[0] = np.nan if kind == "NaN" else -np.inf
    elif kind == "huge norm":
        arrays.update({k: v + np.float32(HUGE) for k, v in arrays.items()})
    elif kind == "wrong dtype":
        arrays[last] = arrays[last].astype(np.float64)
    elif kind == "negative example count":
        metrics["num-examples"] = -int(metrics["num-examples"])
    elif kind == "missing metric":
        del metrics["epsilon-spent"]
    elif kind == "NaN metric":
        metrics["steps"] = math.nan
    else:
        raise ValueError(f"unknown corruption {kind!r}")


def corrupting_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run the real site, then corrupt its training reply unless the site is honest."""
    reply = call_next(msg, context)
    if msg.metadata.message_type != MessageType.TRAIN or reply.has_error():
        return reply
    if ARRAYS not in reply.content:  # the site refused: nothing to corrupt
        return reply
    pid = int(context.node_config["partition-id"])
    sites = int(context.node_config["num-partitions"])
    server_round = int(msg.content[CONFIG]["server-round"])
    arrays = {k: v.numpy() for k, v in reply.content[ARRAYS].items()}
    metrics = dict(reply.content[METRICS])
    if pid < HONEST:
        folder = Path(str(context.run_config["results-dir"])) / "honest-replies"
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(
            folder / f"round-{server_round}-site-{pid}.npz",
            num_examples=metrics["num-examples"],
            **arrays,
        )
        return reply
    corrupt(arrays, metrics, kind_of(pid, sites, server_round))
    reply.content[ARRAYS] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    reply.content[METRICS] = MetricRecord(metrics)
    return reply


app = ClientApp(mods=[corrupting_mod])
app.train()(real.train)
app.evaluate()(real.evaluate_global)
