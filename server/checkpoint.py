"""The server's checkpoint after each round: global model, round number, per-round records.

Our own code: Flower's ServerApp keeps its state in memory only. One file, written to a
temporary name and renamed over the old one (atomic on POSIX), so a ServerApp killed at any
moment leaves either the previous checkpoint or the new one, never a torn file. Sites' ledgers
stay the only record of their epsilon; the checkpoint holds what the sites reported.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from server.results import CHECKPOINT_FILE
from server.strategy import RoundRecord

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


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")
