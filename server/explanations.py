"""The coordinator's explanations of a run's final model, for its report.

Computed on the coordinator's own held-out records only (the server-eval split: the dataset's
held-out test set, capped at ``server-eval-max-records`` exactly as the run's server-side
evaluation does), from the saved ``model/`` folder (``common.explain.saved_model``): no site data
is involved, and what is explained is the model that ships. Written to ``explanations.json`` in
the results folder and reused while the saved model's sha256 matches.
"""

from __future__ import annotations

import html
import json
import time
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common.logger import log

from common.data.registry import load_dataset
from common.data.types import LabeledData
from common.explain.compare import rank_agreement
from common.explain.explain import explain_tabular, explain_text
from common.explain.render import document_html
from common.explain.saved_model import load_saved_model
from server.results import MODEL_DIR, SUMMARY_FILE

EXPLANATIONS_FILE = "explanations.json"
COMPARISON_FILE = "explanations-vs-baseline.json"


def server_records(config: dict[str, Any]) -> LabeledData:
    """The records the run's server-side evaluation used (see server/run.py)."""
    seed = int(config.get("seed", 0))
    _, test = load_dataset(config["dataset"], seed)
    cap = int(config.get("server_eval_max_records") or 0)
    if cap and len(test) > cap:
        keep = np.random.default_rng(seed).permutation(len(test))
        test = test.subset(np.sort(keep[:cap]))
    return test


_LOGGED: dict[str, float] = {}  # what -> when its progress was last logged


def _progress(what: str, done: int, total: int) -> None:
    """Log long work at most every 10 s (and at its end)."""
    now = time.time()
    if done == total or now - _LOGGED.get(what, 0.0) >= 10:
        _LOGGED[what] = now
        log(INFO, "explanations: %s %d/%d", what, done, total)


def explain_run(folder: Path) -> dict[str, Any]:
    """Explain the final model of results folder ``folder`` on the server's held-out records;
    a document with "skipped" (and why) when there is nothing the coordinator may explain."""
    folder = Path(folder)
    config = json.loads((folder / SUMMARY_FILE).read_text()).get("config", {})
    if not config.get("server_eval", True):
        return {"skipped": "server-eval is off: the coordinator holds no records of its own"}
    records = server_records(config)
    if records.kind == "tokens":
        return {"skipped": "token classification (NER) models are not explained yet"}
    saved = load_saved_model(folder / MODEL_DIR)
    seed = int(config.get("seed", 0))
    names = records.class_names
    if len(names) == len(saved.class_names):
        saved.class_names = list(names)
    if saved.kind == "tabular":
        assert records.features is not None
        doc = explain_tabular(
            saved,
            records.features,
            records.feature_names,
            records.labels,
            seed=seed,
            progress=_progress,
        )
    else:
        assert records.texts is not None
        doc = explain_text(
            saved,
            records.texts,
            records.labels,
            max_length=int(config.get("max_length", 64)),
            seed=seed,
            progress=_progress,
        )
    return doc | {"records-source": f"server-eval split of {config['dataset']}"}


def load_or_explain(folder: Path, *, write: bool = True) -> dict[str, Any]:
    """``folder``/explanations.json when it explains the saved model as it is now; else computed
    again (and written when ``write``)."""
    folder = Path(folder)
    path = folder / EXPLANATIONS_FILE
    if path.is_file():
        doc = json.loads(path.read_text())
        if "skipped" in doc or _current(folder, doc):
            return doc
    doc = explain_run(folder)
    if write:
        path.write_text(json.dumps(doc, indent=1))
    return doc


def _current(folder: Path, doc: dict[str, Any]) -> bool:
    try:
        return load_saved_model(folder / MODEL_DIR).sha256 == doc["model"]["sha256"]
    except (ValueError, OSError, KeyError):
        return False


def for_report(folder: Path, baseline: Path | None, labels: list[str]) -> dict[str, dict[str, Any]]:
    """Each compared run's explanation document, by run label (``labels``: this run's, then the
    baseline's); the baseline's is read from its folder or computed without writing there. The
    agreement of two documents is written to ``folder``/explanations-vs-baseline.json. A failure
    becomes a "skipped" document shown in the report, never an error."""
    docs: dict[str, dict[str, Any]] = {}
    for label, where, write in zip(labels, (folder, baseline), (True, False), strict=False):
        if not (Path(where) / MODEL_DIR).is_dir():
            docs[label] = {"skipped": f"no saved model in {where}"}
            continue
        try:
            docs[label] = load_or_explain(Path(where), write=write)
        except Exception as err:  # the rest of the report stands without it
            log(WARNING, "explanations of %s failed: %r", where, err)
            docs[label] = {"skipped": f"explanation failed: {err!r}"}
    found = agreement(docs)
    comparison = folder / COMPARISON_FILE
    if found is not None:
        comparison.write_text(json.dumps({"runs": list(docs), **found}, indent=1))
    else:
        comparison.unlink(missing_ok=True)
    return docs


def html_section(docs: dict[str, dict[str, Any]], figure: str) -> str:
    """The report's explanation section: the figure (an <img>), the DP vs baseline agreement,
    each run's document."""
    if not docs:
        return ""
    parts = ["<h2>Explanations: why the final model decides</h2>"]
    shown = {label: doc for label, doc in docs.items() if "skipped" not in doc}
    for label, doc in docs.items():
        if "skipped" in doc:
            parts.append(f"<p>{_escape(label)}: not explained ({_escape(doc['skipped'])}).</p>")
    if not shown:
        return "".join(parts)
    first = next(iter(shown.values()))
    parts.append(
        f"<p>Computed at the coordinator on its own held-out records "
        f"({_escape(first.get('records-source', ''))}) with the saved final model; no site "
        "data are involved.</p>" + figure
    )
    if len(shown) == 2:
        (a, da), (b, db) = shown.items()
        agreement = rank_agreement(da, db)
        items = "features" if da["kind"] == "tabular" else "tokens seen by both"
        parts.append(
            f"<p><b>{_escape(a)} vs {_escape(b)}</b>: rank correlation of importance over "
            f"{agreement['items-compared']} {items}: Spearman rho "
            f"{_num(agreement['spearman'])}, Kendall tau {_num(agreement['kendall'])}; top "
            f"{len(agreement['top'][0])} shared: "
            f"{_escape(', '.join(agreement['top-shared']) or 'none')}.</p>"
        )
    for label, doc in shown.items():
        parts += [f"<h3>{_escape(label)}</h3>", document_html(doc)]
    return "".join(parts)


def agreement(docs: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Rank agreement of the two runs' explanations (None unless exactly two were explained)."""
    shown = [doc for doc in docs.values() if "skipped" not in doc]
    return rank_agreement(*shown) if len(shown) == 2 else None


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _escape(text: object) -> str:
    return html.escape(str(text))
