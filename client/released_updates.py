"""The last update a site released per run, kept so a resumed run gets the SAME bytes again.

A coordinator whose ServerApp dies after the sites released round r (their updates sent, the
aggregate lost) resumes from its checkpoint of round r - 1 and asks round r again. The site
never trains a released (run, round) twice, so without this the resumed run could not go on.
Sending the identical released update again is post-processing of a release the ledger already
counts: it costs no epsilon and reveals nothing new, whatever the asker does with it. It is
resent only when everything matches what was released: the dataset (its ledger key), the run
key, the round, the request, the received global model (sha256 of every array), and only to a
later Flower run (within the Flower run that got it, a replay is refused: it has it already).

One file per (dataset, run key), holding that run's latest released round (older rounds are
never resent: a resumed run restarts at the round after its checkpoint). Files are 0600 in a
0700 folder beside the ledger; arrays in .npz without pickles. Our own because no library keeps
a DP release for idempotent re-delivery.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.protocol.request import TrainRequest

log = logging.getLogger("fedpriv.client")

FOLDER = "released-updates"
_META = "__fedpriv_release__"


@dataclass(frozen=True)
class ReleasedUpdate:
    """What a site sent for one round: arrays and scalar metrics; who asked (session, the
    Flower run) and received_sha256 (``weights_digest`` of the global model it trained from,
    taken before training). The request it answered is stored beside it."""

    arrays: dict[str, np.ndarray]
    metrics: dict[str, float | int]
    session: str
    received_sha256: str


def _path(ledger_path: Path, dataset_key: str, run_key: str) -> Path:
    name = hashlib.sha256(f"{dataset_key}\n{run_key}".encode()).hexdigest()[:40]
    return Path(ledger_path).parent / FOLDER / f"{name}.npz"


def keep_released(
    ledger_path: Path,
    dataset_key: str,
    request: TrainRequest,
    update: ReleasedUpdate,
) -> None:
    """Store ``update`` (already marked released in the ledger) for ``request``'s run; a
    failure is logged, never raised: without the file a replay is refused, as before."""
    path = _path(ledger_path, dataset_key, request.run_key)
    meta = {
        "metrics": update.metrics,
        "session": update.session,
        "request": dataclasses.asdict(request),
        "received-sha256": update.received_sha256,
    }
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        buffer = io.BytesIO()
        meta_bytes = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        np.savez(buffer, **{_META: meta_bytes}, **update.arrays)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(buffer.getvalue())
        os.replace(tmp, path)
    except (OSError, TypeError, ValueError) as err:
        log.warning("could not keep the released update of run %s: %s", request.run_key, err)


def released_again(
    ledger_path: Path,
    dataset_key: str,
    request: TrainRequest,
    received_sha256: str,
    session: str,
) -> ReleasedUpdate | None:
    """The update released for exactly this (dataset, run, round, request, received model) to
    another Flower run than ``session``; None when anything differs or nothing is kept."""
    path = _path(ledger_path, dataset_key, request.run_key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(stored[_META].tobytes().decode())
            arrays = {k: stored[k] for k in stored.files if k != _META}
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        log.warning("released update file %s is unreadable (%s): not resent", path, err)
        return None
    same = (
        meta.get("request") == dataclasses.asdict(request)
        and meta.get("received-sha256") == received_sha256
        and meta.get("session") != session
    )
    if not same:
        return None
    return ReleasedUpdate(arrays, meta["metrics"], meta["session"], meta["received-sha256"])
