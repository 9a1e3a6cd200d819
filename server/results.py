"""The run's results folder: metrics per round (JSON lines), final model, summary.

Written under ``<results-dir>/<run-name>.partial`` while the run goes (the coordinator can watch
``metrics.jsonl``) and renamed to ``<results-dir>/<run-name>`` only when the run completed, so a
results folder without ``.partial`` is always whole. A failed run removes its partial folder
unless it holds a checkpoint (then the run can be resumed from it).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

CHECKPOINT_FILE = "checkpoint.npz"  # server/checkpoint.py writes it
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
MODEL_DIR = "model"


class RunResults:
    """Writer of one run's results folder. resume: continue the partial folder of a run that
    died (it must hold a checkpoint)."""

    def __init__(self, results_dir: str | Path, run_name: str, *, resume: bool = False) -> None:
        self.final_path = Path(results_dir).resolve() / run_name
        self.path = self.final_path.with_name(run_name + ".partial")
        if self.final_path.exists():
            raise FileExistsError(
                f"results folder {self.final_path} already exists; choose another run-name"
            )
        resumable = (self.path / CHECKPOINT_FILE).is_file()
        if resume and not resumable:
            raise FileNotFoundError(
                f"nothing to resume: {self.path} holds no checkpoint of run {run_name!r}"
            )
        if not resume and resumable:
            raise FileExistsError(
                f"{self.path} holds a checkpoint of an unfinished run {run_name!r}: resume it "
                "(resume=true) or remove that folder"
            )
        if not resume and self.path.exists():
            shutil.rmtree(self.path)  # left by a run that died before its first checkpoint
        self.path.mkdir(parents=True, exist_ok=True)
        self.started = time.time()

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    def write_rounds(self, records: list[dict[str, Any]]) -> None:
        """(Re)write the metrics file, one JSON line per round so far, atomically: a reader
        following it live never sees a torn line, and a resumed run rewrites it whole."""
        text = "".join(json.dumps(_jsonable(r), sort_keys=True) + "\n" for r in records)
        temporary = self.path / (METRICS_FILE + ".tmp")
        temporary.write_text(text)
        os.replace(temporary, self.path / METRICS_FILE)

    def finish(self, summary: dict[str, Any]) -> Path:
        """Write the summary and publish the folder under its final name."""
        summary = {**summary, "wall-seconds": round(time.time() - self.started, 2)}
        (self.path / CHECKPOINT_FILE).unlink(missing_ok=True)  # the model is in model/
        (self.path / SUMMARY_FILE).write_text(json.dumps(_jsonable(summary), indent=2) + "\n")
        self.path.rename(self.final_path)
        return self.final_path

    def abort(self) -> bool:
        """A run failed: remove its partial folder unless it can be resumed (a checkpoint).
        Returns whether the folder was kept."""
        if (self.path / CHECKPOINT_FILE).is_file():
            return True
        shutil.rmtree(self.path, ignore_errors=True)
        return False


def _jsonable(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
