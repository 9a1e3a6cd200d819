"""fedpriv ClientApp: a site's train and evaluate handlers (glue; the work is in plain functions).

Privacy decision for a round (policy + ledger + enforcement): ``client.privacy_round`` and
``common.privacy.ledger``; DP-SGD itself: ``client.training``.
"""

from __future__ import annotations

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.evaluation import evaluate
from client.local_round import run_train_round, site_model
from client.site_context import site_from_context
from common.protocol import ARRAYS, METRICS, from_array_record, to_array_record

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Check the site's budget, train with DP-SGD, record the spend, reply arrays + metrics."""
    site = site_from_context(context)
    server_round = int(msg.content["config"]["server-round"])
    arrays, metrics = run_train_round(
        site, from_array_record(msg.content[ARRAYS]), str(msg.metadata.run_id), server_round
    )
    content = RecordDict({METRICS: MetricRecord(metrics)})
    if arrays is not None:
        content[ARRAYS] = to_array_record(arrays)
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the site's local validation split (aggregate metrics only)."""
    site = site_from_context(context)
    model, dataset, _ = site_model(site, from_array_record(msg.content[ARRAYS]), "validation")
    result = evaluate(model, dataset, device=site.device)
    metrics = {
        "eval-loss": result.loss,
        "eval-accuracy": result.accuracy,
        "num-examples": result.num_examples,
        "partition-id": site.partition_id,
    }
    return Message(content=RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)
