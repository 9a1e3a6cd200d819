import math

import pytest
import torch
from torch.utils.data import TensorDataset

from common.evaluation import evaluate


def test_uniform_logits_give_log_k_loss_and_argmax_zero():
    model = torch.nn.Linear(3, 4)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    labels = torch.tensor([0, 1, 2, 3, 0, 0, 1])
    result = evaluate(model, TensorDataset(torch.randn(7, 3), labels), batch_size=3, device="cpu")
    assert result.loss == pytest.approx(math.log(4))
    assert result.accuracy == pytest.approx(3 / 7)  # ties -> class 0
    assert result.num_examples == 7


def test_perfect_classifier():
    model = torch.nn.Identity()  # logits are the one-hot features themselves
    labels = torch.tensor([2, 0, 1, 1])
    logits = torch.nn.functional.one_hot(labels, 3).float() * 50
    result = evaluate(model, TensorDataset(logits, labels), device="cpu")
    assert result.accuracy == 1.0 and result.loss < 1e-6


def test_empty_dataset_is_refused():
    with pytest.raises(ValueError, match="empty"):
        evaluate(
            torch.nn.Identity(), TensorDataset(torch.zeros(0, 2), torch.zeros(0)), device="cpu"
        )


def test_token_classifier_scores_each_word_once_and_counts_entities():
    from common.entities import entity_counts

    tags = ["O", "B-person", "I-person"]
    # 2 sentences, T = 5; -100 = not scored (special tokens, later sub-tokens, padding)
    labels = torch.tensor([[-100, 1, -100, 2, -100], [-100, 0, 1, -100, -100]])
    guess = torch.tensor([[0, 1, 0, 0, 2], [0, 0, 1, 1, 0]])  # word tags: [B, O], [O, B]
    logits = torch.nn.functional.one_hot(guess, 3).float() * 50
    result = evaluate(
        torch.nn.Identity(), TensorDataset(logits, labels), device="cpu", tag_names=tags
    )
    assert result.gold_tags == [["B-person", "I-person"], ["O", "B-person"]]
    assert result.predicted_tags == [["B-person", "O"], ["O", "B-person"]]
    assert result.accuracy == pytest.approx(3 / 4)  # per scored word
    assert result.entities == {"person": (1, 1, 1)}
    assert result.entities == entity_counts(result.gold_tags, result.predicted_tags, ["person"])
    with pytest.raises(ValueError, match="tag names"):
        evaluate(torch.nn.Identity(), TensorDataset(logits, labels), device="cpu")
