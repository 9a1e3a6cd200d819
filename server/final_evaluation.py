"""After the last round: one evaluate message to every site with the final model.

Config ``final-evaluation=true`` and ``audit`` (bool): each site answers with its validation
loss/accuracy, per-group confusion counts of the run's ``sensitive-column`` and, when asked,
its membership-inference audit figures (client.final_evaluation). The server keeps each site's
scalars, sums the group counts (no records) and derives the per-group metrics (server.fairness).
"""

from __future__ import annotations

from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from common.config import ConfigError, RunSettings
from common.data.types import LabeledData
from common.group_counts import PREFIX, from_metrics, sensitive_values, sum_counts
from common.protocol.records import ARRAYS, CONFIG, METRICS
from common.releases import AUDIT_ATTACKS as ATTACKS
from common.releases import AUDIT_FIGURES as FIGURES
from common.releases import AUDIT_SETUP as SETUP
from server.fairness import group_metrics
from server.strategy import PrivacyAware

AUDIT_PREFIX = "audit-"


def check_final_evaluation(settings: RunSettings, test: LabeledData) -> None:
    """ConfigError, before any site trains, when the run asks for a final evaluation the
    dataset cannot answer: an audit or group counts of a token-tagged (NER) dataset, or a
    ``sensitive-column`` it lacks."""
    if test.kind == "tokens" and (settings.audit or settings.sensitive_column):
        raise ConfigError(
            f"dataset {settings.dataset} is token-tagged (NER): the membership audit and "
            "group counts score one label per record; set audit=false and "
            'sensitive-column=""'
        )
    if settings.sensitive_column:
        try:
            sensitive_values(test, settings.sensitive_column)
        except ValueError as err:
            raise ConfigError(f"dataset {settings.dataset}: {err}") from err


def final_sections(
    grid: Grid, strategy: PrivacyAware, arrays: ArrayRecord, settings: RunSettings, positive: str
) -> dict[str, Any]:
    """With ``audit`` or ``sensitive-column``: the summary's sections from the sites'
    evaluation of the final model (``positive``: the positive class of the group metrics);
    else none. A failure is logged and recorded, not raised: the trained model and its
    records are kept."""
    if not (settings.audit or settings.sensitive_column):
        return {}
    try:
        return run_final_evaluation(
            grid,
            strategy,
            arrays,
            server_round=max(strategy.rounds, default=0),
            audit=settings.audit,
            sensitive_column=settings.sensitive_column,
            positive_class=positive,
            timeout=settings.round_timeout,
        )
    except Exception as err:  # the run's results must survive it
        log(WARNING, "final evaluation failed: %r", err)
        return {"final-evaluation": {"sites": {}, "failures": [repr(err)]}}


def run_final_evaluation(
    grid: Grid,
    strategy: PrivacyAware,
    arrays: ArrayRecord,
    *,
    server_round: int,
    audit: bool,
    sensitive_column: str,
    positive_class: str,
    timeout: float,
) -> dict[str, Any]:
    """Send the final model to every connected site, collect the replies; the summary's
    ``final-evaluation``, ``audit`` and ``fairness`` sections."""
    config = ConfigRecord({"final-evaluation": True, "audit": audit, "server-round": server_round})
    messages = [
        Message(
            content=RecordDict({ARRAYS: arrays, CONFIG: config}),
            message_type=MessageType.EVALUATE,
            dst_node_id=node,
        )
        for node in grid.get_node_ids()
    ]
    log(INFO, "final evaluation%s: %s site(s)", " with audit" if audit else "", len(messages))
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    return collect(replies, strategy, audit=audit, column=sensitive_column, positive=positive_class)


def collect(
    replies: list[Message], strategy: PrivacyAware, *, audit: bool, column: str, positive: str
) -> dict[str, Any]:
    """Per-site scalars, audit figures and summed group counts of the final-evaluation replies."""
    sites: dict[str, dict[str, float]] = {}
    audits: dict[str, dict[str, Any]] = {}
    counts = []
    failures: list[str] = []
    for msg in replies:
        if msg.has_error():
            label = strategy.node_labels.get(msg.metadata.src_node_id, "?")
            failures.append(f"{label}: {msg.error.reason}")
            continue
        metrics = dict(msg.content[METRICS])
        label = strategy.site_label(msg)
        sites[label] = {k: v for k, v in metrics.items() if k.startswith("eval-")}
        if audit:
            audits[label] = _audit_section({k: v for k, v in metrics.items() if k in _AUDIT_KEYS})
        if column:
            try:
                counts.append(
                    from_metrics({k: v for k, v in metrics.items() if k.startswith(PREFIX)})
                )
            except ValueError as err:
                failures.append(f"{label}: group counts refused: {err}")
    for failure in failures:
        log(WARNING, "final evaluation: %s", failure)
    fairness = None
    if column and counts:
        fairness = group_metrics(sum_counts(counts), column, positive) | {
            "sites-counted": len(counts)
        }
    return {
        "final-evaluation": {"sites": sites, "failures": failures},
        "audit": audits if audit else None,
        "fairness": fairness,
    }


_AUDIT_KEYS = {
    *(f"{AUDIT_PREFIX}{k}" for k in SETUP),
    *(f"{AUDIT_PREFIX}{a}-{f}" for a in ATTACKS for f in FIGURES),
}


def _audit_section(metrics: dict[str, Any]) -> dict[str, Any]:
    """A site's audit figures, nested by attack (missing figures are left out)."""
    out: dict[str, Any] = {
        k: metrics[f"{AUDIT_PREFIX}{k}"] for k in SETUP if f"{AUDIT_PREFIX}{k}" in metrics
    }
    for attack in ATTACKS:
        out[attack] = {
            f: metrics[f"{AUDIT_PREFIX}{attack}-{f}"]
            for f in FIGURES
            if f"{AUDIT_PREFIX}{attack}-{f}" in metrics
        }
    return out
