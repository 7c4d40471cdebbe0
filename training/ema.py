"""EMA of the trainable weights: fp32, one tensor per parameter, sharded exactly like it.

Under FSDP2 the parameters are DTensors, so `clone()` gives DTensors with the same placement:
each rank keeps the EMA of its own shard, updates it without communication, and
torch.distributed.checkpoint saves it like the model.
"""

from __future__ import annotations

import torch


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float, start_step: int = 0) -> None:
        self.decay, self.start_step = decay, start_step
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone().float() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After optimizer step `step` (1-based): copy until start_step, then lerp towards the weights."""
        live = [p.detach().float() if p.dtype != torch.float32 else p.detach() for p in self.params]
        if step <= self.start_step:
            torch._foreach_copy_(self.shadow, live)
        else:
            torch._foreach_lerp_(self.shadow, live, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.shadow, strict=True))

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Load the EMA weights into a (possibly sharded) model with the same parameter names."""
        own = dict(model.named_parameters())
        for name, t in zip(self.names, self.shadow, strict=True):
            own[name].copy_(t)
