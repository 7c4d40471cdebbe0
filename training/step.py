"""One optimizer step and the parts it needs, apart from data: a micro-batch, its loss, the
trainer's components (model, optimizer, schedule, EMA) and their factories.

training/train.py feeds it from the shard stream; benchmarks/train_bench.py and the tests feed it
fixed tensors. Nothing here touches the data stack, so the GPU check needs only torch, diffusers
and transformers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from training import flow
from training.config import FlowConfig, TrainConfig
from training.ema import EMA
from training.metrics import MatmulParams, matmul_params
from training.modeling import attention_kwargs, build_transformer, resolve_attention
from training.parallel import Dist, compute_dtype, full_tensor, parallelize


def lr_lambda(cfg: TrainConfig) -> Any:
    o = cfg.optim

    def f(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - o.warmup_steps) / max(1, cfg.steps - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


@dataclass
class Micro:
    """One micro-batch, ready for the model: x1 [B, F, C, H, W], text [B, L, D] + mask [B, L],
    noise x0 like x1 and times t [B] (0 = noise, 1 = data)."""

    x1: torch.Tensor
    emb: torch.Tensor
    mask: torch.Tensor
    x0: torch.Tensor
    t: torch.Tensor

    def split(self, n: int) -> list[Micro]:
        """n equal slices along the batch (the test that accumulation equals one larger batch)."""
        parts = [torch.chunk(getattr(self, k), n) for k in ("x1", "emb", "mask", "x0", "t")]
        return [Micro(*p) for p in zip(*parts, strict=True)]


def make_micro(
    x1: torch.Tensor,
    emb: torch.Tensor,
    mask: torch.Tensor,
    flow_cfg: FlowConfig,
    alpha: float,
    gen: torch.Generator,
) -> Micro:
    """Draw the flow's noise and times for a prepared batch (from the step's generator)."""
    x0 = torch.randn(x1.shape, generator=gen).to(x1.device)
    t = flow.sample_t(x1.shape[0], flow_cfg, alpha, gen).to(x1.device)
    return Micro(x1, emb, mask, x0, t)


def micro_loss(
    model: torch.nn.Module, m: Micro, attention: str | None, dtype: torch.dtype, autocast: bool
) -> torch.Tensor:
    """The flow-matching loss of one micro-batch; attention = flex | sdpa (padding masked) or None."""
    return flow.flow_loss(velocity(model, m, attention, dtype, autocast), m.x0, m.x1)


def velocity(
    model: torch.nn.Module, m: Micro, attention: str | None, dtype: torch.dtype, autocast: bool
) -> torch.Tensor:
    """The model's velocity at (x_t, t) of a micro-batch [B, F, C, H, W] (also training.dpo's)."""
    f, _, h, w = m.x1.shape[1:]
    p = model.config.patch_size
    kwargs = attention_kwargs(attention, m.mask, f * (h // p) * (w // p)) if attention else None
    ctx = torch.autocast(m.x1.device.type, dtype=dtype) if autocast else nullcontext()
    with ctx:
        v = model(
            hidden_states=flow.interpolate(m.x0, m.x1, m.t).to(dtype),
            encoder_hidden_states=m.emb.to(dtype),
            timestep=flow.model_timestep(m.t),
            attention_kwargs=kwargs,
            return_dict=False,
        )[0]
    return v


# ---- components --------------------------------------------------------------------------------
@dataclass
class Trainer:
    """The parts one optimizer step needs (built by the factories below)."""

    d: Dist
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: EMA
    dtype: torch.dtype
    attention: str | None  # flex | sdpa, None = padding attends (text.mask_padding false)
    grad_clip: float

    @property
    def fsdp(self) -> bool:
        return hasattr(self.model, "set_requires_gradient_sync")

    @property
    def autocast(self) -> bool:  # FSDP casts through its mixed-precision policy instead
        return self.dtype != torch.float32 and not self.fsdp


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    finite: bool
    lr: float
    metrics: dict[str, float] = field(default_factory=dict)  # the objective's own (DPO: margin, ...)


# An objective's loss of one micro-batch: (scalar loss with gradients, detached scalar metrics).
LossFn = Callable[["Trainer", Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def flow_loss_fn(tr: Trainer, m: Micro) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The rectified-flow objective (`train.objective: flow`): no metrics beside the loss."""
    return micro_loss(tr.model, m, tr.attention, tr.dtype, tr.autocast), {}


