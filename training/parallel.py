"""Process group, device and the model's parallel wrapping (activation checkpointing, compile, FSDP2).

The same code runs under torchrun (env://), inside a Ray Train worker (the group already exists)
and as one plain process (no group). On CPU it uses gloo and fp32, which is how CI tests the
distributed path for real.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from training.config import ParallelConfig
from training.orphan import exit_with_parent, launched_by_torchrun


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # we created the group (and destroy it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_mean(self, x: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            x = x.clone()
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
            x /= self.world_size
        return x

    def close(self) -> None:
        if self.owns_group and self.distributed:
            dist.destroy_process_group()


def init_distributed(cfg: ParallelConfig) -> Dist:
    if launched_by_torchrun():
        exit_with_parent()  # torchrun's ranks outlive a SIGKILLed launcher otherwise
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if cuda else "gloo")
        dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
        owns = True
    if dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device, owns)
    return Dist(0, 1, 0, device, False)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every rank calls it), else the tensor itself."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def compute_dtype(cfg: ParallelConfig, device: torch.device) -> torch.dtype:
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def keep_norms_fp32(model: torch.nn.Module) -> int:
    """LayerNorms (adaLN, qk-norm, final) compute in fp32 under bf16: CogVideoX-2B is known to
    produce NaNs in bf16. diffusers' FP32LayerNorm has the same parameters, so names and state dicts
    do not change."""
    from diffusers.models.normalization import FP32LayerNorm

    n = 0
    for m in model.modules():
        if type(m) is torch.nn.LayerNorm:
            m.__class__ = FP32LayerNorm
            n += 1
    return n


def apply_activation_checkpointing(model: torch.nn.Module, every: int = 1) -> int:
    """Wrap every `every`-th transformer block in torch's checkpoint_wrapper (non-reentrant), in
    place in `transformer_blocks`: the checkpoint then sits inside the compiled region and inside
    FSDP's per-block hooks (torchtitan's order), unlike diffusers' enable_gradient_checkpointing,
    which checkpoints from the parent loop. Returns the number of wrapped blocks."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    blocks = model.transformer_blocks
    n = 0
    for i in range(len(blocks)):
        if i % every == 0:
            blocks[i] = checkpoint_wrapper(blocks[i], preserve_rng_state=False)
            n += 1
    return n


def parallelize(model: torch.nn.Module, cfg: ParallelConfig, d: Dist) -> torch.nn.Module:
    """AC per block, then compile per block, then FSDP2 per block and at the root (torchtitan's
    order: compile sees the checkpointed block, and FSDP's hooks wrap the compiled one)."""
    dtype = compute_dtype(cfg, d.device)
    if dtype != torch.float32:
        keep_norms_fp32(model)
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model, cfg.ac_every)
    if cfg.compile:
        for block in model.transformer_blocks:
            block.compile()  # in place: parameter names do not change
    use_fsdp = cfg.fsdp == "on" or (cfg.fsdp == "auto" and d.world_size > 1)
    if use_fsdp:
        if not d.distributed:
            raise RuntimeError("parallel.fsdp=on needs a process group (torchrun or Ray Train)")
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        for block in model.transformer_blocks:
            fully_shard(block, mp_policy=mp)
        # The root must not cast its inputs: the float timestep (0..999) would lose its fraction in
        # bf16; the trainer casts the latents and text itself.
        root = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
        fully_shard(model, mp_policy=root)
    elif d.distributed:
        raise RuntimeError("parallel.fsdp=off with several ranks: use fsdp auto/on (DDP is not wired)")
    return model


def parallelize_frozen(model: torch.nn.Module, cfg: ParallelConfig, d: Dist) -> torch.nn.Module:
    """A frozen model (the Video-DPO reference) wrapped like the policy: the same bf16 norms, compile
    and FSDP2 per block and at the root with the same mesh and mixed precision, so both compute in the
    same dtype on the same shards; no activation checkpointing (it never runs backward), no gradients,
    so it has no gradient buffers and no optimizer state."""
    model.eval().requires_grad_(False)
    return parallelize(model, cfg.model_copy(update={"activation_checkpointing": False}), d)
