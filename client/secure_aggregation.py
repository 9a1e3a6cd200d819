"""A site's side of secure aggregation (run-config secure-aggregation = true): Flower's SecAgg+
client mod (``flwr.client.mod.secaggplus_mod``, the legacy path; Flower 1.42 has no Message-API
SecAgg+) in front of fedpriv's ClientApp.

SecAgg+ runs four train messages per round (setup, share keys, collect masked vectors, unmask);
only the third trains. There the site trains as always (policy, ledger: the spend is recorded
before anything leaves), and this module hands its reply to the mod in the legacy FitRes form
the mod reads. The mod multiplies the parameters by the site's weight (training records / the
run's max weight), quantizes them, adds its private mask and the pairwise masks, and sends only
that masked vector: the reply's plain arrays are removed. The metrics and the site's decision
(epsilon spent/left, status, reason) still travel in the clear, as without secure aggregation.
A site that refuses to train still takes part, with weight 0 and zero parameters, so that the
masks cancel.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from common.protocol.records import ARRAYS, METRICS, TRAINED


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """SecAgg+ for the train messages of a secure-aggregation round; others pass through."""
    if msg.metadata.message_type != MessageType.TRAIN or (
        RECORD_KEY_CONFIGS not in msg.content.config_records
    ):
        return call_next(msg, context)

    def site(request: Message, ctxt: Context) -> Message:
        # the protocol's record is for the SecAgg+ mod only (it has read it by now)
        del request.content.config_records[RECORD_KEY_CONFIGS]
        return as_fit_reply(request, call_next(request, ctxt), uniform)

    # client-level DP: every site counts once; the largest weight keeps quantization finest
    client_dp = str(context.run_config.get("client-dp", "off")) != "off"
    uniform = int(float(context.run_config.get("secagg-max-weight", 1))) if client_dp else 0

    return secaggplus_mod(msg, context, site)


def as_fit_reply(request: Message, reply: Message, uniform: int = 0) -> Message:
    """Add to ``reply`` (in place) the legacy FitRes records the SecAgg+ mod reads, with the
    parameters in the order the server sent them, and take its plain arrays out. Weight: the
    site's training records, or ``uniform`` for every site (client-level DP)."""
    if reply.has_error():  # the mod cannot mask an error: the server sees a dropped site
        raise RuntimeError(f"the site could not train: {reply.error.reason}")
    sent = request.content[ARRAYS]
    content = reply.content
    trained = ARRAYS in content and int(content[METRICS]["status"]) == TRAINED
    if trained:
        arrays = content[ARRAYS]
        if list(arrays.keys()) != list(sent.keys()):
            raise ValueError("the trained arrays do not match the model that was sent")
        values = [arrays[key].numpy() for key in sent.keys()]
        weight = uniform or int(content[METRICS]["num-examples"])
    else:  # a refusal: weight 0 and zeros, the masks still have to cancel
        values = [np.zeros_like(array.numpy()) for array in sent.values()]
        weight = 0
    if ARRAYS in content:
        del content[ARRAYS]
    fit = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(values), weight, {})
    for name, record in compat.fitres_to_recorddict(fit, keep_input=False).items():
        content[name] = record
    return reply
