"""`vjp sample`: videos from Japanese prompts with a trained checkpoint (Euler, CFG), as H.264 mp4.

vjp sample --ckpt RUN/checkpoints/step_000500 --prompt "夕暮れの海辺を柴犬が走っている" --out video.mp4
vjp sample --ckpt RUN --prompts prompts.txt --out videos/          # one prompt per line
vjp sample --ckpt RUN --weights raw ...    # the trained weights instead of their EMA (export/raw/)
vjp sample --ckpt RUN --prompts prompts.txt --per-prompt 4 --out CANDS/   # Video-DPO candidates

With --per-prompt K, candidate k of prompt i (seed + i * K + k) goes to CANDS/cand_kk/NNNNNN.mp4 and
each cand_kk/ has a prompts.jsonl (key, prompt, seed and what made it: checkpoint, weights, step,
sampler settings), so two candidate folders are an A/B study as they are:
`vjp compare serve --a CANDS/cand_00 --b CANDS/cand_01 --prompts CANDS/cand_00/prompts.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ckpt", required=True, help="a checkpoint step folder, its export/, or a run folder (latest)"
    )
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", default=None, help="a UTF-8 text file, one prompt per line")
    p.add_argument(
        "--out", required=True, help="an .mp4 path for one prompt, else a folder (000000.mp4, ...)"
    )
    p.add_argument(
        "--weights",
        choices=("ema", "raw"),
        default="ema",
        help="ema (default) or raw: the trained weights, exported beside the EMA (checkpoint.export_raw)",
    )
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default from the checkpoint: 25)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default 2.5; 1 = no guidance)")
    p.add_argument("--negative-prompt", default=None, help="replaces the empty caption in guidance")
    p.add_argument("--seed", type=int, default=0, help="seed of the first video; video i uses seed + i")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--fps", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument(
        "--per-prompt",
        type=int,
        default=1,
        help="K seeded candidates per prompt, in OUT/cand_00 .. cand_{K-1} (preference pairs, vjp compare)",
    )
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when present)")
    p.add_argument(
        "--decode-timestep",
        type=float,
        default=None,
        help="timestep-conditioned VAEs (LTX-Video >= 0.9.1): decode timestep (default: vae.decode_timestep, "
        "else the LTX recipe's 0.05)",
    )
    p.add_argument(
        "--decode-noise-scale",
        type=float,
        default=None,
        help="timestep-conditioned VAEs: seeded noise mixed into the latents before decode (default 0.025)",
    )


def export_folder(ckpt: str, weights: str = "ema") -> str:
    """The export folder of a checkpoint for EMA or raw weights (raw: export/raw/, its own export)."""
    from training.checkpoint import EXPORT_META, RAW
    from training.sample import resolve_export

    folder = resolve_export(ckpt)
    if weights == "ema":
        return folder
    raw = os.path.join(folder, RAW)
    if not os.path.isfile(os.path.join(raw, EXPORT_META)):
        raise FileNotFoundError(f"{folder}: no raw weights (the run had checkpoint.export_raw=false)")
    return raw


def run(args: argparse.Namespace) -> int:
    from training.sample import Sampler, write_mp4

    prompts = list(args.prompt)
    if args.prompts:
        with open(args.prompts, encoding="utf-8") as f:
            prompts += [line.strip() for line in f if line.strip()]
    if not prompts:
        print("vjp sample: give --prompt or --prompts", file=sys.stderr)
        return 2
    single = args.out.endswith(".mp4")
    if args.per_prompt < 1 or (args.per_prompt > 1 and single):
        print("vjp sample: --per-prompt K >= 1, and K > 1 needs a folder for --out", file=sys.stderr)
        return 2
    if single and len(prompts) > 1:
        print(f"vjp sample: {len(prompts)} prompts need a folder for --out, not {args.out}", file=sys.stderr)
        return 2
    try:
        sampler = Sampler(export_folder(args.ckpt, args.weights), args.device)
        sampler.vae.decode_settings(args.decode_timestep, args.decode_noise_scale)
    except (FileNotFoundError, ValueError) as e:
        print(f"vjp sample: {e}", file=sys.stderr)
        return 2
    if args.per_prompt > 1:
        return _candidates(args, sampler, prompts)
    seeds = [args.seed + i for i in range(len(prompts))]
    videos = _generate(args, sampler, prompts, seeds)
    fps = args.fps or sampler.settings["fps"]
    paths = [args.out] if single else [os.path.join(args.out, f"{i:06d}.mp4") for i in range(len(prompts))]
    for video, path in zip(videos, paths, strict=True):
        write_mp4(video, path, fps)
    if not single:
        with open(os.path.join(args.out, "prompts.jsonl"), "w", encoding="utf-8") as f:
            for path, prompt, seed in zip(paths, prompts, seeds, strict=True):
                f.write(
                    json.dumps(
                        {"video": os.path.basename(path), "prompt": prompt, "seed": seed}, ensure_ascii=False
                    )
                    + "\n"
                )
    print(
        json.dumps(
            {"videos": paths, **{k: sampler.settings[k] for k in ("frames", "height", "width")}, "fps": fps},
            ensure_ascii=False,
        )
    )
    return 0


def _generate(args: argparse.Namespace, sampler: Any, prompts: list[str], seeds: list[int]) -> list[Any]:
    """One video per (prompt, seed) with the command line's sampling settings."""
    return sampler.generate(
        prompts,
        seeds,
        steps=args.steps,
        guidance=args.guidance,
        negative_prompt=args.negative_prompt,
        frames=args.frames,
        height=args.height,
        width=args.width,
        batch_size=args.batch_size,
        decode_timestep=args.decode_timestep,
        decode_noise_scale=args.decode_noise_scale,
    )


