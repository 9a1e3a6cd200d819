import pytest
import torch

from common.models.losses import TokenCrossEntropy


def test_token_loss_of_an_example_is_its_own_mean_over_scored_tokens():
    logits = torch.randn(3, 5, 4)
    labels = torch.tensor([[-100, 1, 2, -100, -100], [-100, 0, -100, -100, -100], [3] * 5])
    per_example = TokenCrossEntropy(reduction="none")(logits, labels)
    for b in range(3):
        scored = labels[b] != -100
        alone = torch.nn.functional.cross_entropy(logits[b][scored], labels[b][scored])
        torch.testing.assert_close(per_example[b], alone)
    mean = TokenCrossEntropy()(logits, labels)
    torch.testing.assert_close(mean, per_example.mean())


def test_weighted_token_loss_is_each_sentences_own_weighted_mean():
    logits = torch.randn(3, 5, 4)
    labels = torch.tensor([[-100, 1, 0, 0, -100], [-100, 0, -100, -100, -100], [3, 0, 0, 2, 0]])
    weight = torch.tensor([0.1, 1.0, 1.0, 1.0])  # O (tag 0) weighs 0.1
    loss = TokenCrossEntropy(reduction="none", weight=weight)
    per_example = loss(logits, labels)
    for b in range(3):
        scored = labels[b] != -100
        ce = torch.nn.functional.cross_entropy(
            logits[b][scored], labels[b][scored], reduction="none"
        )
        w = weight[labels[b][scored]]
        torch.testing.assert_close(per_example[b], (w * ce).sum() / w.sum())
    changed_logits, changed_labels = logits.clone(), labels.clone()
    changed_logits[1] += torch.randn(5, 4)  # another sentence: its words and tags
    changed_labels[1, 1] = 2
    after = loss(changed_logits, changed_labels)
    assert after[1] != per_example[1]
    assert torch.equal(after[[0, 2]], per_example[[0, 2]])  # the others' losses do not move
    with pytest.raises(ValueError, match="positive"):
        TokenCrossEntropy(weight=torch.tensor([0.0, 1.0]))


def test_sum_and_unknown_reductions():
    logits = torch.randn(2, 3, 4)
    labels = torch.tensor([[0, 1, -100], [2, -100, -100]])
    per_example = TokenCrossEntropy(reduction="none")(logits, labels)
    torch.testing.assert_close(
        TokenCrossEntropy(reduction="sum")(logits, labels), per_example.sum()
    )
    with pytest.raises(ValueError, match="reduction must be"):
        TokenCrossEntropy(reduction="max")(logits, labels)
