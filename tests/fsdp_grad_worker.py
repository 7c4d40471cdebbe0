"""torchrun worker of test_fsdp_on_two_ranks_gives_the_one_process_gradients: each rank takes its
half of one fixed batch through the FSDP2-wrapped tiny DiT (AC on), and rank 0 writes the full
gradients (gathered from the shards) to a safetensors file."""

from __future__ import annotations

import sys

import torch


def main(out: str) -> int:
    from safetensors.torch import save_file

    from tests.test_train_units import fixed_micro, grad_config
    from training.ema import clean_name
    from training.parallel import full_tensor, init_distributed
    from training.step import build_model, micro_loss

    cfg = grad_config(fsdp="on")
    d = init_distributed(cfg.parallel)
    try:
        model, _, _ = build_model(cfg, 16, (2, 4, 4, 4), d)
        mine = fixed_micro().split(d.world_size)[d.rank]
        micro_loss(model, mine, "sdpa", torch.float32, False).backward()
        grads = {clean_name(n): full_tensor(p.grad).detach().clone() for n, p in model.named_parameters()}
        if d.is_main:
            save_file({k: v.contiguous() for k, v in grads.items()}, out)
    finally:
        d.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
