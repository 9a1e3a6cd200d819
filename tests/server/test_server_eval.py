"""server/server_eval.py: the server's own evaluation of the global model on the test split."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from common.config import RunSettings
from common.data.registry import load_dataset
from common.models.weights import trainable_state
from common.task import build_model
from server.server_eval import ServerEvaluation


@pytest.fixture(scope="module")
def heart():
    settings = RunSettings()  # heart disease, the MLP
    _, test = load_dataset(settings.dataset, settings.seed)
    model, tokenizer = build_model(settings, test, "cpu")
    return settings, test, model, tokenizer


def test_the_scores_are_those_of_the_state_it_is_given(heart):
    settings, test, model, tokenizer = heart
    held_out = ServerEvaluation(settings, model, tokenizer, test, torch.device("cpu"))
    assert len(held_out.tensors) == len(test) and held_out.entity_report() is None
    start = trainable_state(model)
    scores = held_out.scores(start)
    assert set(scores) == {"loss", "accuracy"}
    inputs, labels = held_out.tensors.tensors
    with torch.no_grad():
        expected = (model(inputs).argmax(-1) == labels).float().mean().item()
    assert scores["accuracy"] == pytest.approx(expected)
    # all weights 0: every logit equal, the loss is log(number of classes)
    zero = {k: np.zeros_like(v) for k, v in start.items()}
    assert held_out.scores(zero)["loss"] == pytest.approx(np.log(len(test.class_names)))
    held_out.scores(start)  # the model is left with the state it was last given
    assert all(np.array_equal(v, start[k]) for k, v in trainable_state(model).items())


def test_a_capped_test_split_is_the_same_seeded_subset_every_time(heart):
    settings, test, model, tokenizer = heart
    capped = replace(settings, server_eval_max_records=50)
    first = ServerEvaluation(capped, model, tokenizer, test, torch.device("cpu"))
    again = ServerEvaluation(capped, model, tokenizer, test, torch.device("cpu"))
    assert len(first.tensors) == 50
    assert torch.equal(first.tensors.tensors[0], again.tensors.tensors[0])
    other_seed = ServerEvaluation(
        replace(capped, seed=1), model, tokenizer, test, torch.device("cpu")
    )
    assert not torch.equal(first.tensors.tensors[0], other_seed.tensors.tensors[0])
