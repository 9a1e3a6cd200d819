"""``fedpriv-explain``: why the final model predicts what it does on records a site holds.

    fedpriv-explain --model results/<run>/model --data patients.csv --label-column label
    fedpriv-explain --model results/<run>/model --data reviews.jsonl --text-column text \\
        --out reviews-explained.json

Runs entirely on this machine and sends nothing: the records, the predictions and their
explanations stay here (a site explaining its own records releases nothing). Tabular models:
SHAP values of the class probabilities (the file's own records are the background); text models:
integrated-gradients token attributions for a sample of correct and wrong predictions. Output:
HTML (``--out FILE.html``, the default ``explanations.html``) or JSON (``--out FILE.json``).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.data.site_file import DataError
from common.explain.saved_model import NotAModelFolder, load_saved_model

OUT_SUFFIXES = (".html", ".json")


class _Bars:
    """One tqdm progress bar per stage of the work, on stderr."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bars: dict[str, Any] = {}

    def __call__(self, what: str, done: int, total: int) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        bar = self.bars.get(what)
        if bar is None:
            bar = self.bars[what] = tqdm(total=total, desc=what, file=sys.stderr, unit="rec")
        bar.update(done - bar.n)
        if done >= total:
            bar.close()


def explain_file(args: argparse.Namespace) -> dict[str, Any]:
    """The explanation document of ``args.model`` on ``args.data``."""
    from common.explain.explain import explain_tabular, explain_text
    from common.explain.records import read_records

    saved = load_saved_model(args.model)
    if args.class_names:
        saved.class_names = _class_names(args.class_names, len(saved.class_names))
    records = read_records(
        args.data,
        saved,
        text_column=args.text_column,
        feature_columns=args.feature_columns.split(",") if args.feature_columns else None,
        label_column=args.label_column,
        class_names=saved.class_names if args.class_names else None,
    )
    progress = _Bars(args.quiet)
    if saved.kind == "tabular":
        assert records.features is not None
        doc = explain_tabular(
            saved,
            records.features,
            records.feature_names,
            records.labels,
            max_records=args.max_records or 200,
            seed=args.seed,
            progress=progress,
        )
    else:
        assert records.texts is not None
        doc = explain_text(
            saved,
            records.texts,
            records.labels,
            max_length=args.max_length,
            max_predicted=args.max_records or 512,
            per_group=args.per_group,
            seed=args.seed,
            progress=progress,
        )
    return doc | {"records-source": str(args.data)}


def _class_names(text: str, expected: int) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    if len(names) != expected or not all(names):
        raise DataError(f"--class-names gives {len(names)} names, the model has {expected}")
    return names


def write_output(doc: dict[str, Any], out: Path) -> None:
    """``doc`` as JSON, or as a self-contained HTML page with its figure embedded."""
    if out.suffix == ".json":
        out.write_text(json.dumps(doc, indent=1))
        return
    import matplotlib.pyplot as plt

    from common.explain.figures import explanation_figures
    from common.explain.render import document_html, page

    body = []
    for name, fig in explanation_figures({"this model": doc}).items():
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        body.append(f"<img alt='{name}' src='data:image/png;base64,{data}'>")
    title = f"fedpriv explanations: {doc['records-source']}"
    note = "<p>Computed on this machine from the records of the file above; nothing was sent.</p>"
    out.write_text(page(title, note + "".join(body) + document_html(doc)), encoding="utf-8")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedpriv-explain",
        description="Explain a fedpriv model's predictions on your own records (locally).",
    )
    parser.add_argument("--model", type=Path, required=True, help="results/<run>/model")
    parser.add_argument("--data", type=Path, required=True, help="a CSV or JSON Lines file")
    parser.add_argument("--text-column", help="the column holding the text (text models)")
    parser.add_argument(
        "--feature-columns",
        help="comma-separated feature columns, in the model's order "
        "(tabular; default: every numeric column but the label)",
    )
    parser.add_argument("--label-column", help="true labels, to sort correct from wrong")
    parser.add_argument("--class-names", help="comma-separated class names, in the model's order")
    parser.add_argument(
        "--out", type=Path, default=Path("explanations.html"), help="FILE.html or FILE.json"
    )
    parser.add_argument(
        "--max-records",
        type=int,
        default=0,
        help="records explained (tabular, default 200) or predicted (text, default 512)",
    )
    parser.add_argument(
        "--per-group",
        type=int,
        default=12,
        help="text: correct and wrong predictions attributed (each)",
    )
    parser.add_argument("--max-length", type=int, default=64, help="text: tokens per record")
    parser.add_argument("--seed", type=int, default=0, help="seed of the record samples")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.out.suffix not in OUT_SUFFIXES:
            raise DataError(f"--out {args.out}: the file must end in .html or .json")
        if args.max_records < 0 or args.per_group < 1 or args.max_length < 8:
            raise DataError("--max-records must be >= 0, --per-group >= 1, --max-length >= 8")
        doc = explain_file(args)
        write_output(doc, args.out)
    except (DataError, NotAModelFolder, ValueError, OSError) as err:
        print(f"fedpriv-explain: error: {err}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
