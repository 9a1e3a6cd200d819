"""What the site service did, for ``fedpriv-site status``: who connected (peer uid/pid on the
Unix socket) and the last requests (kind, run id, round, status, reason, seconds).

Kept in memory (the last ``keep`` of each) and appended to ``<state-dir>/activity.jsonl``, from
which a restarted service (or ``fedpriv-site status --state-dir`` while none runs) reads it back.
Records only metadata of requests, never their content.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACTIVITY_FILE = "activity.jsonl"
MAX_REASON = 300  # characters of a refusal's reason kept per entry


@dataclass
class ActivityLog:
    """connections / requests: newest last; ``path``: the on-disk log (None = memory only)."""

    path: Path | None = None
    keep: int = 50
    connections: deque[dict[str, Any]] = field(init=False)
    requests: deque[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.connections = deque(maxlen=self.keep)
        self.requests = deque(maxlen=self.keep)
        self._lock = threading.Lock()
        if self.path is not None and self.path.is_file():
            for entry in read_entries(self.path, self.keep * 4):
                self._remember(entry)

    def connection(self, peer: dict[str, Any]) -> None:
        self._add({"event": "connection", **peer})

    def request(self, **fields: Any) -> None:
        self._add({"event": "request", **fields})

    def _add(self, entry: dict[str, Any]) -> None:
        entry = {"time": time.time(), **entry}
        if isinstance(entry.get("reason"), str):
            entry["reason"] = entry["reason"][:MAX_REASON]
        with self._lock:
            self._remember(entry)
            if self.path is not None:
                with self.path.open("a", encoding="utf-8") as file:
                    file.write(json.dumps(entry) + "\n")

    def _remember(self, entry: dict[str, Any]) -> None:
        if entry.get("event") == "connection":
            self.connections.append(entry)
        elif entry.get("event") == "request":
            self.requests.append(entry)

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            return {"connections": list(self.connections), "requests": list(self.requests)}


def read_entries(path: Path, last: int) -> list[dict[str, Any]]:
    """The last ``last`` well-formed entries of an activity file (a torn last line is skipped)."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[-last:]
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries
