"""HTML of an explanation document: tables of importance and per-record explanations, tokens
highlighted by attribution (red: towards the predicted class, blue: against)."""

from __future__ import annotations

import html
from typing import Any

RECORDS_SHOWN = 4
FEATURES_SHOWN = 5


def _cells(row: list[Any]) -> str:
    return "".join(
        f"<td>{html.escape(f'{c:.4f}' if isinstance(c, float) else str(c))}</td>" for c in row
    )


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return f"<table><tr>{head}</tr>" + "".join(f"<tr>{_cells(r)}</tr>" for r in rows) + "</table>"


def highlighted(tokens: list[str], attributions: list[float], scale: float) -> str:
    """Tokens as spans whose background opacity is |a| / scale (red a > 0, blue a < 0); word
    pieces (##x) are joined to the token before them."""
    parts = []
    for token, a in zip(tokens, attributions, strict=True):
        alpha = min(1.0, abs(a) / scale) if scale > 0 else 0.0
        color = f"rgba(220,40,40,{alpha:.2f})" if a > 0 else f"rgba(40,90,220,{alpha:.2f})"
        piece = token[2:] if token.startswith("##") else token
        space = "" if token.startswith("##") else " "
        parts.append(
            f"{space}<span class='tok' title='{a:+.4f}' style='background:{color}'>"
            f"{html.escape(piece)}</span>"
        )
    return "<span class='text'>" + "".join(parts).lstrip() + "</span>"


def _outcome(record: dict[str, Any]) -> str:
    label = f", label {record['label']}" if "label" in record else ""
    return f"predicted {record['predicted']} ({record['probability']:.2f}){label}"


def _shown(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A few correct and a few wrong records (or the first few without labels)."""
    if not records or "correct" not in records[0]:
        return records[:RECORDS_SHOWN]
    right = [r for r in records if r["correct"]][: RECORDS_SHOWN // 2]
    wrong = [r for r in records if not r["correct"]][: RECORDS_SHOWN // 2]
    return right + wrong


def tabular_html(doc: dict[str, Any]) -> str:
    names = doc["features"]
    ranking = [
        [i + 1, r["feature"], r["mean-abs-shap"]]
        for i, r in enumerate(doc["global-importance"][:15])
    ]
    parts = [
        table(["rank", "feature", "mean |SHAP| (probability)"], ranking),
        "<h4>Per-record explanations</h4>",
    ]
    for r in _shown(doc["records"]):
        top = sorted(range(len(names)), key=lambda j: -abs(r["shap"][j]))[:FEATURES_SHOWN]
        rows = [[names[j], r["values"][j], r["shap"][j]] for j in top]
        parts += [
            f"<p>record {r['index']}: {html.escape(_outcome(r))}; expected value "
            f"{r['expected-value']:.3f} + sum of SHAP values = {r['probability']:.3f}</p>",
            table(["feature", "value (encoded)", "SHAP"], rows),
        ]
    return "".join(parts)


def text_html(doc: dict[str, Any]) -> str:
    parts = []
    for name, rows in doc["top-tokens"].items():
        parts += [
            f"<h4>Tokens with the highest mean attribution towards '{html.escape(name)}'</h4>",
            table(
                ["token", "mean attribution", "occurrences"],
                [[r["token"], r["mean-attribution"], r["count"]] for r in rows],
            ),
        ]
    scale = max((abs(a) for r in doc["records"] for a in r["attributions"]), default=0.0)
    parts.append("<h4>Sampled records (red: towards the predicted class, blue: against)</h4>")
    for r in doc["records"]:
        tag = "" if "correct" not in r else (" correct" if r["correct"] else " WRONG")
        parts.append(
            f"<p><b>{html.escape(_outcome(r) + tag)}</b>, sum of attributions "
            f"{sum(r['attributions']):+.3f} (Captum delta {r['delta']:+.1e})<br>"
            f"{highlighted(r['tokens'], r['attributions'], scale)}</p>"
        )
    return "".join(parts)


def document_html(doc: dict[str, Any]) -> str:
    """The body of one explanation document (no page around it)."""
    summary = (
        f"<p>{html.escape(doc['method'])}; model {html.escape(doc['model']['path'])} "
        f"(sha256 {doc['model']['sha256'][:12]}).</p>"
    )
    return summary + (tabular_html(doc) if doc["kind"] == "tabular" else text_html(doc))


STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
    "margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
    ".tok{padding:1px 2px;border-radius:3px}img{max-width:100%}"
)


def page(title: str, body: str) -> str:
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )
