"""Video-DPO for rectified flow: the Diffusion-DPO objective on velocity errors (Flow-DPO, 2025).

For a preference pair (chosen w, rejected l) with the same caption, drawn at the same time t and the
same noise x0, with e(model, x1) = || v_model(x_t, t) - (x1 - x0) ||^2 (mean over the latent):

    d      = [e(policy, w) - e(ref, w)] - [e(policy, l) - e(ref, l)]
    loss   = -log sigmoid(-beta / 2 * d)
    margin = -beta / 2 * d        (the implicit reward margin; > 0 = the pair is ranked right)

The reference is the frozen starting policy (a checkpoint's export, no gradients). At the start
policy == reference, so d = 0, loss = log 2 and the margin is 0. beta sets how far the policy may
move from the reference: as beta -> 0 the loss tends to log 2 and its gradient to beta / 4 times the
gradient of [e(policy, w) - e(policy, l)] (the reference drops out: plain "fit chosen better than
rejected", with no pull back to the reference); a large beta saturates the sigmoid once a pair is
ranked right, so well-ranked pairs stop pushing.

In `vjp train` (`train.objective: dpo`, training.train.build_objective):
pair shards from `vjp pairs` feed (chosen, rejected, prompt); the step's generator draws one t and
one noise per pair, shared by both sides; the reference is built by `build_reference` (frozen,
sharded like the policy under FSDP2) and the step logs the loss, `reward_margin` (mean margin),
`reward_accuracy` (share of pairs with a positive margin) and the policy's flow losses on both sides.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

import torch

from training.config import TrainConfig
from training.parallel import Dist
from training.step import Micro, velocity


@dataclass
class DPOResult:
    loss: torch.Tensor  # scalar, with gradients to the policy
    margin: torch.Tensor  # [B] implicit reward margin, detached
    err_chosen: torch.Tensor  # [B] the policy's flow error on chosen, detached
    err_rejected: torch.Tensor

    @property
    def accuracy(self) -> float:  # share of pairs with margin > 0
        return float((self.margin > 0).float().mean())

    @property
    def policy_chosen(self) -> float:  # mean flow loss of the policy on chosen
        return float(self.err_chosen.mean())

    @property
    def policy_rejected(self) -> float:
        return float(self.err_rejected.mean())

    def metrics(self) -> dict[str, torch.Tensor]:
        """What the trainer logs per step (tensors: no device sync per micro-batch)."""
        return {
            "reward_margin": self.margin.mean(),
            "reward_accuracy": (self.margin > 0).float().mean(),
            "flow_loss_chosen": self.err_chosen.mean(),
            "flow_loss_rejected": self.err_rejected.mean(),
        }


@dataclass
class PairMicro:
    """A pair micro-batch: the chosen side as a flow Micro (its x0 and t are the pair's) and the
    rejected latents."""

    chosen: Micro
    rejected_x1: torch.Tensor


def velocity_errors(
    model: torch.nn.Module, m: Micro, attention: str | None, dtype: torch.dtype, autocast: bool
) -> torch.Tensor:
    """[B] per-sample flow-matching error ||v - (x1 - x0)||^2, averaged over the latent."""
    v = velocity(model, m, attention, dtype, autocast).float()
    return ((v - (m.x1.float() - m.x0.float())) ** 2).flatten(1).mean(1)


def pair_micro(chosen: Micro, rejected_x1: torch.Tensor) -> Micro:
    """The rejected side of a pair: the same caption, noise x0 and time t as the chosen side."""
    return Micro(rejected_x1, chosen.emb, chosen.mask, chosen.x0, chosen.t)


def dpo_loss(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    chosen: Micro,
    rejected_x1: torch.Tensor,
    beta: float,
    attention: str | None = None,
    dtype: torch.dtype = torch.float32,
    autocast: bool = False,
) -> DPOResult:
    """The Flow-DPO loss of a pair batch (module docstring); the reference runs without gradients."""
    if beta <= 0:
        raise ValueError(f"dpo.beta must be > 0, got {beta}")
    rejected = pair_micro(chosen, rejected_x1)
    # chosen and rejected in one forward: the same t and noise, half the kernel launches
    both = Micro(
        *(torch.cat([getattr(chosen, k), getattr(rejected, k)]) for k in ("x1", "emb", "mask", "x0", "t"))
    )
    err = velocity_errors(policy, both, attention, dtype, autocast)
    with torch.no_grad():
        ref = velocity_errors(reference, both, attention, dtype, autocast)
    b = chosen.x1.shape[0]
    d = (err[:b] - ref[:b]) - (err[b:] - ref[b:])
    logits = -0.5 * beta * d
    loss = -torch.nn.functional.logsigmoid(logits).mean()
    return DPOResult(loss, logits.detach(), err[:b].detach(), err[b:].detach())


def dpo_loss_fn(reference: torch.nn.Module, beta: float) -> Any:
    """The trainer's loss function (training.step.LossFn) of `objective: dpo`."""

    def loss(tr: Any, m: PairMicro) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        r = dpo_loss(tr.model, reference, m.chosen, m.rejected_x1, beta, tr.attention, tr.dtype, tr.autocast)
        return r.loss, r.metrics()

    return loss


def build_reference(
    cfg: TrainConfig,
    text_dim: int,
    latent_shape: tuple[int, int, int, int],
    policy_config: dict[str, Any],
    d: Dist,
    spatial_compression: int | None = None,
) -> torch.nn.Module:
    """The frozen reference, wrapped like the policy (parallel.parallelize_frozen: FSDP2 on the same
    mesh, same precision), no gradients, no optimizer state.

    dpo.reference null: the run's starting weights, rebuilt the way the policy starts on a fresh run
    (the seeded init or model.transformer, then model.init_from's trained weights), so a resumed run
    gets the same reference back without storing it. A path: that checkpoint's export (EMA, or raw
    with dpo.reference_weights), which must have the policy's architecture.
    """
    from training.checkpoint import load_model_weights, resolve_checkpoint
    from training.modeling import build_transformer
    from training.parallel import parallelize_frozen

    if cfg.dpo.reference is None:
        torch.manual_seed(cfg.seed)  # build_model's seed: the policy's initial weights
        model = build_transformer(cfg, text_dim, latent_shape, spatial_compression)
    else:
        model = load_reference(cfg.dpo.reference, cfg.dpo.reference_weights)
        own = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
        want = {k: v for k, v in policy_config.items() if not k.startswith("_")}
        diff = sorted(k for k in set(own) | set(want) if own.get(k) != want.get(k))
        if diff:
            raise ValueError(
                f"dpo.reference {cfg.dpo.reference}: its transformer differs from the policy's in {diff[:5]}"
            )
    model = parallelize_frozen(model.to(d.device), cfg.parallel, d)
    if cfg.dpo.reference is None and cfg.model.init_from:
        so = cfg.checkpoint.storage_options
        load_model_weights(resolve_checkpoint(cfg.model.init_from, so), model, so)
    return model


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The reference as a frozen copy of the starting policy (same weights, eval, no gradients)."""
    ref = copy.deepcopy(model)
    ref.eval().requires_grad_(False)
    return ref


def load_reference(path: str, weights: str = "ema", device: str | torch.device = "cpu") -> torch.nn.Module:
    """The reference from a checkpoint (a step folder, a run folder = its latest, or an export/):
    its exported EMA weights (or raw: export/raw/), frozen, with the trainer's masked attention."""
    from training.checkpoint import RAW
    from training.modeling import load_transformer
    from training.sample import resolve_export

    folder = resolve_export(path)
    if weights == "raw":
        folder = os.path.join(folder, RAW)
    model = load_transformer(os.path.join(folder, "transformer")).to(device)
    model.eval().requires_grad_(False)
    return model


def dpo_step(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    chosen: Micro,
    rejected_x1: torch.Tensor,
    beta: float,
    grad_clip: float = 1.0,
    attention: str | None = None,
) -> DPOResult:
    """One optimizer step of the policy on a pair batch (single process)."""
    r = dpo_loss(policy, reference, chosen, rejected_x1, beta, attention)
    r.loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return r
