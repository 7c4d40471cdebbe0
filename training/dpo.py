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

What this module is: the objective and one optimizer step over a pair batch (`dpo_step`), tested on
a tiny model with synthetic preferences (tests/test_dpo.py). Not yet wired into `vjp train`
(no `train.objective`, pair shards or FSDP-sharded reference): see the README.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch

from training.step import Micro, velocity


@dataclass
class DPOResult:
    loss: torch.Tensor  # scalar, with gradients to the policy
    margin: torch.Tensor  # [B] implicit reward margin, detached
    accuracy: float  # share of pairs with margin > 0
    policy_chosen: float  # mean flow loss of the policy on chosen (detached)
    policy_rejected: float


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
    margin = logits.detach()
    return DPOResult(
        loss,
        margin,
        float((margin > 0).float().mean()),
        float(err[:b].detach().mean()),
        float(err[b:].detach().mean()),
    )


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
