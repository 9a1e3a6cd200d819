"""A sequence classifier over an encoder's MEAN or CLS token embedding (optionally L2-normalised).

``logits = W normalize(pool(h)) + b`` with h the encoder's last hidden states [B, T, H] and
pool = mean over non-padding tokens (sum_t m_t h_t / sum_t m_t, m the attention mask) or h_CLS.
This is the pooling sentence-transformers checkpoints (e.g. all-MiniLM-L6-v2) were trained with;
Hugging Face's BertForSequenceClassification reads tanh(W_p h_CLS) through a pooler instead.

Our own class because transformers has no sequence classifier with mean pooling. The file imports
only torch and transformers: ``save_pretrained`` copies it next to the weights (``auto_map``), so
a saved model loads without fedpriv via ``AutoModelForSequenceClassification.from_pretrained(
dir, trust_remote_code=True)``, and with fedpriv imported (``import common.models.text``, which
registers these classes) without ``trust_remote_code``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

POOLINGS = ("mean", "cls")


class PooledEncoderConfig(PretrainedConfig):
    """encoder: the wrapped encoder's config (a dict when read from config.json); pooling: "mean"
    or "cls"; normalize: L2-normalise the pooled vector before the head (sentence-transformers'
    Normalize module)."""

    model_type = "fedpriv-pooled-encoder"

    def __init__(
        self,
        encoder: PretrainedConfig | dict[str, Any] | None = None,
        pooling: str = "mean",
        normalize: bool = False,
        **kwargs: Any,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if isinstance(encoder, dict):
            encoder = AutoConfig.for_model(**encoder)
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = normalize
        if encoder is not None:
            kwargs.setdefault("hidden_size", encoder.hidden_size)
        super().__init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if isinstance(self.encoder, PretrainedConfig):
            out["encoder"] = self.encoder.to_dict()
        return out


def pool_hidden(
    hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str, normalize: bool
) -> torch.Tensor:
    """[B, T, H] hidden states -> [B, H]: masked mean or the first (CLS) token, then L2 norm."""
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    else:
        pooled = hidden[:, 0]
    return nn.functional.normalize(pooled, p=2.0, dim=-1) if normalize else pooled


class PooledEncoderForSequenceClassification(PreTrainedModel):
    """encoder -> pool (mean/CLS, padding masked) -> optional L2 norm -> Linear(H, num_labels)."""

    config_class = PooledEncoderConfig
    base_model_prefix = "encoder"

    def __init__(self, config: PooledEncoderConfig) -> None:
        super().__init__(config)
        try:  # the encoder's own pooler is not used: leave it out where the architecture allows
            self.encoder = AutoModel.from_config(config.encoder, add_pooling_layer=False)
        except TypeError:
            self.encoder = AutoModel.from_config(config.encoder)
        self.classifier = nn.Linear(config.encoder.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if module is getattr(self, "classifier", None):
            std = getattr(self.config.encoder, "initializer_range", 0.02)
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        extra = {"token_type_ids": token_type_ids, "position_ids": position_ids}
        out = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            **{k: v for k, v in extra.items() if v is not None},
        )
        pooled = pool_hidden(
            out.last_hidden_state, attention_mask, self.config.pooling, self.config.normalize
        )
        logits = self.classifier(pooled)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
