"""One ClientApp process of a site, as deployment starts one per message (used by
test_site_restart.py). Runs the real ``client.app.train`` handler for one round and prints the
reply's metrics and decision as one JSON line.

    python -m tests.client.site_process SITES_FILE RESULTS_DIR RUN_ID ROUND ROUNDS MODE

MODE: "reply" (answer and exit), "linger" (answer, then stay alive until killed: a long-lived
process killed between rounds), "hang" (announce "training" once DP-SGD starts, then block
until killed: a process killed mid-round, after its reservation).
"""

from __future__ import annotations

import json
import sys
import time
import tomllib
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

import client.local_round as local_round
from client import app as client_app
from common.config import RunSettings
from common.data.registry import load_dataset
from common.models.weights import trainable_state
from common.protocol.records import to_array_record
from common.protocol.request import TrainRequest
from common.task import build_model

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def main(sites_file: str, results: str, run_id: str, server_round: str, rounds: str, mode: str):
    run_config = {
        **DEFAULTS,
        "model": "logreg",
        "sites-file": sites_file,
        "results-dir": results,
        "num-server-rounds": int(rounds),
        "target-epsilon": 2.0,
        "batch-size": 32,
    }
    context = Context(
        run_id=int(run_id),
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 4},
        state=RecordDict(),
        run_config=run_config,
    )
    settings = RunSettings.from_run_config(run_config)
    model, _ = build_model(settings, load_dataset(settings.dataset)[1], "cpu")
    config = {"server-round": int(server_round), **TrainRequest.of_run(settings, f"run-{run_id}")}
    message = Message(
        content=RecordDict(
            {"arrays": to_array_record(trainable_state(model)), "config": ConfigRecord(config)}
        ),
        metadata=Metadata(
            run_id=int(run_id),
            message_id=f"m{server_round}",
            src_node_id=0,
            dst_node_id=1,
            reply_to_message_id="",
            group_id=server_round,
            created_at=time.time(),
            ttl=600.0,
            message_type="train",
        ),
    )
    if mode == "hang":

        def hang(*args, **kwargs):
            print("training", flush=True)
            while True:
                time.sleep(1)

        local_round.train_locally = hang  # type: ignore[assignment]
    reply = client_app.train(message, context)
    print(
        json.dumps(
            {"metrics": dict(reply.content["metrics"]), "decision": dict(reply.content["decision"])}
        ),
        flush=True,
    )
    while mode == "linger":
        time.sleep(1)


if __name__ == "__main__":
    main(*sys.argv[1:])
