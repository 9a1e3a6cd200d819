"""Client-side clipping for client-level DP (run-config client-dp = client-fixed /
client-adaptive): Flower's fixedclipping_mod / adaptiveclipping_mod on training replies.

The site's own handler has already recorded its DP-SGD spend in its ledger; the mod then clips
the update w_site - w_global to the norm C the server sent (adaptive: also reports whether it
clipped, the norm bit). A site that refused to train sends no arrays: its refusal passes
through unchanged (Flower's mods would turn it into an error). With secure aggregation the
site also adds its share of the Gaussian noise (distributed DP, ``add_distributed_noise``).
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.app.message_type import MessageType
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, add_gaussian_noise_inplace

from common.protocol import ARRAYS, CONFIG, DISTRIBUTED_NOISE_STDDEV

CLIPPING_MODS = {"client-fixed": fixedclipping_mod, "client-adaptive": adaptiveclipping_mod}


def client_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip this site's training update when the run asks for client-side clipping."""
    mod = CLIPPING_MODS.get(str(context.run_config.get("client-dp", "off")))
    if mod is None or msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    refusal: list[Message] = []
    noise_std = float(msg.content[CONFIG].get(DISTRIBUTED_NOISE_STDDEV, 0.0))

    def site(message: Message, ctxt: Context) -> Message:
        # C and the noise are for this mod, not training parameters: the site's request
        # holds no such keys
        ours = (KEY_CLIPPING_NORM, DISTRIBUTED_NOISE_STDDEV)
        config = {k: v for k, v in message.content[CONFIG].items() if k not in ours}
        message.content[CONFIG] = ConfigRecord(config)
        reply = call_next(message, ctxt)
        if not reply.has_error() and ARRAYS not in reply.content:
            refusal.append(reply)
        return reply

    clipped = mod(msg, context, site)
    if refusal:
        return refusal[0]
    if noise_std > 0 and not clipped.has_error():  # secure aggregation: noise added here
        add_distributed_noise(clipped, noise_std)
    return clipped


def add_distributed_noise(reply: Message, std: float) -> None:
    """Distributed DP noise: this site's share N(0, std^2) per coordinate, std = sigma * C /
    sqrt(m), so that the m sites' shares sum to noise sigma * C on the securely summed
    updates (the server never sees a site's update, so it cannot add the noise itself)."""
    arrays = reply.content[ARRAYS]
    values = [arrays[key].numpy().copy() for key in arrays.keys()]
    add_gaussian_noise_inplace(values, std)
    reply.content[ARRAYS] = ArrayRecord(
        {key: Array(value) for key, value in zip(arrays.keys(), values, strict=True)}
    )
