"""common/explain/text.py: integrated gradients on a tiny BERT trained to key on one token."""

from __future__ import annotations

import numpy as np
import torch

from common.explain.saved_model import load_saved_model
from common.explain.text import (
    baseline_ids,
    margins,
    predict,
    token_attributions,
    token_importance,
    token_table,
)
from tests.common.explain.conftest import KEY, keyed_texts


def test_margins_are_the_log_odds_of_each_class():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5]])
    assert torch.allclose(margins(logits), torch.tensor([[3.0, -3.0], [0.0, 0.0]]))
    three = torch.tensor([[1.0, 2.0, 3.0]])
    p = torch.softmax(three, -1)
    assert torch.allclose(margins(three), torch.log(p / (1 - p)))


def test_the_trained_model_keys_on_the_token_and_attributes_most_to_it(keyed_model_dir):
    saved = load_saved_model(keyed_model_dir)
    texts, labels = keyed_texts(40, seed=7)
    predicted = predict(saved.model, saved.tokenizer, texts, 64).argmax(axis=1)
    assert np.mean(predicted == labels) >= 0.95
    positive = [t for t, p in zip(texts, predicted, strict=True) if p == 1 and KEY in t]
    explained = token_attributions(saved.model, saved.tokenizer, positive, [1] * len(positive))
    top = [e.tokens[int(np.argmax(e.attributions))] for e in explained]
    assert top.count(KEY) == len(top), top
    table = token_table(explained, saved.tokenizer.all_special_tokens)
    assert table[1][0][0] == KEY and table[1][0][2] == len(positive)
    importance = token_importance(explained, saved.tokenizer.all_special_tokens)
    assert max(importance, key=importance.get) == KEY


def test_completeness_attributions_sum_to_the_output_difference(keyed_model_dir):
    saved = load_saved_model(keyed_model_dir)
    texts, _ = keyed_texts(6, seed=3)
    targets = [0, 1, 0, 1, 1, 0]
    done = []
    explained = token_attributions(
        saved.model, saved.tokenizer, texts, targets, progress=lambda d, n: done.append((d, n))
    )
    assert done == [(4, 6), (6, 6)]
    for text, target, e in zip(texts, targets, explained, strict=True):
        enc = saved.tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            f_x = margins(saved.model(**enc).logits)[0, target]
            base = baseline_ids(enc["input_ids"], saved.tokenizer)
            f_b = margins(saved.model(**(enc | {"input_ids": base})).logits)[0, target]
        difference = float(f_x - f_b)
        assert abs(e.output_difference - difference) < 1e-5
        assert abs(sum(e.attributions) - difference) < 0.02 * abs(difference) + 1e-4
        assert abs(sum(e.attributions) - difference - e.delta) < 1e-4  # Captum's delta
        assert len(e.tokens) == len(enc["input_ids"][0]) and e.tokens[0] == "[CLS]"
        assert e.attributions[0] == 0.0  # [CLS] is kept in the baseline: nothing moved
    keyed = [e for e in explained if KEY in e.tokens]
    assert keyed and all(abs(e.output_difference) > 1.0 for e in keyed)
    # this model switches sharply along the path: 50 steps were not enough for those texts
    assert max(e.steps for e in keyed) > 50


def test_steps_are_doubled_only_up_to_the_limit(keyed_model_dir):
    saved = load_saved_model(keyed_model_dir)
    text = [t for t in keyed_texts(20, seed=3)[0] if KEY in t][:1]
    (coarse,) = token_attributions(saved.model, saved.tokenizer, text, [0], tolerance=-1.0)
    assert coarse.steps == 800  # a negative tolerance is never met: it stops at MAX_STEPS
    (fixed,) = token_attributions(saved.model, saved.tokenizer, text, [0], tolerance=1e9)
    assert fixed.steps == 50 and abs(fixed.delta) > abs(coarse.delta)


def test_baseline_keeps_special_tokens_and_pads_the_rest(keyed_model_dir):
    tokenizer = load_saved_model(keyed_model_dir).tokenizer
    enc = tokenizer(["the film", "a"], padding=True, return_tensors="pt")
    base = baseline_ids(enc["input_ids"], tokenizer)
    pad, cls, sep = tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id
    assert base.tolist() == [[cls, pad, pad, sep], [cls, pad, sep, pad]]
