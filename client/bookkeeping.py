"""Book-keeping per-example clipping (Bu et al. 2023): DP-SGD's clipped sum in ONE backward pass.

DP-SGD needs sum_i c_i grad_i with c_i = min(1, C / ||grad_i||) (C = max_grad_norm). Ghost
clipping (Opacus ``grad_sample_mode="ghost"``) runs backward twice: once for the norms, again on
the loss reweighted by c. Book-keeping runs it once. Forward hooks keep each layer's input a (the
tensor autograd keeps anyway); one backward pass computes only the gradients g of the layer
outputs (``torch.autograd.grad`` w.r.t. their autograd edges: no weight gradient is computed); the
per-example norms come from (a, g) layer by layer; each layer's clipped sum is one product:

    Linear    ||grad_i W||^2 = sum_{t,s} (a_it . a_is)(g_it . g_is)  (ghost norm, [T, T] per
              example) or ||g_i^T a_i||_F^2 (per-example gradient instantiated), whichever costs
              fewer operations (T (p + d) vs p d); clipped sum = g^T diag(c) a, one matrix product.
    Embedding ||grad_i||^2 = sum_{t,s} [id_it == id_is] (g_it . g_is) (token-index collisions);
              clipped sum = rows of c * g added at their token ids (padding_idx gets none, as
              in torch).
    others    per-example gradients from Opacus's grad-sampler registry (LayerNorm: [B, d]);
              clipped sum = sum_i c_i grad_i.

Noise sigma*C, the step (``DPOptimizerFastGradientClipping``) and Poisson sampling with rate q
(``DPDataLoader``) stay Opacus's: the mechanism, so the accounting, is ghost clipping's.
Our own because no maintained library does it: FastDP (Bu et al.'s code) is pinned to old torch
and Opacus implements ghost clipping only.

Over 300 lines because it is one algorithm whose parts (hooks that keep activations and output
gradients, per-layer norms, the clipped weighted products) only make sense read together.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from opacus.data_loader import DPDataLoader
from opacus.grad_sample import GradSampleHooks
from opacus.grad_sample.gsm_base import AbstractGradSampleHooks
from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.validators import ModuleValidator
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.utils.data import DataLoader

# Opacus's clip factor, exactly: c_i = min(1, C / (||grad_i|| + 1e-6)).
_CLIP_EPS = 1e-6


@dataclass
class _Capture:
    """One layer's forward call: its inputs (detached: the same storage autograd keeps) and the
    autograd edge of its output (what the backward pass differentiates with respect to; the
    output tensor itself may be freed)."""

    name: str
    module: nn.Module
    inputs: list[torch.Tensor]
    edge: GradientEdge
    versions: tuple[int, ...]


Grams = dict[tuple, torch.Tensor]  # activation Gram matrices a a^T of one batch, by storage
Grads = dict[nn.Parameter, torch.Tensor]  # per parameter: a clipped sum, or per-example grads


def _direct_trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


def _per_example(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(len(x), -1, x.shape[-1])


def _gram(x: torch.Tensor) -> torch.Tensor:
    """x x^T per example: [B, T, T] from [B, T, d]."""
    return torch.bmm(x, x.transpose(1, 2))


def _frobenius(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """<left_i, right_i>_F per example, as float32 [B]."""
    return (left * right).sum((1, 2)).clamp(min=0).float()


def _scaled(g: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
    return g * clip.to(g.dtype).view(-1, *([1] * (g.dim() - 1)))


def _linear_norms(
    module: nn.Linear, a: torch.Tensor, g: torch.Tensor, grams: Grams
) -> tuple[torch.Tensor, None]:
    """Squared per-example norms of a Linear's weight and bias gradients on [B, ..., d]; the
    activation Gram matrix is shared by the layers that read the same input (query, key,
    value)."""
    key = (a.data_ptr(), tuple(a.shape), a.stride())
    a, g = _per_example(a).to(g.dtype), _per_example(g)
    steps, d, p = a.shape[1], a.shape[-1], g.shape[-1]
    squared = torch.zeros(len(g), dtype=torch.float32, device=g.device)
    if module.weight.requires_grad:
        if steps == 1:
            squared += (a.square().sum((1, 2)) * g.square().sum((1, 2))).float()
        elif steps * (p + d) < p * d:  # ghost norm: [B, T, T] Gram matrices
            if key not in grams:
                grams[key] = _gram(a)
            squared += _frobenius(grams[key], _gram(g))
        else:  # instantiate the [B, p, d] per-example gradients
            squared += torch.bmm(g.transpose(1, 2), a).square().sum((1, 2)).float()
    if module.bias is not None and module.bias.requires_grad:
        squared += g.sum(1).square().sum(1).float()
    return squared, None


def _linear_sum(
    module: nn.Linear, a: torch.Tensor, g: torch.Tensor, clip: torch.Tensor, _: None
) -> Grads:
    """sum_i c_i grad_i of a Linear: weight g^T diag(c) a (c scales the narrower of g and a),
    bias sum_i c_i sum_t g_it."""
    a = a.to(g.dtype)
    out = {}
    if module.weight.requires_grad:
        if g.shape[-1] <= a.shape[-1]:
            g_rows, a_rows = _scaled(g, clip).reshape(-1, g.shape[-1]), a.reshape(-1, a.shape[-1])
        else:
            g_rows, a_rows = g.reshape(-1, g.shape[-1]), _scaled(a, clip).reshape(-1, a.shape[-1])
        out[module.weight] = g_rows.t() @ a_rows
    if module.bias is not None and module.bias.requires_grad:
        out[module.bias] = clip.to(g.dtype) @ _per_example(g).sum(1)
    return out


def _embedding_rows(module: nn.Embedding, ids: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Output gradients with the padding_idx positions zeroed (torch gives that row no grad)."""
    if module.padding_idx is None:
        return g
    return g.masked_fill((ids == module.padding_idx).unsqueeze(-1), 0.0)


