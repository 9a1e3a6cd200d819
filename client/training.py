"""Local training at a site: plain SGD, or DP-SGD with Opacus (Poisson sampling, clip, noise).

DP-SGD step (Abadi et al. 2016): every example joins the batch independently with probability
q (sample rate); each per-example gradient is clipped to L2 norm C (max_grad_norm); the clipped
sum gets Gaussian noise N(0, sigma^2 C^2 I) (sigma = noise_multiplier) and is divided by the
expected batch size q*n. Each step is one DP release; the ledger accounts for
``num_steps`` releases at (sigma, q) per call.

Over 300 lines because ``train_locally`` is the one place where a site's steps run, DP or not,
with Opacus's engine set up, the memory manager and the per-step bookkeeping side by side.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.grad_sample.gsm_base import AbstractGradSampleHooks
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch import nn
from torch.utils.data import DataLoader, Dataset

from client import bookkeeping
from common.config import GRAD_SAMPLE_MODES, OPTIMIZERS
from common.models.losses import TokenCrossEntropy
from common.privacy.sampling import sample_rate, steps_per_epoch

# "auto" uses book-keeping clipping above this many trainable parameters (full fine-tuning of a
# transformer: per-example gradients would cost B x params memory, ghost clipping two backward
# passes; book-keeping needs one) and hooks below it (LoRA, tabular: per-example gradients are
# small). Measured in docs/benchmarks.md (DP cost).
BOOKKEEPING_ABOVE_PARAMS = 1_000_000


@dataclass(frozen=True)
class DpSgdSettings:
    """noise_multiplier: sigma, noise std relative to the clip norm; max_grad_norm: C, the
    per-example gradient clip norm."""

    noise_multiplier: float
    max_grad_norm: float

    def __post_init__(self) -> None:
        if not self.noise_multiplier >= 0.0:
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if not self.max_grad_norm > 0.0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")


@dataclass(frozen=True)
class TrainResult:
    """What one call of ``train_locally`` did.

    loss: mean training loss over the examples seen; num_steps: optimizer steps taken (under
    Poisson sampling every batch counts, empty ones too: the number of DP releases);
    sample_rate: q; num_examples: n; noise_multiplier: sigma (0 without DP);
    max_grad_norm: C (0 without DP: no clipping); dp: whether DP-SGD was used; seconds: wall time;
    grad_sample_mode: how per-example gradients were clipped ("hooks", "ghost" or
    "bookkeeping"; "" without DP).
    """

    loss: float
    num_steps: int
    sample_rate: float
    num_examples: int
    noise_multiplier: float
    max_grad_norm: float
    dp: bool
    seconds: float
    grad_sample_mode: str = ""


def _limit_threads() -> None:
    """Use at most the CPU cores this process may run on, unless OMP_NUM_THREADS says otherwise."""
    if "OMP_NUM_THREADS" in os.environ or not hasattr(os, "sched_getaffinity"):
        return
    cores = len(os.sched_getaffinity(0))
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG (dropout) inside the block, restoring it afterwards."""
    if seed is None:
        yield
        return
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def _stream_seeds(seed: int | None) -> tuple[int | None, int | None]:
    """Independent seeds for the batch sampler and the DP noise, both derived from ``seed``."""
    if seed is None:
        return None, None
    sampling, noise = np.random.SeedSequence(seed % 2**64).generate_state(2)
    return int(sampling), int(noise)


def _generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()  # non-deterministic, from the OS
    else:
        generator.manual_seed(seed)
    return generator


def make_criterion(dataset: Dataset) -> nn.Module:
    """Cross-entropy per example: token-level (TokenCrossEntropy, with the dataset's public
    ``tag_weights`` when it has them) when a record's label is a sequence of tags, else torch's
    CrossEntropyLoss."""
    token_level = dataset[0][-1].dim() > 0
    if not token_level:
        return nn.CrossEntropyLoss()
    weights = getattr(dataset, "tag_weights", None)
    return TokenCrossEntropy(weight=None if weights is None else torch.as_tensor(weights))


HEAD_MODULES = ("classifier", "score")  # Hugging Face names of classification heads


