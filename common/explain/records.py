"""Records a user holds (CSV or JSON Lines), read for explaining a saved model, with specific
errors (unknown column, empty file, feature count the model does not take, unknown labels)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.data.site_file import DataError, load_site_file, read_table
from common.explain.saved_model import SavedModel


@dataclass(frozen=True)
class Records:
    """texts (text models) or features + feature_names (tabular); labels: class indices of the
    model, or None when the file names no label column."""

    texts: list[str] | None
    features: np.ndarray | None
    feature_names: list[str]
    labels: np.ndarray | None


def read_records(
    path: str | Path,
    saved: SavedModel,
    *,
    text_column: str | None = None,
    feature_columns: list[str] | None = None,
    label_column: str | None = None,
    class_names: list[str] | None = None,
) -> Records:
    """The records of ``path`` in the form ``saved`` takes. Tabular: ``feature_columns`` (default:
    every numeric column but the label), exactly as many as the model's features, in its order."""
    path = Path(path)
    if saved.kind == "text" and not text_column:
        raise DataError(f"the model in {saved.path} classifies texts: name the text column")
    if saved.kind == "tabular" and text_column:
        raise DataError(f"the model in {saved.path} is tabular: it takes no text column")
    names = class_names or (None if _unnamed(saved.class_names) else saved.class_names)
    if names is not None and len(names) != len(saved.class_names):
        raise DataError(
            f"{len(names)} class names given, the model has {len(saved.class_names)} classes"
        )
    if label_column:
        indices = [str(i) for i in range(len(saved.class_names))]
        try:
            data = load_site_file(
                path,
                label_column=label_column,
                text_column=text_column,
                feature_columns=feature_columns,
                class_names=names or indices,
            )
        except DataError as err:
            if names is not None or "label column" not in str(err):
                raise
            raise DataError(
                f"{err}. The model does not record its classes' names: give them in the "
                "model's class order (--class-names), or use class indices"
            ) from err
        texts, features, columns, labels = (
            data.texts,
            data.features,
            data.feature_names,
            data.labels,
        )
    else:
        frame = read_table(path)
        texts, features, columns = None, None, []
        if text_column:
            texts = _texts(frame, path, text_column)
        else:
            columns = feature_columns or list(frame.select_dtypes("number").columns)
            features = _features(frame, path, columns)
        labels = None
    if features is not None and features.shape[1] != saved.num_features:
        raise DataError(
            f"the model takes {saved.num_features} features per record; {path} gives "
            f"{features.shape[1]} ({columns}): name the model's feature columns, in its order"
        )
    return Records(texts, features, list(columns), labels)


def _unnamed(names: list[str]) -> bool:
    return all(re.fullmatch(r"class \d+", n) for n in names)


def _require(frame: pd.DataFrame, path: Path, columns: list[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"column(s) {missing} not in {path}; its columns are {list(frame.columns)}")


def _texts(frame: pd.DataFrame, path: Path, column: str) -> list[str]:
    _require(frame, path, [column])
    values = frame[column]
    empty = values.isna() | (values.astype(str).str.strip() == "")
    if empty.any():
        rows = (np.flatnonzero(empty.to_numpy()) + 1).tolist()[:5]
        raise DataError(f"text column {column!r} of {path} is empty in data rows {rows}")
    return values.astype(str).tolist()


def _features(frame: pd.DataFrame, path: Path, columns: list[str]) -> np.ndarray:
    if not columns:
        raise DataError(f"{path} has no numeric columns (columns: {list(frame.columns)})")
    _require(frame, path, columns)
    numeric = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(numeric)
    if bad.any():
        cols = [columns[j] for j in sorted(set(np.nonzero(bad)[1].tolist()))]
        raise DataError(f"feature column(s) {cols} of {path} have non-numeric or missing values")
    return numeric.astype(np.float32)
