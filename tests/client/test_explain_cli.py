"""client/explain_cli.py: fedpriv-explain end to end on tiny saved models, and its errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from client.explain_cli import main
from common.data.registry import load_dataset
from common.data.site_file import write_site_file
from common.models.save import save_model
from common.models.tabular import TabularClassifier
from common.models.tiny import save_tiny_bert


@pytest.fixture
def one_feature_model(tmp_path: Path) -> Path:
    """A logistic regression that reads only its second feature, saved like a run's model."""
    model = TabularClassifier("logreg", 3, 2)
    with torch.no_grad():
        model.net[0].weight.copy_(torch.tensor([[0.0, -1.5, 0.0], [0.0, 1.5, 0.0]]))
        model.net[0].bias.zero_()
    save_model(model, tmp_path / "run" / "model")
    return tmp_path / "run" / "model"


def _table(path: Path, n: int = 30) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3))
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]})
    frame["label"] = (x[:, 1] > 0).astype(int)
    frame["site"] = "here"  # not numeric: never a feature
    frame.to_csv(path, index=False)
    return path


def test_tabular_html_ranks_the_feature_the_model_reads_first(tmp_path, one_feature_model, capsys):
    data = _table(tmp_path / "records.csv")
    out = tmp_path / "explained.html"
    code = main(
        ["--model", str(one_feature_model), "--data", str(data), "--label-column", "label"]
        + ["--out", str(out)]
    )
    assert code == 0 and capsys.readouterr().out.strip() == str(out)
    page = out.read_text()
    ranking = re.findall(r"<tr><td>(\d+)</td><td>([^<]+)</td><td>([0-9.]+)</td>", page)
    assert [(rank, name) for rank, name, _ in ranking] == [("1", "b"), ("2", "a"), ("3", "c")]
    assert float(ranking[0][2]) > 0.1 and ranking[1][2] == ranking[2][2] == "0.0000"
    assert "<img alt='explanations' src='data:image/png;base64," in page
    assert "nothing was sent" in page


def test_tabular_json_of_a_site_file_with_class_names(tmp_path):
    pool, test = load_dataset("heart-disease", 0)
    torch.manual_seed(0)
    model = TabularClassifier("mlp", pool.features.shape[1], 2)
    save_model(model, tmp_path / "model")
    data = tmp_path / "patients.jsonl"
    write_site_file(test.subset(np.arange(25)), data)  # label holds class names
    out = tmp_path / "explained.json"
    args = ["--model", str(tmp_path / "model"), "--data", str(data), "--out", str(out)]
    names = ["--class-names", "no disease,disease", "--label-column", "label", "--quiet"]
    assert main(args + names) == 0
    doc = json.loads(out.read_text())
    assert doc["records-explained"] == 25 and doc["features"] == test.feature_names
    assert doc["class-names"] == ["no disease", "disease"]
    assert doc["additivity-max-error"] < 1e-6
    labels = [r["label"] for r in sorted(doc["records"], key=lambda r: r["index"])]
    assert labels == [test.class_names[i] for i in test.labels[:25]]
    # without the class names, labels that are names cannot be matched to the model's classes
    assert main(args + ["--label-column", "label", "--quiet"]) == 2


def test_text_jsonl_to_html_with_highlighted_tokens(tmp_path):
    base = save_tiny_bert(tmp_path / "tiny")
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    model.save_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path / "model")
    data = tmp_path / "reviews.jsonl"
    texts = ["a great film", "boring and slow", "i love this movie", "the worst plot"]
    data.write_text("".join(json.dumps({"review": t}) + "\n" for t in texts))
    out = tmp_path / "explained.html"
    args = ["--model", str(tmp_path / "model"), "--data", str(data), "--out", str(out)]
    assert main(args + ["--text-column", "review", "--per-group", "2", "--quiet"]) == 0
    page = out.read_text()
    assert len(re.findall(r"<span class='tok'", page)) == sum(len(t.split()) + 2 for t in texts)
    assert main(args + ["--text-column", "body"]) == 2  # unknown column
    assert main(args) == 2  # a text model needs the text column


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown column", "column(s) ['weight'] not in"),
        ("empty file", "is empty"),
        ("no rows", "has no data rows"),
        ("not a model", "is not a fedpriv model folder"),
        ("no folder", "does not exist"),
        ("wrong feature count", "the model takes 3 features per record"),
        ("bad suffix", "must end in .html or .json"),
        ("text column on tabular", "is tabular: it takes no text column"),
    ],
)
def test_bad_input_gets_a_clear_error(tmp_path, one_feature_model, capsys, case, message):
    data = _table(tmp_path / "records.csv")
    model, out = one_feature_model, tmp_path / "out.json"
    extra: list[str] = []
    if case == "unknown column":
        extra = ["--feature-columns", "a,weight,c"]
    elif case == "empty file":
        data.write_text("")
    elif case == "no rows":
        data.write_text("a,b,c\n")
    elif case == "not a model":
        model = tmp_path
    elif case == "no folder":
        model = tmp_path / "nowhere"
    elif case == "wrong feature count":
        extra = ["--feature-columns", "a,b"]
    elif case == "bad suffix":
        out = tmp_path / "out.txt"
    elif case == "text column on tabular":
        extra = ["--text-column", "a"]
    code = main(["--model", str(model), "--data", str(data), "--out", str(out), *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("fedpriv-explain: error: ") and message in err, err
    assert not out.exists()
