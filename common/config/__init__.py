"""Typed, validated settings: the run's (what the coordinator asks, in sections) and a site's own.

The run config is what the coordinator asks for (pyproject ``[tool.flwr.app.config]`` plus
``--run-config`` overrides): ``run.RunSettings``, made of the sections in
``training_sections`` (data, model, local training, sample-level DP) and
``federation_sections`` (federation, robustness, client-level DP, secure aggregation, output).
Site settings come from the site (its policy file / ``--node-config`` in deployment, a
``sites-file`` TOML in simulation) and are the site's own: ``site.SiteSettings``. Every limit is
declared once, on its field (``fields.setting``; shared limits in ``limits``).
"""

from common.config.federation_sections import AGGREGATIONS, CLIENT_DP_MODES, SERVER_OPTIMIZERS
from common.config.fields import ConfigError
from common.config.limits import MAX_CLIP_NORM, MAX_NOISE_MULTIPLIER
from common.config.run import SECTIONS, RunSettings, section_keys
from common.config.site import (
    EVALUATION_MODES,
    MIN_EVALUATION_NOISE,
    SIMULATED_SITE,
    SiteSettings,
    load_sites_file,
)
from common.config.training_sections import (
    FINETUNE_MODES,
    GRAD_SAMPLE_MODES,
    MODELS,
    OPTIMIZERS,
    PARTITIONERS,
    POOLING_CHOICES,
)

__all__ = [
    "AGGREGATIONS",
    "CLIENT_DP_MODES",
    "EVALUATION_MODES",
    "FINETUNE_MODES",
    "GRAD_SAMPLE_MODES",
    "MAX_CLIP_NORM",
    "MAX_NOISE_MULTIPLIER",
    "MIN_EVALUATION_NOISE",
    "MODELS",
    "OPTIMIZERS",
    "PARTITIONERS",
    "POOLING_CHOICES",
    "SECTIONS",
    "SERVER_OPTIMIZERS",
    "SIMULATED_SITE",
    "ConfigError",
    "RunSettings",
    "SiteSettings",
    "load_sites_file",
    "section_keys",
]