def _make_optimizer(
    name: str, model: nn.Module, lr: float, head_lr: float | None
) -> torch.optim.Optimizer:
    """SGD or Adam over the trainable parameters; the classification head may get its own
    learning rate (``head_lr``): under DP noise a fresh head needs large steps while adapters
    inside the encoder need small ones."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head = [p for n, p in named if head_lr and any(h in n.split(".") for h in HEAD_MODULES)]
    rest = [p for n, p in named if not any(p is h for h in head)]
    groups = [{"params": rest, "lr": lr}] + ([{"params": head, "lr": head_lr}] if head else [])
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; known: {OPTIMIZERS}")


def _pick_grad_sample_mode(mode: str, model: nn.Module, params: list[nn.Parameter]) -> str:
    if mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"unknown grad_sample_mode {mode!r}; known: {GRAD_SAMPLE_MODES}")
    if mode != "auto":
        return mode
    if sum(p.numel() for p in params) <= BOOKKEEPING_ABOVE_PARAMS:
        return "hooks"
    return "bookkeeping" if bookkeeping.supports(model) else "ghost"


def _noise_only_step(optimizer: DPOptimizer, params: list[nn.Parameter]) -> None:
    """Poisson sampling drew no example: release noise alone (clipped sum = 0), as the
    accounting assumes. The model is not run (transformers cannot run an empty batch)."""
    for p in params:
        if isinstance(optimizer, DPOptimizerFastGradientClipping):
            p.grad = torch.zeros_like(p)
        else:
            p.grad_sample = p.new_zeros((0, *p.shape))
    optimizer.step()


def _make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    loader: DataLoader,
    dp: DpSgdSettings,
    mode: str,
    noise_generator: torch.Generator,
) -> tuple[AbstractGradSampleHooks, DPOptimizer, nn.Module, DataLoader]:
    """Opacus hooks on ``model`` itself (no wrapper, clean keys), a DP optimizer (clip to C,
    noise sigma*C), the criterion (ghost mode wraps it for its two backward passes, book-keeping
    for its one) and a Poisson-sampling loader with q = 1 / len(loader)."""
    if mode == "bookkeeping":
        return bookkeeping.make_private_bookkeeping(
            model,
            optimizer,
            criterion,
            loader,
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            noise_generator=noise_generator,
        )
    with warnings.catch_warnings():  # seeded noise is the caller's choice (see ``seed``)
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp")  # accounting is the ledger's job, not this one's
    private = engine.make_private(
        module=model,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=loader,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=mode,
        noise_generator=noise_generator,
        wrap_model=False,
    )
    if mode == "ghost":
        return private
    hooks, dp_optimizer, dp_loader = private
    return hooks, dp_optimizer, criterion, dp_loader


def _unhook(model: nn.Module, hooks: AbstractGradSampleHooks) -> None:
    """Remove Opacus's hooks and the attributes it left on modules and parameters."""
    hooks.cleanup()
    for module in model.modules():
        module.__dict__.pop("activations", None)
    for p in model.parameters():
        p.__dict__.pop("summed_grad", None)


