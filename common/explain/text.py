"""Token attributions of a sequence classifier: Captum's layer integrated gradients on the
input embeddings.

For text x with token embeddings e(x) and baseline x' (every token but [CLS]/[SEP]/padding
replaced by [PAD]), token i's attribution towards class c is
    a_i = sum_h (e_ih(x) - e_ih(x')) * int_0^1 d f_c(e(x') + t (e(x) - e(x'))) / d e_ih dt,
with f_c = logit_c - logsumexp_{k != c} logit_k (the log-odds of c; for two classes
logit_c - logit_other). Completeness: sum_i a_i = f_c(x) - f_c(x'); Captum's convergence delta is
the Gauss-Legendre quadrature's error on that sum. A batch whose |delta| exceeds
``tolerance * |f_c(x) - f_c(x')|`` is recomputed with twice the steps (up to MAX_STEPS): a model
that switches sharply along the path needs more points.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Progress = Callable[[int, int], None]

STEPS = 50
MAX_STEPS = 800
TOLERANCE = 0.02
BATCH = 4


@dataclass(frozen=True)
class TokenAttribution:
    """One text's attribution towards class ``target``: ``tokens`` (word pieces, special tokens
    included), ``attributions`` (one per token), ``output_difference`` f_c(x) - f_c(x'), and
    Captum's convergence ``delta`` = sum(attributions) - output_difference; ``steps``: the
    integration steps used."""

    tokens: list[str]
    attributions: list[float]
    target: int
    output_difference: float
    delta: float
    steps: int


def margins(logits: torch.Tensor) -> torch.Tensor:
    """(B, C) log-odds of each class: logit_c - logsumexp_{k != c} logit_k."""
    c = logits.shape[-1]
    others = logits.unsqueeze(1).expand(-1, c, -1).clone()
    others[:, torch.arange(c), torch.arange(c)] = float("-inf")
    return logits - torch.logsumexp(others, dim=-1)


def encode(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask (and token_type_ids) padded to the longest text."""
    return dict(
        tokenizer(
            list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
    )


def predict(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    batch: int = 32,
) -> np.ndarray:
    """(n, C) class probabilities of ``texts``."""
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            enc = encode(tokenizer, texts[start : start + batch], max_length)
            out.append(torch.softmax(model(**enc).logits.double(), dim=-1).numpy())
    return np.concatenate(out)


def baseline_ids(input_ids: torch.Tensor, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """``input_ids`` with every token that is not special replaced by the pad token."""
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    keep = torch.isin(input_ids, special)
    return torch.where(keep, input_ids, torch.full_like(input_ids, tokenizer.pad_token_id))


def token_attributions(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    targets: Sequence[int],
    *,
    max_length: int = 64,
    n_steps: int = STEPS,
    tolerance: float = TOLERANCE,
    progress: Progress | None = None,
) -> list[TokenAttribution]:
    """Layer integrated gradients of f_target on ``model``'s input embeddings, one per text
    (``n_steps`` steps, doubled while a text's |delta| > tolerance * |output difference|)."""
    from captum.attr import LayerIntegratedGradients

    if len(texts) != len(targets):
        raise ValueError(f"{len(texts)} texts but {len(targets)} targets")
    model.eval()

    def forward(
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return margins(model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits)

    explainer = LayerIntegratedGradients(forward, model.get_input_embeddings())
    results: list[TokenAttribution] = []
    for start in range(0, len(texts), BATCH):
        enc = encode(tokenizer, texts[start : start + BATCH], max_length)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        args = (mask, enc["token_type_ids"]) if "token_type_ids" in enc else (mask,)
        target = [int(t) for t in targets[start : start + BATCH]]
        with torch.no_grad():
            f_x = forward(ids, *args)
            f_b = forward(baseline_ids(ids, tokenizer), *args)
        difference = (f_x - f_b)[torch.arange(len(ids)), target]
        steps = n_steps
        while True:
            attributions, delta = explainer.attribute(
                ids,
                baselines=baseline_ids(ids, tokenizer),
                target=target,
                additional_forward_args=args,
                n_steps=steps,
                return_convergence_delta=True,
            )
            converged = bool((delta.abs() <= tolerance * difference.abs() + 1e-4).all())
            if converged or steps * 2 > MAX_STEPS:
                break
            steps *= 2
        per_token = attributions.sum(dim=-1).detach()
        for row in range(len(ids)):
            n = int(mask[row].sum())
            results.append(
                TokenAttribution(
                    tokens=tokenizer.convert_ids_to_tokens(ids[row, :n].tolist()),
                    attributions=[float(a) for a in per_token[row, :n]],
                    target=target[row],
                    output_difference=float(difference[row]),
                    delta=float(delta[row]),
                    steps=steps,
                )
            )
        if progress is not None:
            progress(min(start + BATCH, len(texts)), len(texts))
    return results


def token_table(
    explained: Sequence[TokenAttribution], special_tokens: Sequence[str], min_count: int = 2
) -> dict[int, list[tuple[str, float, int]]]:
    """Per target class: (token, mean attribution, occurrences) of every token seen at least
    ``min_count`` times in texts attributed to that class, highest mean first."""
    sums: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    skip = set(special_tokens)
    for e in explained:
        for token, a in zip(e.tokens, e.attributions, strict=True):
            if token not in skip:
                sums[e.target][token].append(a)
    return {
        c: sorted(
            ((t, float(np.mean(v)), len(v)) for t, v in seen.items() if len(v) >= min_count),
            key=lambda row: -row[1],
        )
        for c, seen in sorted(sums.items())
    }


def token_importance(
    explained: Sequence[TokenAttribution], special_tokens: Sequence[str]
) -> dict[str, float]:
    """Mean |attribution| of each token over all its occurrences (any class)."""
    seen: dict[str, list[float]] = defaultdict(list)
    skip = set(special_tokens)
    for e in explained:
        for token, a in zip(e.tokens, e.attributions, strict=True):
            if token not in skip:
                seen[token].append(abs(a))
    return {t: float(np.mean(v)) for t, v in seen.items()}
