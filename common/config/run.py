"""The run settings: what the coordinator configured for one run, section by section.

``RunSettings`` is every section at once (one flat namespace, as Flower's run config is flat:
``settings.batch_size``, key ``batch-size``); each section validates its own fields, and
``validate`` adds the rules that tie sections together (client-level DP, secure aggregation and
server optimizers each need the plain weighted mean). README's run-config table lists the keys by
section (``section_keys``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from common.config.federation_sections import (
    ClientDpSettings,
    FederationSettings,
    OutputSettings,
    RobustnessSettings,
    SecureAggregationSettings,
)
from common.config.fields import ConfigError, kebab, require, typed_values
from common.config.training_sections import (
    DataSettings,
    LocalTrainingSettings,
    ModelSettings,
    SampleDpSettings,
)

SECTIONS: dict[str, type] = {
    "data": DataSettings,
    "model": ModelSettings,
    "local training": LocalTrainingSettings,
    "sample-level DP": SampleDpSettings,
    "federation": FederationSettings,
    "robustness": RobustnessSettings,
    "client-level DP": ClientDpSettings,
    "secure aggregation": SecureAggregationSettings,
    "output": OutputSettings,
}
# Keys that were replaced (an old config gets told what to write instead).
REPLACED = {"lora": "finetune = 'lora' | 'full' | 'head' (lora = false was finetune = 'full')"}


@dataclass(frozen=True)
class RunSettings(
    OutputSettings,
    SecureAggregationSettings,
    ClientDpSettings,
    RobustnessSettings,
    FederationSettings,
    SampleDpSettings,
    LocalTrainingSettings,
    ModelSettings,
    DataSettings,
):
    """Every section of the run config (see pyproject.toml for the defaults)."""

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunSettings:
        """Parse Flower's run config; unknown keys and bad values raise ConfigError."""
        old = sorted(set(run_config) & set(REPLACED))
        require(not old, "; ".join(f"run config: {k} was replaced by {REPLACED[k]}" for k in old))
        settings = cls(**typed_values(cls, run_config, "run config"))
        settings.validate()
        return settings

    def validate(self) -> None:
        for section in SECTIONS.values():
            section.check_section(self)
        needs_mean = {
            f"server-optimizer={self.server_optimizer}": self.server_optimizer != "fedavg",
            f"client-dp={self.client_dp}": self.client_dp != "off",
            "secure-aggregation": self.secure_aggregation,
        }
        for what, wanted in needs_mean.items():
            require(
                not wanted or self.aggregation == "fedavg",
                f"{what} needs aggregation='fedavg' (it works on the weighted mean of the "
                f"updates), got {self.aggregation!r}",
            )
        require(
            self.server_optimizer == "fedavg" or not self.secure_aggregation,
            "server-optimizer other than fedavg is not combined with secure-aggregation yet",
        )
        require(
            not self.secure_aggregation or self.client_dp in ("off", "client-fixed"),
            "secure-aggregation combines with client-dp='client-fixed' only (the sites clip "
            "and add the noise; the server never sees an update to clip or a norm bit)",
        )


def section_keys() -> dict[str, list[str]]:
    """The run-config keys of each section, in declaration order."""
    return {name: [kebab(f.name) for f in fields(cls)] for name, cls in SECTIONS.items()}


__all__ = ["ConfigError", "RunSettings", "SECTIONS", "section_keys"]