def train_step(
    tr: Trainer, micros: Iterable[Any], n_micro: int, step: int, loss_fn: LossFn = flow_loss_fn
) -> StepResult:
    """One optimizer step over n_micro micro-batches (gradient accumulation; under FSDP only the last
    one reduce-scatters). A non-finite loss or gradient skips the update but advances the schedule.
    The objective's metrics are averaged over the micro-batches and the ranks (one all-reduce)."""
    loss_sum = torch.zeros((), device=tr.d.device)
    stats: dict[str, torch.Tensor] = {}
    for i, m in enumerate(micros):
        if tr.fsdp:
            tr.model.set_requires_gradient_sync(i == n_micro - 1)
        loss, extra = loss_fn(tr, m)
        (loss / n_micro).backward()
        loss_sum += loss.detach()
        for k, v in extra.items():
            stats[k] = stats.get(k, 0) + v.detach().float()
    grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(tr.model.parameters(), tr.grad_clip))
    loss_mean = tr.d.all_mean(loss_sum / n_micro)
    metrics: dict[str, float] = {}
    if stats:
        means = tr.d.all_mean(torch.stack([stats[k] for k in stats]).to(tr.d.device) / n_micro).tolist()
        metrics = dict(zip(stats, means, strict=True))
    finite = bool(torch.isfinite(loss_mean).item() and torch.isfinite(grad_norm).item())
    if finite:
        tr.optimizer.step()
        tr.ema.update(step + 1)
    tr.optimizer.zero_grad(set_to_none=True)
    lr = tr.scheduler.get_last_lr()[0]
    with warnings.catch_warnings():  # a skipped step still advances the schedule, on purpose
        warnings.simplefilter("ignore", UserWarning)
        tr.scheduler.step()
    return StepResult(float(loss_mean.item()), float(grad_norm.item()), finite, lr, metrics)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices only. Norm weights, biases (1-D), embedding tables and
    the patch/positional embeddings are not decayed (decaying them pulls scales and offsets to 0)."""
    no_decay_modules = {
        id(p)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Embedding) or "patch_embed" in name or "pos_embed" in name
        for p in m.parameters(recurse=False)
    }
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or id(p) in no_decay_modules else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    cfg: TrainConfig, model: torch.nn.Module
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        param_groups(model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps, foreach=True
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))


def build_model(
    cfg: TrainConfig,
    text_dim: int,
    latent_shape: tuple[int, int, int, int],
    d: Dist,
    spatial_compression: int | None = None,
) -> tuple[torch.nn.Module, dict[str, Any], MatmulParams]:
    """The DiT with the same initial weights on every rank, then AC, compile and FSDP.
    spatial_compression (pixels per latent cell) picks the patch size (modeling.transformer_config)."""
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank before FSDP shards them
    model = build_transformer(cfg, text_dim, latent_shape, spatial_compression)
    model_config, params = dict(model.config), matmul_params(model)
    model.train()
    return parallelize(model.to(d.device), cfg.parallel, d), model_config, params


def build_trainer(cfg: TrainConfig, model: torch.nn.Module, d: Dist) -> Trainer:
    dtype = compute_dtype(cfg.parallel, d.device)
    attention = resolve_attention(cfg.model.attention, d.device) if cfg.text.mask_padding else None
    if attention == "flex" and d.device.type != "cuda":
        raise ValueError("model.attention=flex trains on CUDA only (no FlexAttention backward on the CPU)")
    o = cfg.optim
    ema = EMA(model, o.ema_decay, o.ema_start_step, o.ema_warmup)
    optimizer, scheduler = build_optimizer(cfg, model)
    return Trainer(d, model, optimizer, scheduler, ema, dtype, attention, o.grad_clip)
