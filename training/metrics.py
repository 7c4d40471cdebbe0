"""Model FLOPs, MFU and the step log (stdout, RUN/metrics.jsonl, TensorBoard when installed)."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from training.ema import clean_name

# Dense bf16 peak TFLOP/s per device, for MFU (spec sheets, no sparsity).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}


def peak_tflops(explicit: float | None) -> float | None:
    if explicit:
        return explicit
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


# Linear/conv layers by how often they run. The adaLN modulation (norm1/norm2/norm_out .linear)
# and the time embedding act on the timestep embedding: once per sample, not per token (357M of
# CogVideoX-2B's 1.69B parameters). text_proj runs on text tokens, the patch conv and proj_out on
# video tokens; everything else in the blocks (attention projections, feed-forward) on all tokens.
_PER_SAMPLE = ("norm1.linear", "norm2.linear", "norm_out.linear", "time_embedding.", "ofs_embedding.")
_PER_TEXT = ("text_proj",)
_PER_VIDEO = ("patch_embed.proj", "proj_out")


@dataclass(frozen=True)
class MatmulParams:
    """Weights that take part in a matmul (2 FLOPs per weight and application, forward), by how
    often they are applied in one sample."""

    joint: int  # per token, text and video
    text: int  # per text token
    video: int  # per video token (patches)
    sample: int  # once per sample

    @property
    def total(self) -> int:
        return self.joint + self.text + self.video + self.sample


def matmul_params(model: torch.nn.Module) -> MatmulParams:
    counts = {"joint": 0, "text": 0, "video": 0, "sample": 0}
    for name, m in model.named_modules():
        if not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)):
            continue
        name = clean_name(name) + "."
        if any(k in name for k in _PER_SAMPLE):
            kind = "sample"
        elif any(k in name for k in _PER_TEXT):
            kind = "text"
        elif any(k in name for k in _PER_VIDEO):
            kind = "video"
        else:
            kind = "joint"
        counts[kind] += m.weight.numel()
    return MatmulParams(**counts)


def train_flops_per_sample(
    model_cfg: dict[str, Any], params: MatmulParams, video_tokens: int, text_tokens: int
) -> float:
    """Forward + backward FLOPs of one sample: 6 x (per-token weights x their tokens + per-sample
    weights) for the matmuls, 12 L S^2 d for attention scores and values. Activation recomputation
    is not counted, as MFU defines it."""
    s = video_tokens + text_tokens
    d = model_cfg["num_attention_heads"] * model_cfg["attention_head_dim"]
    dense = params.joint * s + params.text * text_tokens + params.video * video_tokens + params.sample
    return 6.0 * dense + 12.0 * model_cfg["num_layers"] * s * s * d


class StepLog:
    """Rank 0's log: one JSON line per step, a console line every `every` steps, optional TB and bar."""

    def __init__(
        self,
        run_dir: str,
        every: int,
        tensorboard: bool | str,
        progress: bool | str,
        total: int,
        start: int,
        enabled: bool,
    ) -> None:
        self.enabled, self.every = enabled, every
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.tb = self.bar = None
        if not enabled:
            return
        if start == 0 and os.path.exists(self.path):
            os.remove(self.path)
        elif os.path.exists(self.path):
            self._truncate_after(start)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(run_dir, "tb"))
            except ImportError:
                if tensorboard is True:
                    raise
        if progress is True or (progress == "auto" and sys.stderr.isatty()):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", unit="step")

    def _truncate_after(self, step: int) -> None:
        """A resumed run rewrites the steps after its checkpoint (a killed run may have logged more)."""
        with open(self.path, encoding="utf-8") as f:
            keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(keep)

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"time": round(time.time(), 3), **row}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "time"):
                    self.tb.add_scalar(f"train/{k}", v, row["step"])
        # a DPO run is watched by its reward margin and accuracy, not only its loss
        dpo = {"margin": row.get("reward_margin"), "acc": row.get("reward_accuracy")}
        if self.bar is not None:
            self.bar.update(1)
            extra = {k: f"{v:.3f}" for k, v in dpo.items() if v is not None}
            self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", **extra)
        elif row["step"] % self.every == 0:
            mfu = f" mfu {row['mfu']:.1%}" if row.get("mfu") is not None else ""
            pref = "".join(f" {k} {v:.3f}" for k, v in dpo.items() if v is not None)
            print(
                f"step {row['step']} loss {row['loss']:.5f}{pref} lr {row['lr']:.3e} "
                f"gnorm {row['grad_norm']:.3f} {row['samples_per_s']:.2f} samples/s "
                f"data {row['data_wait']:.0%}{mfu}" + (" SKIPPED (non-finite)" if row["skipped"] else ""),
                flush=True,
            )

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.bar is not None:
            self.bar.close()
