import json

import numpy as np
import pytest

from common.config import ConfigError, RunSettings
from common.data.types import LabeledData
from common.models.tiny import save_tiny_bert
from common.task import build_model, check_model_fits, text_pooling

TEXT = LabeledData(
    kind="text", labels=np.array([0, 1]), class_names=["neg", "pos"], texts=["a", "b"]
)
TOKENS = LabeledData(
    kind="tokens",
    labels=np.array([0]),
    class_names=["O", "B-x"],
    tokens=[["a"]],
    tags=[np.array([0])],
)


@pytest.fixture(scope="module")
def sentence_bert(tmp_path_factory):
    """A tiny BERT with sentence-transformers' files saying mean pooling + Normalize."""
    path = save_tiny_bert(tmp_path_factory.mktemp("st"))
    kinds = ["Transformer", "Pooling", "Normalize"]
    (path / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": i,
                    "path": ["", "1_Pooling", "2_Normalize"][i],
                    "type": f"sentence_transformers.models.{k}",
                }
                for i, k in enumerate(kinds)
            ]
        )
    )
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return path


def _settings(path, **over):
    return RunSettings.from_run_config({"model": "text", "model-name-or-path": str(path)} | over)


def test_auto_pooling_reads_the_checkpoint_and_builds_the_pooled_classifier(sentence_bert):
    settings = _settings(sentence_bert, finetune="head")
    assert text_pooling(settings, TEXT) == ("mean", True)
    model, _ = build_model(settings, TEXT, "cpu")
    assert (model.model.config.pooling, model.model.config.normalize) == ("mean", True)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "model.classifier.weight",
        "model.classifier.bias",
    ]


def test_explicit_and_legacy_pooling_choices(sentence_bert):
    assert text_pooling(_settings(sentence_bert, pooling="cls", normalize=True), TEXT) == (
        "cls",
        True,
    )
    # an old config's identity pooler keeps the pooler path
    assert text_pooling(_settings(sentence_bert, **{"pooler-init": "identity"}), TEXT) == (
        "pooler",
        False,
    )
    with pytest.raises(ConfigError, match="needs pooling='pooler'"):
        text_pooling(_settings(sentence_bert, pooling="mean", **{"pooler-init": "identity"}), TEXT)
    assert text_pooling(_settings(sentence_bert), TOKENS) == ("pooler", False)  # unused


def test_pooling_settings_are_refused_for_a_token_classifier(sentence_bert):
    with pytest.raises(ConfigError, match="sequence classification only"):
        check_model_fits(_settings(sentence_bert, pooling="mean"), TOKENS)
