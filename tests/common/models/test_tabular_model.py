import pytest
import torch

from common.models.tabular import build_tabular_model


@pytest.mark.parametrize(
    ("kind", "num_params"), [("logreg", 5 * 3 + 3), ("mlp", 5 * 7 + 7 + 7 * 3 + 3)]
)
def test_shapes_and_sizes(kind, num_params):
    model = build_tabular_model(kind, num_features=5, num_classes=3, hidden=7)
    assert model(torch.zeros(4, 5)).shape == (4, 3)
    assert sum(p.numel() for p in model.parameters()) == num_params


def test_unknown_kind_names_known_kinds():
    with pytest.raises(ValueError, match="known kinds.*logreg.*mlp"):
        build_tabular_model("xgboost", 5, 2)
