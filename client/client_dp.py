"""Client-side clipping for client-level DP (run-config client-dp = client-fixed /
client-adaptive), done by the site service itself: the clipping and the noise are privacy
properties, so they never run in the coordinator's code (the ClientApp shim).

The same math as Flower's fixedclipping_mod / adaptiveclipping_mod (its
``compute_clip_model_update`` / ``compute_adaptive_clip_model_update``): the update
w_site - w_global is scaled to norm <= C, the norm C the server sent (``clipping_norm``);
adaptive clipping also reports whether it clipped (``norm_bit``). With secure aggregation the
site adds its share of the Gaussian noise, N(0, std^2) per coordinate with
std = sigma * C / sqrt(m) (distributed DP: the m sites' shares sum to noise sigma * C on the
securely summed updates, which the server never sees one by one). A site that refused to train
sends no arrays: its refusal passes unchanged. The site's DP-SGD spend is in its ledger before
any of this runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.supercore.differential_privacy import (
    KEY_CLIPPING_NORM,
    KEY_NORM_BIT,
    add_gaussian_noise_inplace,
    compute_adaptive_clip_model_update,
    compute_clip_model_update,
    get_norm,
)

from common.protocol.records import ARRAYS, DISTRIBUTED_NOISE_STDDEV, METRICS

CLIPPING_MODES = ("client-fixed", "client-adaptive")


class ClientClippingError(ValueError):
    """A train request whose client-side clipping parameters are missing or impossible."""


@dataclass(frozen=True)
class ClientClipping:
    """mode: client-fixed / client-adaptive; clipping_norm: C; noise_stddev: this site's
    noise share std (0 = none: the server adds the noise)."""

    mode: str
    clipping_norm: float
    noise_stddev: float = 0.0

    def apply(self, reply: RecordDict, sent: Mapping[str, np.ndarray]) -> None:
        """Clip (and noise) ``reply``'s arrays in place against the model that was ``sent``."""
        if ARRAYS not in reply.array_records:  # a refusal
            return
        arrays = reply[ARRAYS]
        keys = list(arrays.keys())
        if keys != list(sent):
            raise ClientClippingError("the trained arrays do not match the model that was sent")
        values = [arrays[key].numpy().copy() for key in keys]
        base = [np.asarray(sent[key]) for key in keys]
        moved = get_norm([v - b for v, b in zip(values, base, strict=True)]) > 0
        if self.mode == "client-adaptive":
            clipped = moved and compute_adaptive_clip_model_update(values, base, self.clipping_norm)
            reply[METRICS][KEY_NORM_BIT] = int(clipped)
        elif moved:  # Flower's clip divides by the norm
            compute_clip_model_update(values, base, self.clipping_norm)
        if self.noise_stddev > 0:
            add_gaussian_noise_inplace(values, self.noise_stddev)
        reply[ARRAYS] = ArrayRecord(
            {key: Array(np.asarray(value)) for key, value in zip(keys, values, strict=True)}
        )


def client_clipping(
    run_config: Mapping[str, Any], config: Mapping[str, Any]
) -> tuple[dict[str, Any], ClientClipping | None]:
    """Split a train config into the site's training request and the client-side clipping
    the run asks for (None when client-dp is not client-*). C and the noise share are for the
    clipping step, not training parameters: the request handed to training holds neither."""
    mode = str(run_config.get("client-dp", "off"))
    if mode not in CLIPPING_MODES:
        return dict(config), None
    ours = (KEY_CLIPPING_NORM, DISTRIBUTED_NOISE_STDDEV)
    request = {k: v for k, v in config.items() if k not in ours}
    norm = config.get(KEY_CLIPPING_NORM)
    if not _number(norm) or not 0 < float(norm) < math.inf:
        raise ClientClippingError(
            f"client-dp={mode}: the train request needs a finite {KEY_CLIPPING_NORM} > 0, "
            f"got {norm!r}"
        )
    std = config.get(DISTRIBUTED_NOISE_STDDEV, 0.0)
    if not _number(std) or not 0 <= float(std) < math.inf:
        raise ClientClippingError(
            f"{DISTRIBUTED_NOISE_STDDEV} must be a finite number >= 0, got {std!r}"
        )
    return request, ClientClipping(mode, float(norm), float(std))


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
