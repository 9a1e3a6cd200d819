"""Client-side clipping for client-level DP (run-config client-dp = client-fixed /
client-adaptive): Flower's fixedclipping_mod / adaptiveclipping_mod on training replies.

The site's own handler has already recorded its DP-SGD spend in its ledger; the mod then clips
the update w_site - w_global to the norm C the server sent (adaptive: also reports whether it
clipped, the norm bit). A site that refused to train sends no arrays: its refusal passes
through unchanged (Flower's mods would turn it into an error).
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message
from flwr.app.message_type import MessageType
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from common.protocol import ARRAYS, CONFIG

CLIPPING_MODS = {"client-fixed": fixedclipping_mod, "client-adaptive": adaptiveclipping_mod}


def client_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip this site's training update when the run asks for client-side clipping."""
    mod = CLIPPING_MODS.get(str(context.run_config.get("client-dp", "off")))
    if mod is None or msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    refusal: list[Message] = []

    def site(message: Message, ctxt: Context) -> Message:
        # C is for this mod, not a training parameter: the site's request holds no such key
        config = {k: v for k, v in message.content[CONFIG].items() if k != KEY_CLIPPING_NORM}
        message.content[CONFIG] = ConfigRecord(config)
        reply = call_next(message, ctxt)
        if not reply.has_error() and ARRAYS not in reply.content:
            refusal.append(reply)
        return reply

    clipped = mod(msg, context, site)
    return refusal[0] if refusal else clipped
