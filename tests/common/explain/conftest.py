"""A tiny BERT trained for a few seconds to call a text positive exactly when it holds "great",
saved like a run's full fine-tuning model folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from common.models.tiny import save_tiny_bert

KEY = "great"
FILLER = "the a film movie story acting plot is was and it this very really too slow fast".split()


def keyed_texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Texts of 4-8 filler words; label 1 (and the word KEY at a random place) for half."""
    rng = np.random.default_rng(seed)
    texts, labels = [], rng.integers(0, 2, n)
    for label in labels:
        words = list(rng.choice(FILLER, rng.integers(4, 9)))
        if label:
            words.insert(int(rng.integers(0, len(words) + 1)), KEY)
        texts.append(" ".join(words))
    return texts, labels


@pytest.fixture(scope="session")
def keyed_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("keyed")
    save_tiny_bert(root / "base", hidden=32, layers=2, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(root / "base")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(root / "base", num_labels=2)
    texts, labels = keyed_texts(512, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(120):
        batch = slice((step * 32) % 512, (step * 32) % 512 + 32)
        enc = tokenizer(texts[batch], padding=True, return_tensors="pt")
        loss = model(**enc, labels=torch.as_tensor(labels[batch])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root / "model"
