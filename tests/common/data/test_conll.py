"""common/data/conll.py: token<TAB>tag files read into tokens LabeledData, with specific errors."""

import numpy as np
import pytest

from common.data.conll import TaggedFileError, bio_tags, entity_types, read_tagged_file

TAGS = bio_tags(["person", "geo-loc"])


def test_bio_tag_set_is_fixed_by_the_declared_types():
    assert TAGS == ["O", "B-person", "I-person", "B-geo-loc", "I-geo-loc"]
    assert entity_types(TAGS) == ["person", "geo-loc"]
    with pytest.raises(ValueError, match="distinct"):
        bio_tags(["person", "person"])


def test_sentences_tags_and_entity_strata(tmp_path):
    path = tmp_path / "ner.txt"
    path.write_text(
        "Alice\tB-person\nSmith\tI-person\nwent\tO\n\t\n\n\nhome\tO\n.\tO\n\nto\tO\nParis\tB-geo-loc"
    )
    data = read_tagged_file(path, TAGS)
    assert data.kind == "tokens" and data.class_names == TAGS
    assert data.tokens == [["Alice", "Smith", "went"], ["home", "."], ["to", "Paris"]]
    assert [t.tolist() for t in data.tags] == [[1, 2, 0], [0, 0], [0, 3]]
    assert data.labels.tolist() == [1, 0, 1]  # holds an entity
    part = data.subset(np.array([2, 0]))
    assert part.tokens[0] == ["to", "Paris"] and part.tags[1].tolist() == [1, 2, 0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Alice\tB-person\nSmith I-person\n", "line 2: expected 'token<TAB>tag'"),
        ("Alice\tB-person\tx\n", "line 1: expected 'token<TAB>tag'"),
        ("Alice\t\n", "line 1: expected 'token<TAB>tag'"),
        ("\tO\n", "line 1: expected"),
        ("Alice\tB-persn\n", "line 1: unknown tag 'B-persn'"),
        ("Alice\tB-company\n", "unknown tag 'B-company'"),
        ("\n\t\n\n", "holds no sentences"),
    ],
)
def test_malformed_files_are_refused_naming_the_line(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(TaggedFileError, match=message):
        read_tagged_file(path, TAGS)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(TaggedFileError, match="not found"):
        read_tagged_file(tmp_path / "nope.txt", TAGS)
