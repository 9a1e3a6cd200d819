"""The trained parameters of a model as named numpy arrays: what travels between server and sites.

Only parameters with ``requires_grad`` travel: for LoRA the adapters (A, B) and the classification
head; for full fine-tuning and tabular models every parameter. Frozen weights stay where they are.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

_OPACUS_PREFIX = "_module."


def _clean(name: str) -> str:
    while name.startswith(_OPACUS_PREFIX):
        name = name[len(_OPACUS_PREFIX) :]
    return name


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {_clean(n): p for n, p in model.named_parameters() if p.requires_grad}


def trainable_state(model: nn.Module) -> dict[str, np.ndarray]:
    """Copies of the trainable parameters, keyed by parameter name (Opacus prefixes removed)."""
    return {n: p.detach().cpu().clone().numpy() for n, p in _trainable(model).items()}


def state_nbytes(state: dict[str, np.ndarray]) -> int:
    """Bytes of array data in ``state`` (what one site sends per round)."""
    return sum(a.nbytes for a in state.values())


def weights_digest(state: dict[str, np.ndarray]) -> str:
    """sha256 over every array's name, dtype, shape and bytes (in name order): two models with
    the same digest hold the same trainable parameters, bit for bit."""
    digest = hashlib.sha256()
    for name in sorted(state):
        array = np.ascontiguousarray(state[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _listed(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{names[:limit]}{more}"


class WeightsMismatchError(ValueError):
    """Received weights that do not fit the model (names, shapes, non-finite values); the
    message names parameters and shapes only, never values."""


def load_trainable_state(model: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Copy ``state`` into the trainable parameters of ``model``.

    Keys must equal the model's trainable parameter names and shapes must match exactly, and every
    value must be finite; otherwise ValueError names the offending keys and nothing is changed.
    """
    params = _trainable(model)
    missing = sorted(params.keys() - state.keys())
    unexpected = sorted(state.keys() - params.keys())
    if missing or unexpected:
        raise WeightsMismatchError(
            f"weights do not match the model's {len(params)} trainable parameters: "
            f"missing {_listed(missing)}, unexpected {_listed(unexpected)}"
        )
    mismatched = [
        f"{n}: got {tuple(np.shape(state[n]))}, model has {tuple(p.shape)}"
        for n, p in params.items()
        if tuple(np.shape(state[n])) != tuple(p.shape)
    ]
    if mismatched:
        raise WeightsMismatchError(f"weight shapes do not match: {_listed(mismatched)}")
    not_finite = [n for n in params if not np.isfinite(state[n]).all()]
    if not_finite:
        raise WeightsMismatchError(f"weights contain NaN or infinity: {_listed(not_finite)}")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(torch.as_tensor(np.asarray(state[n])).to(device=p.device, dtype=p.dtype))
