import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from common.models.pooled import PooledEncoderForSequenceClassification, pool_hidden
from common.models.save import save_model
from common.models.text import TextClassifier, encode_texts, load_text_classifier, resolve_pooling
from common.models.weights import load_trainable_state, trainable_state

TEXTS = ["the movie was great", "awful plot", "good acting, bad story, too slow", "fun"]


def test_mean_pooling_masks_padding_and_normalizes():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(pool_hidden(hidden, mask, "mean", False), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(pool_hidden(hidden, mask, "cls", False), torch.tensor([[1.0, 2.0]]))
    unit = pool_hidden(hidden, mask, "mean", True)
    torch.testing.assert_close(unit, torch.tensor([[2.0, 3.0]]) / np.sqrt(13.0))


def test_padding_does_not_change_a_texts_logits(tiny_bert):
    model, tokenizer = load_text_classifier(
        str(tiny_bert), 2, lora=None, device="cpu", pooling="mean"
    )
    model.eval()
    alone, _ = encode_texts(tokenizer, TEXTS[1:2], [0], 32)
    padded, _ = encode_texts(tokenizer, TEXTS, [0, 1, 0, 1], 32)
    assert padded.tensors[0].shape[1] > alone.tensors[0].shape[1]
    with torch.no_grad():
        torch.testing.assert_close(
            model(*padded.tensors[:-1])[1], model(*alone.tensors[:-1])[0], atol=1e-5, rtol=0
        )


def _sentence_transformers_dir(path, mode: str, normalize: bool):
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    (path / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "pooling_mode_cls_token": mode == "cls",
                "pooling_mode_mean_tokens": mode == "mean",
                "pooling_mode_max_tokens": mode == "max",
            }
        )
    )


@pytest.mark.parametrize(
    ("mode", "normalize", "expected"),
    [("mean", True, ("mean", True)), ("cls", False, ("cls", False))],
)
def test_auto_pooling_is_the_checkpoints_own(tmp_path, mode, normalize, expected):
    assert resolve_pooling(str(tmp_path), "auto") == ("pooler", False)  # plain HF checkpoint
    _sentence_transformers_dir(tmp_path, mode, normalize)
    assert resolve_pooling(str(tmp_path), "auto") == expected
    assert resolve_pooling(str(tmp_path), "cls") == ("cls", False)  # an explicit choice wins


def test_unsupported_checkpoint_pooling_is_refused(tmp_path):
    _sentence_transformers_dir(tmp_path, "max", False)
    with pytest.raises(ValueError, match="neither mean nor CLS"):
        resolve_pooling(str(tmp_path), "auto")
    with pytest.raises(ValueError, match="pooling must be one of"):
        resolve_pooling(str(tmp_path), "max")


def test_saved_pooled_model_reloads_with_from_pretrained(tiny_bert, tmp_path):
    model, tokenizer = load_text_classifier(
        str(tiny_bert), 3, lora=None, device="cpu", pooling="mean", normalize=True, seed=1
    )
    rng = np.random.default_rng(0)
    state = trainable_state(model)
    load_trainable_state(
        model, {k: rng.normal(0, 0.5, v.shape).astype(v.dtype) for k, v in state.items()}
    )
    save_model(model, tmp_path, tokenizer)
    assert (tmp_path / "pooled.py").is_file()  # the class travels with the weights
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert isinstance(reloaded, PooledEncoderForSequenceClassification)
    assert (reloaded.config.pooling, reloaded.config.normalize) == ("mean", True)
    data, _ = encode_texts(AutoTokenizer.from_pretrained(tmp_path), TEXTS, [0, 1, 2, 1], 16)
    with torch.no_grad():
        expected = model.eval()(*data.tensors[:-1])
        assert torch.equal(TextClassifier(reloaded).eval()(*data.tensors[:-1]), expected)
    # without fedpriv: transformers' remote-code path runs the saved pooled.py
    code = (
        "import sys, torch; from transformers import AutoModelForSequenceClassification as A, "
        "AutoTokenizer as T; d = sys.argv[1]; m = A.from_pretrained(d, trust_remote_code=True)"
        "; e = T.from_pretrained(d, trust_remote_code=True)(sys.argv[2:], padding=True, "
        "return_tensors='pt'); print(m.eval()(**e).logits.tolist())"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), *TEXTS],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path.parent,
        check=True,
        timeout=120,
    )
    remote = torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(remote, expected, atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_lora_on_a_mean_pooled_classifier_trains_saves_and_reloads_merged(tiny_bert, tmp_path):
    from client.training import DpSgdSettings, train_locally
    from common.models.text import LoraSettings

    model, tokenizer = load_text_classifier(
        str(tiny_bert), 2, lora=LoraSettings(r=4), device="cpu", pooling="mean"
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("classifier" in n for n in trainable)
    assert not any("embeddings" in n or "pooler" in n for n in trainable)
    data, _ = encode_texts(tokenizer, TEXTS * 3, [0, 1, 0, 1] * 3, 16)
    result = train_locally(
        model,
        data,
        batch_size=6,
        epochs=1,
        learning_rate=0.1,
        dp=DpSgdSettings(0.5, 1.0),
        device="cpu",
        seed=0,
    )
    assert result.num_steps == 2
    save_model(model, tmp_path, tokenizer)
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert isinstance(merged, PooledEncoderForSequenceClassification)
    with torch.no_grad():
        torch.testing.assert_close(
            TextClassifier(merged).eval()(*data.tensors[:-1]),
            model.eval()(*data.tensors[:-1]),
            atol=1e-5,
            rtol=0,
        )
