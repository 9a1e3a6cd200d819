from pathlib import Path

import pytest
import transformers

from common.models.tiny import save_tiny_bert

transformers.logging.set_verbosity_error()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny random BERT checkpoint + tokenizer on disk, loaded through from_pretrained."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