def _embedding_norms(
    module: nn.Embedding, ids: torch.Tensor, g: torch.Tensor, _: Grams
) -> tuple[torch.Tensor, None]:
    """||grad_i||^2 = sum_{t,s} [id_it == id_is] (g_it . g_is): positions that look up the same
    row add up (a ghost norm; Opacus's sort-based sampler is slower on CPU)."""
    rows = _per_example(_embedding_rows(module, ids, g))
    ids = ids.reshape(len(ids), -1)
    same = (ids.unsqueeze(2) == ids.unsqueeze(1)).to(rows.dtype)
    return _frobenius(same, _gram(rows)), None


def _embedding_sum(
    module: nn.Embedding, ids: torch.Tensor, g: torch.Tensor, clip: torch.Tensor, _: None
) -> Grads:
    rows = _scaled(_embedding_rows(module, ids, g), clip)
    grad = torch.zeros_like(module.weight, dtype=g.dtype)
    grad.index_add_(0, ids.reshape(-1), rows.reshape(-1, g.shape[-1]))
    return {module.weight: grad}


def _sampled_norms(
    module: nn.Module, inputs: list[torch.Tensor], g: torch.Tensor, _: Grams
) -> tuple[torch.Tensor, Grads]:
    """Per-example gradients from Opacus's grad sampler for the layer type (kept for the sum:
    B x the layer's parameters)."""
    grad_sampler = GradSampleHooks.GRAD_SAMPLERS[type(module)]
    per_example = {p: gs for p, gs in grad_sampler(module, inputs, g).items() if p.requires_grad}
    squared = sum(gs.reshape(len(gs), -1).float().square().sum(1) for gs in per_example.values())
    return squared, per_example


def _sampled_sum(
    module: nn.Module,
    inputs: list[torch.Tensor],
    g: torch.Tensor,
    clip: torch.Tensor,
    per_example: Grads,
) -> Grads:
    return {p: torch.einsum("b,b...->...", clip.to(gs.dtype), gs) for p, gs in per_example.items()}


# layer type -> (squared per-example norms and what the sum may reuse, clipped sum); both from
# the layer's input and output gradient. Other layer types: Opacus's grad samplers.
RULES: dict[type[nn.Module], tuple[Callable, Callable]] = {
    nn.Linear: (_linear_norms, _linear_sum),
    nn.Embedding: (_embedding_norms, _embedding_sum),
}