def train_locally(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int,
    epochs: int,
    learning_rate: float,
    dp: DpSgdSettings | None,
    device: torch.device | str,
    seed: int | None,
    optimizer: str = "sgd",
    grad_sample_mode: str = "auto",
    max_steps: int | None = None,
    head_learning_rate: float | None = None,
    max_physical_batch_size: int | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``dataset`` (tuples ``(*inputs, label)``; ``model(*inputs)``
    gives logits) with cross-entropy, for ``epochs`` epochs of ``steps_per_epoch(n, B)`` steps.
    A label of one tag per token trains a token classifier (``TokenCrossEntropy``).

    dp: None trains without privacy (shuffled batches of B); DpSgdSettings(sigma, C) runs DP-SGD
        with Poisson sample rate q = ``sample_rate(n, B)``. The model is made private afresh on
        every call and unhooked afterwards, so its parameters and state_dict keys stay plain.
    seed: seeds batch sampling, DP noise and dropout. Under DP never reuse a seed across rounds
        (same seed = same batches and same noise, which voids the accounting): derive it from
        (run, round, site), or pass None for fresh randomness from the OS.
    grad_sample_mode: how per-example gradients are clipped: "ghost" (Opacus ghost clipping: no
        per-example gradients materialised, two backward passes), "bookkeeping" (one backward
        pass, ``client.bookkeeping``), "hooks" (Opacus per-example gradients), or "auto":
        book-keeping above ``BOOKKEEPING_ABOVE_PARAMS`` trainable parameters (ghost if the model
        has a layer book-keeping cannot clip), else hooks.
    head_learning_rate: learning rate of the classification head (None = ``learning_rate``).
    max_steps: if set, take exactly this many steps (each a Poisson draw at rate q) instead of
        ``epochs`` full passes; the privacy cost is then max_steps releases at (sigma, q).
    max_physical_batch_size: if set, a (logical) batch larger than this is run in chunks of at
        most this many examples whose gradients are accumulated into one step: Opacus's
        BatchMemoryManager under DP (clip per example in every chunk, noise once per logical
        batch: the same release), plain gradient accumulation without DP. Memory then scales
        with the chunk, not with B; the update is the same.
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot train on an empty dataset")
    if max_physical_batch_size is not None and max_physical_batch_size < 1:
        raise ValueError(f"max_physical_batch_size must be >= 1, got {max_physical_batch_size}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if batch_size < 1 or epochs < 1 or not learning_rate > 0:
        raise ValueError(
            f"need batch_size >= 1, epochs >= 1, learning_rate > 0; "
            f"got {batch_size}, {epochs}, {learning_rate}"
        )
    _limit_threads()
    device = torch.device(device)
    started = time.perf_counter()
    model.to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    mode = _pick_grad_sample_mode(grad_sample_mode, model, params)
    opt = _make_optimizer(optimizer, model, learning_rate, head_learning_rate)
    criterion = make_criterion(dataset)
    sampling_seed, noise_seed = _stream_seeds(seed)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=dp is None, generator=_generator(sampling_seed)
    )
    hooks = None
    if dp is not None:
        hooks, opt, criterion, loader = _make_private(
            model, opt, criterion, loader, dp, mode, _generator(noise_seed, device)
        )
    steps, seen, loss_sum = 0, 0, 0.0
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_seeded(seed, device))
            stack.enter_context(warnings.catch_warnings())
            # Opacus's hooks on a first layer whose input needs no grad: harmless, said per call
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            if dp is not None and max_physical_batch_size is not None:
                assert isinstance(opt, DPOptimizer)
                loader = stack.enter_context(
                    BatchMemoryManager(
                        data_loader=loader,
                        max_physical_batch_size=max_physical_batch_size,
                        optimizer=opt,
                    )
                )
            total = epochs * steps_per_epoch(n, batch_size) if max_steps is None else max_steps
            while steps < total:
                for batch in loader:
                    if steps >= total:
                        break
                    *inputs, labels = (t.to(device) for t in batch)
                    opt.zero_grad(set_to_none=True)
                    if len(labels) == 0:
                        _noise_only_step(opt, params)
                        steps += 1
                        continue
                    if dp is None:
                        batch_loss = _accumulate_plain(
                            model, criterion, inputs, labels, max_physical_batch_size
                        )
                    else:
                        loss = criterion(model(*inputs), labels)
                        loss.backward()
                        batch_loss = loss.item()
                    opt.step()
                    # under BatchMemoryManager a chunk that does not end its logical batch
                    # only clips and accumulates: the step (and the release) comes later
                    if not getattr(opt, "_is_last_step_skipped", False):
                        steps += 1
                    loss_sum += batch_loss * len(labels)
                    seen += len(labels)
    finally:
        if hooks is not None:
            opt.zero_grad(set_to_none=True)
            _unhook(model, hooks)
    return TrainResult(
        loss=loss_sum / seen if seen else float("nan"),
        num_steps=steps,
        sample_rate=sample_rate(n, batch_size),
        num_examples=n,
        noise_multiplier=dp.noise_multiplier if dp else 0.0,
        max_grad_norm=dp.max_grad_norm if dp else 0.0,
        dp=dp is not None,
        seconds=time.perf_counter() - started,
        grad_sample_mode=mode if dp is not None else "",
    )


def _accumulate_plain(
    model: nn.Module,
    criterion: nn.Module,
    inputs: list[torch.Tensor],
    labels: torch.Tensor,
    chunk: int | None,
) -> float:
    """Backward of the batch's mean loss, in chunks of at most ``chunk`` examples (gradient
    accumulation: each chunk's mean loss weighted by its share of the batch); returns the loss."""
    if chunk is None or len(labels) <= chunk:
        loss = criterion(model(*inputs), labels)
        loss.backward()
        return loss.item()
    total = 0.0
    for start in range(0, len(labels), chunk):
        part = slice(start, start + chunk)
        share = len(labels[part]) / len(labels)
        loss = criterion(model(*(t[part] for t in inputs)), labels[part]) * share
        loss.backward()
        total += loss.item()
    return total
