"""A stable fingerprint of a site's dataset: the key its privacy spend is recorded under."""

from __future__ import annotations

import hashlib

import numpy as np

from common.data.types import LabeledData


def dataset_fingerprint(data: LabeledData) -> str:
    """sha256 over the records (features, texts or tagged words) and labels, order-independent.

    Two loads of the same records give the same key, however they were ordered, so a site's
    spend on its data composes across runs; any changed record gives a new key.
    """
    total = hashlib.sha256(data.kind.encode())
    for digest in sorted(record_hashes(data)):
        total.update(digest)
    return total.hexdigest()


def record_hashes(data: LabeledData) -> list[bytes]:
    """sha256 of each record (its inputs and label), in order: a record's identity in the
    ledger, whatever file or order it arrives in."""
    row_hashes = []
    for i in range(len(data)):
        h = hashlib.sha256()
        if data.features is not None:
            h.update(np.ascontiguousarray(data.features[i], dtype=np.float64).tobytes())
        if data.texts is not None:
            h.update(data.texts[i].encode("utf-8"))
        if data.tokens is not None and data.tags is not None:  # words and their tags
            h.update("\x1f".join(data.tokens[i]).encode("utf-8"))
            h.update(b"|" + np.ascontiguousarray(data.tags[i], dtype=np.int64).tobytes())
        h.update(b"|" + str(int(data.labels[i])).encode())
        row_hashes.append(h.digest())
    return row_hashes
