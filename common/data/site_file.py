"""A site's own labelled data file (CSV or JSON Lines) read into LabeledData, with specific errors.

The file format follows the suffix: ``.csv`` is CSV with a header row; ``.jsonl`` and ``.json`` are
JSON Lines, one object per record (a ``.json`` file holding one array of objects is accepted too);
``.conll`` is token-tagged text for token classification (NER): ``token<TAB>tag`` lines, a blank
line between sentences (``common.data.conll``), read against the declared tag set.
A text dataset names its ``text_column``; otherwise the data are tabular and ``feature_columns``
(default: every other numeric column) must hold finite numbers. Labels are class names or class
indices; declaring ``class_names`` fixes the classes (and their order) for the whole federation,
so a site that happens to lack a class still agrees with the others on what index 1 means.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

import numpy as np
import pandas as pd

from common.data.conll import TaggedFileError, read_tagged_file
from common.data.types import LabeledData

SUFFIXES = (".csv", ".jsonl", ".json", ".conll")
TAGGED_SUFFIX = ".conll"


class DataError(ValueError):
    """A site data file that cannot be used as is; the message says which file, column and rows."""


def load_site_file(
    path: str | Path,
    *,
    label_column: str,
    text_column: str | None = None,
    feature_columns: list[str] | None = None,
    class_names: list[str] | None = None,
) -> LabeledData:
    """Read ``path`` into LabeledData (text if ``text_column`` is given, else tabular; tokens for
    a ``.conll`` file, whose tags must be among ``class_names``, the run's tag set)."""
    path = Path(path)
    if path.suffix == TAGGED_SUFFIX:
        if not class_names:
            raise DataError(f"{path}: a token-tagged file needs the tag set (class-names)")
        try:
            return read_tagged_file(path, list(class_names))
        except TaggedFileError as error:
            raise DataError(str(error)) from error
    frame = _read(path)
    _require_columns(
        frame,
        path,
        [label_column, *([text_column] if text_column else []), *(feature_columns or [])],
    )
    labels, names = _labels(frame[label_column], path, label_column, class_names)
    if text_column is not None:
        return LabeledData(
            kind="text",
            labels=labels,
            class_names=names,
            texts=_texts(frame[text_column], path, text_column),
            columns=_other_columns(frame, [label_column, text_column]),
        )
    if feature_columns is None:
        feature_columns = [c for c in frame.select_dtypes("number").columns if c != label_column]
        if not feature_columns:
            raise DataError(
                f"{path} has no numeric feature columns besides the label "
                f"{label_column!r} (columns: {list(frame.columns)}); pass "
                "feature_columns or text_column"
            )
    return LabeledData(
        kind="tabular",
        labels=labels,
        class_names=names,
        features=_features(frame, path, feature_columns),
        feature_names=list(feature_columns),
        columns=_other_columns(frame, [label_column, *feature_columns]),
    )


def _other_columns(frame: pd.DataFrame, used: list[str]) -> dict[str, np.ndarray]:
    """Columns that are neither label, text nor feature, as text (e.g. a sensitive attribute
    for group counts); never fed to the model."""
    return {str(c): frame[c].astype(str).to_numpy() for c in frame.columns if c not in used}


def write_site_file(data: LabeledData, path: str | Path) -> None:
    """Write ``data`` as a site file (format by suffix): column "label" holds class names, "text"
    the texts (text data) or one column per feature name (tabular), plus ``data.columns``."""
    path = Path(path)
    if data.kind == "tokens":
        _write_tagged(data, path)
        return
    table: dict[str, object] = {"label": [data.class_names[i] for i in data.labels]}
    if data.kind == "text":
        table["text"] = data.texts
    else:
        table.update({name: data.features[:, j] for j, name in enumerate(data.feature_names)})
    for name, values in data.columns.items():
        if name in table:
            raise DataError(f"column {name!r} of the data clashes with a column of the site file")
        table[name] = values
    frame = pd.DataFrame(table)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix in (".jsonl", ".json"):
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        raise DataError(f"cannot write {path}: use one of the suffixes {', '.join(SUFFIXES)}")


def _write_tagged(data: LabeledData, path: Path) -> None:
    """Token data as CoNLL: ``word<TAB>tag`` lines, a blank line after each sentence."""
    if path.suffix != TAGGED_SUFFIX:
        raise DataError(f"cannot write token-tagged data to {path}: use the suffix {TAGGED_SUFFIX}")
    assert data.tokens is not None and data.tags is not None
    lines = []
    for words, tags in zip(data.tokens, data.tags, strict=True):
        bad = [w for w in words if "\t" in w or "\n" in w or not w.strip()]
        if bad:
            raise DataError(f"cannot write words {bad[:3]} to {path}: empty or with a tab/newline")
        lines += [f"{w}\t{data.class_names[t]}" for w, t in zip(words, tags, strict=True)] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_table(path: str | Path) -> pd.DataFrame:
    """The rows of a CSV or JSON Lines file as they are (no label needed), with the same
    errors as ``load_site_file`` for a missing, unreadable or empty file."""
    return _read(Path(path))


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(
            f"site data file not found: {path}" + (" (it is a directory)" if path.is_dir() else "")
        )
    if path.suffix not in SUFFIXES:
        raise DataError(
            f"unsupported site data file {path}: the suffix must be one of {', '.join(SUFFIXES)}"
        )
    try:
        if path.suffix == ".csv":
            # Only an empty cell is missing: a text or class named "NA" or "null" stays itself.
            frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
        else:
            frame = pd.DataFrame.from_records(_json_records(path))
    except pd.errors.EmptyDataError:
        raise DataError(f"site data file {path} is empty (no header, no rows)") from None
    except (ValueError, UnicodeDecodeError, OSError) as error:  # ParserError is a ValueError
        kind = "CSV" if path.suffix == ".csv" else "JSON Lines"
        raise DataError(f"could not read {path} as {kind}: {error}") from error
    if len(frame) == 0:
        raise DataError(f"site data file {path} has no data rows")
    return frame


def _json_records(path: Path) -> list[dict]:
    """The objects of a JSON Lines file (or of a .json file holding one array of objects)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        records, where = json.loads(text), "the array"
    else:
        records, where = [], "line {}"
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"line {number}: {error}") from error
    for i, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise ValueError(f"{where.format(i)} is not a JSON object: {str(record)[:60]!r}")
    return records


def _require_columns(frame: pd.DataFrame, path: Path, needed: list[str]) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(f"column(s) {missing} not in {path}; its columns are {list(frame.columns)}")


def _rows(mask: pd.Series) -> str:
    """'N row(s) (data rows 2, 5, ...)' for a boolean mask, 1-based, header not counted."""
    rows = (np.flatnonzero(mask.to_numpy()) + 1).tolist()
    shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
    return f"{len(rows)} row(s) (data rows {shown})"


def _labels(
    values: pd.Series, path: Path, column: str, class_names: list[str] | None
) -> tuple[np.ndarray, list[str]]:
    missing = values.isna()
    if missing.any():
        raise DataError(f"label column {column!r} of {path} is empty in {_rows(missing)}")
    raw = values.tolist()
    if class_names is None:
        distinct = set(raw)
        if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in distinct):
            ordered = sorted(distinct)
        else:
            ordered = sorted(distinct, key=str)
        class_names = [_name(v) for v in ordered]
    index = {name: i for i, name in enumerate(class_names)}
    codes, bad = [], set()
    for value in raw:
        code = index.get(_name(value))
        if code is None and _is_int(value) and 0 <= int(value) < len(class_names):
            code = int(value)
        if code is None:
            bad.add(_name(value))
        codes.append(code)
    if bad:
        raise DataError(
            f"label column {column!r} of {path} has values {sorted(bad)[:10]} that are "
            f"neither one of the declared classes {class_names} nor a class index "
            f"0..{len(class_names) - 1}"
        )
    return np.asarray(codes, dtype=np.int64), list(class_names)


def _name(value: object) -> str:
    """A label value as a class name (1.0 → "1": a float-typed integer column reads naturally)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _is_int(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    return isinstance(value, float) and math.isfinite(value) and value.is_integer()


def _texts(values: pd.Series, path: Path, column: str) -> list[str]:
    empty = values.isna() | (values.astype(str).str.strip() == "")
    if empty.any():
        raise DataError(
            f"text column {column!r} of {path} is empty in {_rows(empty)}; remove "
            "those records or fill them"
        )
    return values.astype(str).tolist()


def _features(frame: pd.DataFrame, path: Path, columns: list[str]) -> np.ndarray:
    blocks, problems = [], []
    for col in columns:
        numeric = pd.to_numeric(frame[col], errors="coerce").astype(float)
        bad = ~np.isfinite(numeric)
        if bad.any():
            problems.append(f"{col!r}: {_rows(bad)}")
        blocks.append(numeric.to_numpy())
    if problems:
        raise DataError(
            f"feature columns of {path} have non-numeric, missing or infinite values: "
            + "; ".join(problems)
            + ". Clean or impute them, or leave the column out "
            "of feature_columns"
        )
    return np.column_stack(blocks).astype(np.float32)
