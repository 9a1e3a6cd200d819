"""common/models/tokens.py (tags aligned to sub-tokens) and the token classifier of text.py."""

import numpy as np
import pytest

from common.data.conll import bio_tags
from common.models.text import LoraSettings, load_text_classifier
from common.models.tokens import align_tags, encode_tagged_words
from common.models.weights import trainable_state

TAGS = bio_tags(["person", "geo-loc"])


def test_align_tags_labels_only_the_first_sub_token_of_each_word():
    # [CLS] w0 w1 w1 w1 w2 [SEP] [PAD]
    word_ids = [None, 0, 1, 1, 1, 2, None, None]
    assert align_tags(word_ids, [0, 3, 0]) == [-100, 0, 3, -100, -100, 0, -100, -100]


def test_encoding_aligns_tags_to_word_pieces_of_a_real_tokenizer(tiny_bert):
    _, tokenizer = load_text_classifier(str(tiny_bert), 5, lora=None, device="cpu", task="tokens")
    sentences = [["paris", "xyz", "fun"], ["i"]]
    tags = [np.array([3, 1, 0]), np.array([0])]
    encoded = encode_tagged_words(tokenizer, sentences, tags, max_length=16)
    ids, mask, types, positions, labels = encoded.tensors
    pieces = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    # the tiny vocabulary spells unknown words letter by letter: p ##a ##r ##i ##s
    assert pieces[:7] == ["[CLS]", "p", "##a", "##r", "##i", "##s", "x"]
    expected = [-100, 3, -100, -100, -100, -100, 1, -100, -100, 0, -100]
    assert labels[0].tolist() == expected
    assert labels[1].tolist() == [-100, 0] + [-100] * 9  # [CLS] i [SEP] then padding
    assert mask[1].sum() == 3 and positions[1].tolist() == list(range(11))
    assert (encoded.sentences_cut, encoded.words_cut) == (0, 0)

    cut = encode_tagged_words(tokenizer, sentences, tags, max_length=8)
    # "paris" (5 pieces) + "xyz" (3) do not fit in 8 - 2: "xyz" is partly kept, "fun" is lost
    assert (cut.sentences_cut, cut.words_cut) == (1, 1)
    assert cut.tensors[-1][0].tolist() == [-100, 3, -100, -100, -100, -100, 1, -100]


@pytest.mark.parametrize(
    ("sentences", "tags", "message"),
    [
        ([["a"], []], [np.array([0]), np.array([], dtype=np.int64)], "sentence 1 has no words"),
        ([["a", " "]], [np.array([0, 0])], "empty words at positions \\[1\\]"),
        ([["a", "b"]], [np.array([0])], "2 words but 1 tags"),
        ([], [], "no sentences"),
    ],
)
def test_bad_sentences_are_refused(tiny_bert, sentences, tags, message):
    _, tokenizer = load_text_classifier(str(tiny_bert), 5, lora=None, device="cpu", task="tokens")
    with pytest.raises(ValueError, match=message):
        encode_tagged_words(tokenizer, sentences, tags, max_length=16)


def test_token_classifier_gives_one_logit_row_per_token(tiny_bert):
    model, tokenizer = load_text_classifier(
        str(tiny_bert), len(TAGS), lora=None, device="cpu", task="tokens", label_names=TAGS
    )
    encoded = encode_tagged_words(tokenizer, [["the", "heart"]], [np.array([0, 1])], 16)
    assert model(*encoded.tensors[:-1]).shape == (1, 4, len(TAGS))
    assert model.model.config.id2label[3] == "B-geo-loc"


def test_lora_token_classifier_sends_only_adapters_and_head(tiny_bert):
    model, _ = load_text_classifier(
        str(tiny_bert), len(TAGS), lora=LoraSettings(r=4), device="cpu", task="tokens"
    )
    prefix = "model.base_model.model."
    lora = [
        f"{prefix}bert.encoder.layer.{layer}.attention.self.{m}.lora_{ab}.default.weight"
        for layer in (0, 1)
        for m in ("query", "value")
        for ab in ("A", "B")
    ]
    head = [f"{prefix}classifier.modules_to_save.default.{p}" for p in ("bias", "weight")]
    state = trainable_state(model)
    assert sorted(state) == sorted(lora + head)
    assert state[head[1]].shape == (len(TAGS), 32)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert sum(a.size for a in state.values()) < frozen / 20


def test_unknown_task_and_identity_pooler_are_refused(tiny_bert):
    with pytest.raises(ValueError, match="task must be one of"):
        load_text_classifier(str(tiny_bert), 5, lora=None, device="cpu", task="spans")
    with pytest.raises(ValueError, match="pooler"):
        load_text_classifier(
            str(tiny_bert), 5, lora=None, device="cpu", task="tokens", pooler_init="identity"
        )
    with pytest.raises(ValueError, match="3 label names for 5 labels"):
        load_text_classifier(
            str(tiny_bert), 5, lora=None, device="cpu", task="tokens", label_names=TAGS[:3]
        )
