"""The server's checkpoint after each round: global model, round number, per-round records.

Our own code: Flower's ServerApp keeps its state in memory only. One file, written to a
temporary name and renamed over the old one (atomic on POSIX), so a ServerApp killed at any
moment leaves either the previous checkpoint or the new one, never a torn file. Sites' ledgers
stay the only record of their epsilon; the checkpoint holds what the sites reported.

A run resumes from it only with the configuration it was written under (``check_same_run``)
and only from the model recorded after its round (``check_model``: sha256 of the arrays).
"""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.config import RunSettings
from common.models.weights import weights_digest
from server.records import RoundRecord
from server.results import CHECKPOINT_FILE

_STATE_KEY = "__fedpriv_state__"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used to resume this run (damaged, or another configuration)."""


@dataclass
class Checkpoint:
    """completed_round: the last round whose aggregate is in ``arrays``; run_key: what sites
    key this run's privacy plan by (kept across resumes); settings: the run's configuration."""

    completed_round: int
    arrays: dict[str, np.ndarray]
    rounds: dict[int, RoundRecord]
    run_key: str
    settings: dict[str, Any]
    flower_run_ids: list[int] = field(default_factory=list)
    started: float = 0.0
    resumed: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunIdentity:
    """What a run keeps across its resumes. run_id: this process's Flower run id; run_key: what
    sites key the run's privacy plan by ("<run-name>@<first run id>"); flower_run_ids: every
    Flower run that worked on it; resumed: each resume's run id, round and model digest;
    started: when the first one started (epoch seconds)."""

    run_name: str
    run_id: int
    run_key: str
    flower_run_ids: list[int]
    resumed: list[dict[str, Any]]
    started: float

    @classmethod
    def of(cls, run_name: str, run_id: int, checkpoint: Checkpoint | None) -> RunIdentity:
        """A new run's identity, or that of the run ``checkpoint`` continues."""
        if checkpoint is None:
            return cls(run_name, run_id, f"{run_name}@{run_id}", [run_id], [], time.time())
        return cls(
            run_name,
            run_id,
            checkpoint.run_key,
            [*checkpoint.flower_run_ids, run_id],
            list(checkpoint.resumed),
            checkpoint.started,
        )

    def checkpoint(
        self,
        completed_round: int,
        arrays: dict[str, np.ndarray],
        rounds: dict[int, RoundRecord],
        settings: RunSettings,
    ) -> Checkpoint:
        return Checkpoint(
            completed_round=completed_round,
            arrays=arrays,
            rounds=rounds,
            run_key=self.run_key,
            settings=resumable_settings(settings),
            flower_run_ids=self.flower_run_ids,
            started=self.started,
            resumed=self.resumed,
        )

    def to_json(self) -> dict[str, Any]:
        """The summary's identity fields (more than one flower-run-id: the run was resumed)."""
        return {
            "run-name": self.run_name,
            "run-id": self.run_id,
            "flower-run-ids": self.flower_run_ids,
            "resumed": self.resumed,
            "run-key": self.run_key,
        }


def save_checkpoint(folder: Path, checkpoint: Checkpoint) -> Path:
    """Write ``folder/checkpoint.npz`` atomically (temporary file + fsync + rename)."""
    state = {
        "completed-round": checkpoint.completed_round,
        "rounds": {str(n): asdict(rec) for n, rec in checkpoint.rounds.items()},
        "run-key": checkpoint.run_key,
        "settings": checkpoint.settings,
        "flower-run-ids": checkpoint.flower_run_ids,
        "started": checkpoint.started,
        "resumed": checkpoint.resumed,
    }
    buffer = io.BytesIO()
    state_bytes = np.frombuffer(json.dumps(state, default=_plain).encode(), dtype=np.uint8)
    np.savez(buffer, **checkpoint.arrays, **{_STATE_KEY: state_bytes})
    target = folder / CHECKPOINT_FILE
    temporary = target.with_name(target.name + ".tmp")
    with temporary.open("wb") as out:
        out.write(buffer.getvalue())
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, target)
    return target


def load_checkpoint(folder: Path) -> Checkpoint | None:
    """The checkpoint in ``folder`` (None if there is none); CheckpointError if damaged."""
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files if k != _STATE_KEY}
            state = json.loads(data[_STATE_KEY].tobytes().decode())
        rounds = {int(n): RoundRecord(**rec) for n, rec in state["rounds"].items()}
        return Checkpoint(
            completed_round=int(state["completed-round"]),
            arrays=arrays,
            rounds=rounds,
            run_key=str(state["run-key"]),
            settings=dict(state["settings"]),
            flower_run_ids=[int(i) for i in state["flower-run-ids"]],
            started=float(state["started"]),
            resumed=list(state.get("resumed", [])),
        )
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"checkpoint {path} is damaged ({err}); cannot resume") from err


def resume_checkpoint(folder: Path, settings: RunSettings) -> Checkpoint | None:
    """The checkpoint a run with ``settings`` resumes from (None if ``folder`` holds none);
    CheckpointError if it is damaged or was written under another configuration."""
    checkpoint = load_checkpoint(folder)
    if checkpoint is not None:
        check_same_run(checkpoint.settings, settings)
    return checkpoint


def resumable_settings(settings: RunSettings) -> dict[str, Any]:
    """The settings a resumed run must share with the run it continues (all but resume)."""
    return {k: v for k, v in asdict(settings).items() if k != "resume"}


def check_same_run(saved: dict[str, Any], settings: RunSettings) -> None:
    """CheckpointError naming every setting that differs from the checkpoint's. A key a
    checkpoint lacks was added to fedpriv after it was written: that run had the key's default
    behaviour, so it counts as the default."""
    now = resumable_settings(settings)
    saved = resumable_settings(RunSettings()) | saved
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise CheckpointError(
            f"resume needs the configuration of the run it continues; changed: {details}"
        )


def check_model(checkpoint: Checkpoint) -> str:
    """The sha256 of the checkpoint's model; CheckpointError unless it is the digest recorded
    for its round (the model the run had after that round)."""
    done = checkpoint.completed_round
    digest = weights_digest(checkpoint.arrays)
    recorded = checkpoint.rounds[done].model_sha256 if done in checkpoint.rounds else ""
    if digest != recorded:
        raise CheckpointError(
            f"the checkpoint's model (sha256 {digest[:12]}) is not the model recorded after "
            f"round {done} ({recorded[:12] or 'none'}); refusing to resume from it"
        )
    return digest


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")
