import math

import pytest
import torch
from torch.utils.data import TensorDataset

from client.evaluation import evaluate


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
