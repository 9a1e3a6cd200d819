"""Run-config sections of what each site computes: data, model, local training, sample-level DP.

Each section is a frozen dataclass; every field declares its limits once (``setting``) and
``check_section`` adds the rules that tie fields of the same section together. The keys are the
fields' names in kebab-case (``batch-size``), flat in Flower's run config.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.config.fields import check_fields, require, setting
from common.config.limits import (
    MAX_BATCH_SIZE,
    MAX_CLIP_NORM,
    MAX_LEARNING_RATE,
    MAX_LOCAL_EPOCHS,
    MAX_LOCAL_STEPS,
    MAX_NOISE_MULTIPLIER,
    MAX_TARGET_EPSILON,
)
from common.privacy.accounting import ACCOUNTANTS

MODELS = ("mlp", "logreg", "text")
PARTITIONERS = ("iid", "dirichlet", "natural")
OPTIMIZERS = ("sgd", "adam")
GRAD_SAMPLE_MODES = ("auto", "bookkeeping", "ghost", "hooks")
FINETUNE_MODES = ("head", "lora", "full")
POOLING_CHOICES = ("auto", "pooler", "mean", "cls")


@dataclass(frozen=True)
class DataSettings:
    """Which records, split how. seed: partitioning, model initialisation and sampling;
    validation-fraction: a simulated site's held-out share (a site's own policy decides its own);
    server-eval: the coordinator evaluates on its held-out split (at most
    server-eval-max-records, 0 = all); sites-file: the simulated sites' policies (TOML)."""

    seed: int = 0
    dataset: str = "heart-disease"
    partitioner: str = setting("natural", choices=PARTITIONERS)
    partition_by: str = "dataset"
    dirichlet_alpha: float = setting(0.5, low=0, open_low=True)
    validation_fraction: float = setting(0.2, low=0, high=1, open_low=True, open_high=True)
    server_eval: bool = True
    server_eval_max_records: int = setting(0, low=0, zero="all")
    sites_file: str = ""

    def check_section(self) -> None:
        check_fields(self, section=DataSettings)


@dataclass(frozen=True)
class ModelSettings:
    """What model, and what of it trains. finetune (text): head (frozen encoder, cached
    features; only the head trains), lora (adapters r, alpha on lora-target-modules; the
    default) or full;
    pooling: how a sequence classifier reads the encoder (auto = the checkpoint's own);
    normalize: L2-normalise the pooled vector; max-length: tokens per record;
    init-head-from: a saved fedpriv model directory whose trained classification head starts
    this run (lora/full; linear-probe-then-fine-tune), "" = a fresh head."""

    model: str = setting("mlp", choices=MODELS)
    model_name_or_path: str = ""
    pooler_init: str = setting("pretrained", choices=("pretrained", "identity"))
    pooling: str = setting("auto", choices=POOLING_CHOICES)
    normalize: bool = False
    finetune: str = setting("", choices=("", *FINETUNE_MODES))
    lora_r: int = setting(8, low=1)
    lora_alpha: int = setting(16, low=1)
    lora_target_modules: str = "query,value"
    max_length: int = setting(64, low=8)
    init_head_from: str = ""

    @property
    def finetune_mode(self) -> str:
        """What trains: "head", "lora" or "full"; unset ("") is lora (a tabular model ignores
        it: it trains whole)."""
        return self.finetune or "lora"

    @property
    def lora_targets(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.lora_target_modules.split(",") if t.strip())

    def check_section(self) -> None:
        check_fields(self, section=ModelSettings)
        require(
            not self.finetune or self.model == "text",
            f"finetune={self.finetune!r} applies to model='text' (a tabular model trains whole)",
        )
        require(
            not self.normalize or self.pooling in ("auto", "mean", "cls"),
            "normalize (L2 norm of the pooled vector) needs pooling 'auto', 'mean' or 'cls'",
        )
        require(bool(self.lora_targets), "lora-target-modules must name at least one module")
        require(
            not self.init_head_from
            or (self.model == "text" and self.finetune_mode in ("lora", "full")),
            f"init-head-from starts a text model's lora or full fine-tuning from a trained head; "
            f"got model={self.model!r}, finetune={self.finetune_mode!r} (a head run trains the "
            "head from scratch: leave init-head-from empty)",
        )


@dataclass(frozen=True)
class LocalTrainingSettings:
    """One round at a site: local-epochs passes (or local-steps steps, 0 = epochs) of batch-size
    records at learning-rate (head-learning-rate for a new head, 0 = the same); examples through
    the model at once (0 = the whole batch); how per-example gradients are clipped; the NER loss
    weight of the O tag; whether DP full fine-tuning keeps the word embeddings frozen."""

    local_epochs: int = setting(1, low=1, cap=MAX_LOCAL_EPOCHS)
    local_steps: int = setting(0, low=0, cap=MAX_LOCAL_STEPS, zero="local-epochs passes")
    batch_size: int = setting(32, low=1, cap=MAX_BATCH_SIZE)
    learning_rate: float = setting(0.05, low=0, cap=MAX_LEARNING_RATE, open_low=True)
    head_learning_rate: float = setting(
        0.0, low=0, cap=MAX_LEARNING_RATE, open_low=True, zero="learning-rate"
    )
    optimizer: str = setting("sgd", choices=OPTIMIZERS)
    max_physical_batch_size: int = setting(0, low=0, zero="the whole batch at once")
    grad_sample_mode: str = setting("auto", choices=GRAD_SAMPLE_MODES)
    freeze_word_embeddings: bool = True
    outside_tag_weight: float = setting(
        1.0, low=0, cap=1e3, open_low=True, hint="the NER loss weight of the O tag; entities: 1"
    )

    def check_section(self) -> None:
        check_fields(self, section=LocalTrainingSettings)


@dataclass(frozen=True)
class SampleDpSettings:
    """Sample-level DP-SGD at each site: (target-epsilon, target-delta) for the run (delta 0 =
    0.1/n per site), sigma asked (noise-multiplier, 0 = each site calibrates sigma to the target),
    clip norm C (max-grad-norm) and the accountant that composes it. dp=false: a non-private
    baseline, which only sites that allow it train."""

    dp: bool = True
    target_epsilon: float = setting(
        8.0,
        low=0,
        cap=MAX_TARGET_EPSILON,
        open_low=True,
        hint="set dp=false for a non-private baseline",
    )
    target_delta: float = setting(0.0, low=0, high=1, open_high=True, hint="0 = 0.1/n per site")
    noise_multiplier: float = setting(
        0.0, low=0, cap=MAX_NOISE_MULTIPLIER, hint="0 = calibrate sigma to target-epsilon"
    )
    max_grad_norm: float = setting(1.0, low=0, cap=MAX_CLIP_NORM, open_low=True)
    accountant: str = setting("pld", choices=ACCOUNTANTS)

    def check_section(self) -> None:
        check_fields(self, section=SampleDpSettings)
