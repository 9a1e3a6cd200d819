"""fedpriv ClientApp: a site's train and evaluate handlers (glue; the work is in plain functions).

Privacy decision for a round (policy + ledger + enforcement): ``client.privacy_round`` and
``common.privacy.ledger``; DP-SGD itself: ``client.training``.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.client_dp import client_clipping_mod
from client.evaluation import eval_metrics, evaluate
from client.local_round import run_train_round, site_model
from client.secure_aggregation import secure_aggregation_mod
from client.site_context import site_from_context
from common.protocol import (
    ARRAYS,
    CONFIG,
    DECISION,
    METRICS,
    from_array_record,
    to_array_record,
)

# mods: SecAgg+ when the round runs it, client-side clipping when client-dp = client-*
app = ClientApp(mods=[secure_aggregation_mod, client_clipping_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Apply the site's policy to the request, check the budget, train with DP-SGD, record the
    spend, reply arrays + metrics + the site's decision (or a refusal with its reason)."""
    site = site_from_context(context)
    config = dict(msg.content[CONFIG]) if CONFIG in msg.content else {}
    reply = run_train_round(site, from_array_record(msg.content[ARRAYS]), config)
    content = RecordDict(
        {METRICS: MetricRecord(reply.metrics), DECISION: ConfigRecord(reply.decision)}
    )
    if reply.arrays is not None:
        content[ARRAYS] = to_array_record(reply.arrays)
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the site's local validation split (aggregate metrics only)."""
    site = site_from_context(context)
    config = dict(msg.content[CONFIG]) if CONFIG in msg.content else {}
    if config.get("final-evaluation"):  # after the last round: group counts, optional audit
        from client.final_evaluation import final_evaluation  # scipy/sklearn: only here

        metrics = final_evaluation(
            site, from_array_record(msg.content[ARRAYS]), audit=bool(config.get("audit"))
        )
        return Message(content=RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)
    model, dataset, _ = site_model(site, from_array_record(msg.content[ARRAYS]), "validation")
    result = evaluate(model, dataset, device=site.device, tag_names=site.data.train.class_names)
    metrics = eval_metrics(result) | {
        "num-examples": result.num_examples,
        "partition-id": site.partition_id,
    }
    return Message(content=RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)
