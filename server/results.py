"""The run's results folder: metrics per round (JSON lines), final model, summary.

Written under ``<results-dir>/<run-name>.partial`` while the run goes (the coordinator can watch
``metrics.jsonl``) and renamed to ``<results-dir>/<run-name>`` only when the run completed, so a
results folder without ``.partial`` is always whole. A failed run removes its partial folder.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
MODEL_DIR = "model"


class RunResults:
    """Writer of one run's results folder."""

    def __init__(self, results_dir: str | Path, run_name: str) -> None:
        self.final_path = Path(results_dir).resolve() / run_name
        self.path = self.final_path.with_name(run_name + ".partial")
        if self.final_path.exists():
            raise FileExistsError(
                f"results folder {self.final_path} already exists; choose another run-name"
            )
        if self.path.exists():
            shutil.rmtree(self.path)  # left by a run that died: never a finished result
        self.path.mkdir(parents=True)
        self.started = time.time()

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    def append_round(self, record: dict[str, Any]) -> None:
        """Add one round's metrics as a JSON line (flushed, so it can be followed live)."""
        with (self.path / METRICS_FILE).open("a") as out:
            out.write(json.dumps(_jsonable(record), sort_keys=True) + "\n")

    def finish(self, summary: dict[str, Any]) -> Path:
        """Write the summary and publish the folder under its final name."""
        summary = {**summary, "wall-seconds": round(time.time() - self.started, 2)}
        (self.path / SUMMARY_FILE).write_text(json.dumps(_jsonable(summary), indent=2) + "\n")
        self.path.rename(self.final_path)
        return self.final_path

    def abort(self) -> None:
        """Remove the partial folder of a run that failed."""
        shutil.rmtree(self.path, ignore_errors=True)


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