def _check_layer(name: str, module: nn.Module) -> None:
    if type(module) in RULES or type(module) in GradSampleHooks.GRAD_SAMPLERS:
        if isinstance(module, nn.Embedding) and (
            module.max_norm is not None or module.sparse or module.scale_grad_by_freq
        ):
            raise NotImplementedError(
                f"book-keeping clipping: embedding {name!r} uses max_norm, sparse or "
                "scale_grad_by_freq, which it does not support; use grad-sample-mode 'hooks'"
            )
        return
    supported = sorted({t.__name__ for t in (*RULES, *GradSampleHooks.GRAD_SAMPLERS)})
    raise NotImplementedError(
        f"book-keeping clipping has no rule for layer {name!r} ({type(module).__name__}) with "
        f"trainable parameters; supported: {supported}. Use grad-sample-mode 'ghost' or 'hooks'"
    )


def trainable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules holding trainable parameters directly; NotImplementedError names the first
    one book-keeping cannot clip (no rule, or a parameter shared by two modules)."""
    layers = [(n, m) for n, m in model.named_modules() if _direct_trainable(m)]
    owners: dict[int, str] = {}
    for name, module in layers:
        _check_layer(name, module)
        for p in _direct_trainable(module):
            if id(p) in owners:
                raise NotImplementedError(
                    f"book-keeping clipping: {name!r} and {owners[id(p)]!r} share a parameter "
                    "(tied weights); use grad-sample-mode 'hooks'"
                )
            owners[id(p)] = name
    return layers


def supports(model: nn.Module) -> bool:
    """Whether book-keeping can clip every trainable parameter of ``model``."""
    try:
        trainable_layers(model)
    except NotImplementedError:
        return False
    return True


class BookkeepingHooks(AbstractGradSampleHooks):
    """Forward hooks on the trainable layers of ``model`` (no wrapper: state_dict keys stay
    plain); ``clip_backward(losses)`` writes sum_i c_i grad_i into each ``p.grad``.

    max_grad_norm: C. ``per_sample_gradient_norms`` holds the last batch's ||grad_i|| (not
    private: for tests and debugging only, as in Opacus).
    """

    def __init__(self, model: nn.Module, max_grad_norm: float) -> None:
        super().__init__(model, batch_first=True, loss_reduction="mean")
        self.max_grad_norm = max_grad_norm
        self.layers = trainable_layers(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.per_sample_gradient_norms: torch.Tensor | None = None
        self._names = {id(m): n for n, m in self.layers}
        self._captured: list[_Capture] = []
        self._handles = [m.register_forward_hook(self._capture) for _, m in self.layers]

    def _capture(self, module: nn.Module, inputs: tuple, output: object) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        name = self._names[id(module)]
        if not isinstance(output, torch.Tensor) or not output.requires_grad:
            raise TypeError(f"book-keeping clipping: layer {name!r} gave no differentiable tensor")
        if any(c.module is module for c in self._captured):
            raise NotImplementedError(
                f"book-keeping clipping: layer {name!r} ran twice in one forward pass (weight "
                "sharing); use grad-sample-mode 'hooks'"
            )
        tensors = [t.detach() for t in inputs if isinstance(t, torch.Tensor)]
        versions = tuple(t._version for t in tensors)
        edge = get_gradient_edge(output)
        self._captured.append(_Capture(name, module, tensors, edge, versions))

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._captured = []

    def clip_backward(self, losses: torch.Tensor) -> None:
        """One backward pass of sum_i loss_i (``losses``: [B] per-example losses) that writes
        each trainable parameter's clipped sum sum_i c_i grad_i into ``p.grad``.

        Memory: the layers' inputs and output gradients are held until their sum is taken
        (a layer with instantiated per-example gradients keeps those instead)."""
        captured, self._captured = self._captured, []
        for c in captured:
            if tuple(t._version for t in c.inputs) != c.versions:
                raise RuntimeError(
                    f"book-keeping clipping: the input of layer {c.name!r} was changed in place "
                    "after it ran; use grad-sample-mode 'ghost'"
                )
        edges = [c.edge for c in captured]
        grads = list(torch.autograd.grad(losses.sum(), edges, allow_unused=True))
        batch = len(losses)
        squared = torch.zeros(batch, dtype=torch.float32, device=losses.device)
        grams: Grams = {}
        kept: list[Grads | None] = []
        for i, (c, g) in enumerate(zip(captured, grads, strict=True)):
            if g is None:  # the loss does not depend on this layer
                kept.append(None)
                continue
            if g.shape[0] != batch:
                raise ValueError(
                    f"book-keeping clipping: layer {c.name!r} output has batch size "
                    f"{g.shape[0]}, the loss has {batch}: inputs must be batch-first"
                )
            layer_squared, saved = self._rule(c.module)[0](c.module, self._input(c), g, grams)
            squared += layer_squared
            kept.append(saved)
            if saved is not None:  # per-example gradients replace the output gradient
                grads[i] = None
                c.inputs = []
        del grams
        norms = squared.sqrt()
        self.per_sample_gradient_norms = norms
        clip = (self.max_grad_norm / (norms + _CLIP_EPS)).clamp(max=1.0)
        for i, c in enumerate(captured):
            if grads[i] is None and kept[i] is None:
                continue
            sum_fn = self._rule(c.module)[1]
            for p, grad in sum_fn(c.module, self._input(c), grads[i], clip, kept[i]).items():
                p.grad = grad if p.grad is None else p.grad + grad
            grads[i], kept[i], c.inputs = None, None, []  # free as we go
        for p in self.params:  # a layer the batch never reached: its gradient is 0
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    @staticmethod
    def _rule(module: nn.Module) -> tuple[Callable, Callable]:
        return RULES.get(type(module), (_sampled_norms, _sampled_sum))

    @staticmethod
    def _input(c: _Capture) -> torch.Tensor | list[torch.Tensor]:
        """The input tensor (book-keeping rules) or the inputs list (Opacus's grad samplers)."""
        return c.inputs[0] if type(c.module) in RULES and c.inputs else c.inputs


class BookkeepingLoss:
    """The batch loss as the training loop uses it: ``backward()`` runs the one clipping
    backward pass; ``item()`` is the mean per-example loss."""

    def __init__(self, losses: torch.Tensor, hooks: BookkeepingHooks) -> None:
        self.losses = losses
        self._hooks = hooks

    def backward(self) -> None:
        self._hooks.clip_backward(self.losses)

    def item(self) -> float:
        return self.losses.detach().mean().item()


class BookkeepingCriterion:
    """Wraps a criterion with a ``reduction`` attribute (torch's losses, TokenCrossEntropy):
    per-example losses ("none"), returned as a ``BookkeepingLoss``."""

    def __init__(self, criterion: nn.Module, hooks: BookkeepingHooks) -> None:
        if not hasattr(criterion, "reduction"):
            raise TypeError(
                f"book-keeping clipping needs per-example losses: {type(criterion).__name__} "
                "has no 'reduction' attribute to set to 'none'"
            )
        self.criterion = copy.copy(criterion)
        self.criterion.reduction = "none"
        self._hooks = hooks

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> BookkeepingLoss:
        losses = self.criterion(logits, labels)
        if losses.dim() != 1 or len(losses) != len(labels):
            raise ValueError(
                f"book-keeping clipping needs one loss per example ([{len(labels)}]), got "
                f"shape {list(losses.shape)}"
            )
        return BookkeepingLoss(losses, self._hooks)


def make_private_bookkeeping(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    loader: DataLoader,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    noise_generator: torch.Generator | None,
) -> tuple[BookkeepingHooks, DPOptimizerFastGradientClipping, BookkeepingCriterion, DPDataLoader]:
    """What ``PrivacyEngine.make_private(grad_sample_mode="ghost", wrap_model=False)`` returns,
    with book-keeping in place of ghost clipping: hooks, Opacus's DP optimizer (noise
    N(0, sigma^2 C^2) on the clipped sum, divided by the expected batch size q n), the criterion
    wrapper whose ``backward()`` clips, and Opacus's Poisson loader with q = 1 / len(loader)."""
    ModuleValidator.validate(model, strict=True)  # as make_private does (e.g. no BatchNorm)
    hooks = BookkeepingHooks(model, max_grad_norm)
    dp_loader = DPDataLoader.from_data_loader(loader)
    sample_rate = 1 / len(dp_loader)
    dp_optimizer = DPOptimizerFastGradientClipping(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=int(len(dp_loader.dataset) * sample_rate),
        loss_reduction="mean",
        generator=noise_generator,
    )
    return hooks, dp_optimizer, BookkeepingCriterion(criterion, hooks), dp_loader
