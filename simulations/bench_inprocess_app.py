"""Benchmark only (simulations/bench_deployment.py): the deployment path before the site
service, as a ClientApp. Each message's fresh ``flwr-clientapp`` process builds the site from
node config (``policy-file``) and runs it in-process: torch import, data load and model build
per message. It trusts the coordinator's code with the site's files, so fedpriv's own ClientApp
never does this; the benchmark submits it to measure what the service saves.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.secure_aggregation import secure_aggregation_mod

app = ClientApp(mods=[secure_aggregation_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _answer("train", msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _answer("evaluate", msg, context)


def _answer(message_type: str, msg: Message, context: Context) -> Message:
    from client.site import SiteService
    from common.config import SiteSettings

    policy = SiteSettings.from_mapping(dict(context.node_config), "node config")
    service = SiteService(policy)
    content = service.handle(message_type, msg.content, dict(context.run_config), context.run_id)
    return Message(content=content, reply_to=msg)
