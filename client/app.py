"""fedpriv ClientApp: glue between Flower and the site (``client.site.SiteService``).

Simulation: the site runs in-process (one SiteService per simulated site and worker).
Deployment: the ClientApp is code the coordinator ships, so it is only a shim that forwards the
message to the site service the operator runs (node config ``site-service``); the privacy
decision, DP-SGD and every computation on records happen in the service.
"""

from __future__ import annotations

from functools import lru_cache

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.secure_aggregation import secure_aggregation_mod

# SecAgg+ masking (of already-private arrays) may run in the coordinator's code; client-side
# clipping and noise shares run in the site (client/client_dp.py, called by SiteService.handle)
app = ClientApp(mods=[secure_aggregation_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Forward a train message to the site; reply what it answers."""
    return _answer("train", msg, context)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """Forward an evaluate message to the site; reply what it answers."""
    return _answer("evaluate", msg, context)


def _answer(message_type: str, msg: Message, context: Context) -> Message:
    node_config = dict(context.node_config)
    if "partition-id" not in node_config:  # deployment: forward to the site's own service
        from client.site_shim import forward

        return forward(message_type, msg, node_config, context.run_config, context.run_id)
    service = _simulated_site(  # simulation: the same site code, in-process
        int(node_config["partition-id"]),
        int(node_config.get("num-partitions", 1)),
        str(context.run_config.get("sites-file", "")),
    )
    content = service.handle(message_type, msg.content, dict(context.run_config), context.run_id)
    return Message(content=content, reply_to=msg)


@lru_cache(maxsize=64)
def _simulated_site(partition_id: int, num_partitions: int, sites_file: str):  # noqa: ANN202
    from client.site import SiteService
    from client.site_context import simulated_policy

    policy = simulated_policy({"sites-file": sites_file}, partition_id)
    return SiteService(policy, partition_id=partition_id, num_partitions=num_partitions)