def _candidates(args: argparse.Namespace, sampler: Any, prompts: list[str]) -> int:
    """K seeded candidates per prompt: OUT/cand_kk/NNNNNN.mp4 + prompts.jsonl with what made each."""
    from training.sample import write_mp4

    k_total = args.per_prompt
    seeds = [args.seed + i * k_total + k for i in range(len(prompts)) for k in range(k_total)]
    videos = _generate(args, sampler, [p for p in prompts for _ in range(k_total)], seeds)
    st = sampler.settings
    fps = args.fps or st["fps"]
    made = {
        "checkpoint": os.path.abspath(args.ckpt),
        "weights": args.weights,
        "step": st["step"],
        "steps": args.steps or st["steps"],
        "guidance": st["guidance"] if args.guidance is None else args.guidance,
        "negative_prompt": st["negative_prompt"] if args.negative_prompt is None else args.negative_prompt,
        "frames": args.frames or st["frames"],
        "height": args.height or st["height"],
        "width": args.width or st["width"],
        "fps": fps,
    }
    decode = sampler.vae.decode_settings(args.decode_timestep, args.decode_noise_scale)
    if decode is not None:  # timestep-conditioned VAEs only: what the decoder was given
        made["decode_timestep"], made["decode_noise_scale"] = decode
    paths = []
    for k in range(k_total):
        folder = os.path.join(args.out, f"cand_{k:02d}")
        os.makedirs(folder, exist_ok=True)
        rows = []
        for i, prompt in enumerate(prompts):
            key = f"{i:06d}"
            path = os.path.join(folder, f"{key}.mp4")
            write_mp4(videos[i * k_total + k], path, fps)
            paths.append(path)
            rows.append({"key": key, "video": f"{key}.mp4", "prompt": prompt, "candidate": k,
                         "seed": seeds[i * k_total + k], **made})  # fmt: skip
        with open(os.path.join(folder, "prompts.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    print(json.dumps({"videos": paths, "per_prompt": k_total, **made}, ensure_ascii=False))
    return 0
