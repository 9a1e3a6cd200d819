"""common/explain/compare.py: rank agreement of two explanation documents."""

from __future__ import annotations

import pytest

from common.explain.compare import rank_agreement


def _tabular(values: dict[str, float]) -> dict:
    ranked = sorted(values, key=lambda k: -values[k])
    return {
        "kind": "tabular",
        "global-importance": [{"feature": k, "mean-abs-shap": values[k]} for k in ranked],
    }


def test_same_order_is_one_reversed_is_minus_one():
    a = _tabular({"age": 0.3, "chol": 0.2, "ca": 0.1, "sex": 0.05})
    b = _tabular({"age": 0.9, "chol": 0.5, "ca": 0.4, "sex": 0.0})
    c = _tabular({"age": 0.0, "chol": 0.1, "ca": 0.2, "sex": 0.3})
    assert rank_agreement(a, b)["spearman"] == pytest.approx(1.0)
    assert rank_agreement(a, b)["kendall"] == pytest.approx(1.0)
    assert rank_agreement(a, c)["spearman"] == pytest.approx(-1.0)
    assert rank_agreement(a, c)["kendall"] == pytest.approx(-1.0)


def test_one_swap_and_token_documents_compare_only_shared_tokens():
    a = _tabular({"w": 4.0, "x": 3.0, "y": 2.0, "z": 1.0})
    b = _tabular({"w": 4.0, "x": 2.0, "y": 3.0, "z": 1.0})
    found = rank_agreement(a, b)
    assert found["spearman"] == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert found["kendall"] == pytest.approx(4 / 6)  # 5 concordant, 1 discordant pair
    s = {"kind": "text", "token-importance": {"good": 1.0, "bad": 0.8, "film": 0.1, "x": 5.0}}
    t = {"kind": "text", "token-importance": {"good": 0.9, "bad": 0.7, "film": 0.3, "y": 2.0}}
    found = rank_agreement(s, t)
    assert found["items-compared"] == 3 and found["spearman"] == pytest.approx(1.0)
    assert found["top"][0][0] == "x" and found["top-shared"] == ["bad", "film", "good"]
    few = rank_agreement(_tabular({"a": 1.0, "b": 0.5}), _tabular({"a": 1.0, "b": 0.5}))
    assert few["spearman"] is None  # two items: no meaningful rank correlation
