"""Caption throughput per backend available here: clips/s, output tokens/s, frame prep vs generation.

    .venv/bin/python benchmarks/caption_bench.py [--clips 8] [--model DIR_OR_ID]
                                                 [--backends transformers,vllm]

Without --model it builds the tiny random Qwen2-VL of the tests (numbers then measure the pipeline
overhead, not a real model). The vllm backend runs inside .venv-vllm (a subprocess of this script)
when that venv exists; there the script also measures a text-only decode ceiling on the same
engine, the in-process equivalent of `vllm bench throughput --input-len X --output-len Y` (run that
command too on a GPU with the printed lengths). Retries are off (max_tries=1): one generation per
caption, so tokens/s is the engine's, not QA's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from captioning.backends.base import make_backend  # noqa: E402
from captioning.config import config_from_dict, load_config  # noqa: E402
from captioning.manifest import pending_work, read_captions, read_kept_clips, resolve_layout  # noqa: E402
from captioning.runner import RunContext, run_local  # noqa: E402
from tests.caption_fixtures import build_tiny_model, make_clip, make_clip_manifest  # noqa: E402

VLLM_VENV = Path(os.environ.get("VJP_VLLM_VENV", REPO / ".venv-vllm"))


def make_clips(out: Path, n: int, size: int, frames: int, fps: int) -> None:
    ids = [f"bench{i:04d}_0000000_{frames:07d}" for i in range(n)]
    for i, cid in enumerate(ids):
        make_clip(out / "clips" / f"{cid}.mp4", size=size, frames=frames, fps=fps, color=i)
    make_clip_manifest(out, [{"clip_id": c, "fps": float(fps), "width": size, "height": size} for c in ids])


def bench_config(backend: str, model: str, n: int, max_tokens: int, cpu_engine: bool) -> Any:
    data = load_config(REPO / "jobs" / "configs" / "caption.yaml").model_dump(mode="json")
    data["model"]["id"] = model
    data["retry"]["max_tries"] = 1
    for ct in data["caption_types"].values():
        ct["max_tokens"] = max_tokens
    data["vllm"]["batch_size"] = n  # one generate call for all clips x caption types
    if cpu_engine and backend == "vllm":
        data["model"]["dtype"] = "bfloat16"
        data["vllm"].update(
            max_model_len=4096, gpu_memory_utilization=0.1, enforce_eager=True, num_gpus_per_actor=0
        )
    data["transformers"]["batch_size"] = n
    return config_from_dict(data)


def run_one(backend: str, model: str, src: Path, max_tokens: int, ceiling: bool) -> dict[str, Any]:
    """Benchmark one backend in this process (the vllm one runs this in .venv-vllm)."""
    import torch

    cpu = not torch.cuda.is_available()
    out = Path(tempfile.mkdtemp(prefix=f"bench-{backend}-"))
    shutil.copytree(src, out, dirs_exist_ok=True)
    _, clips_dir, cap_dir = resolve_layout(out / "manifests")
    clips = read_kept_clips(clips_dir)
    cfg = bench_config(backend, model, len(clips), max_tokens, cpu_engine=cpu)
    t0 = time.perf_counter()
    be = make_backend(backend, cfg)
    setup_s = time.perf_counter() - t0
    ctx = RunContext(backend, model, None, "bench", cfg.content_hash())
    # Warm-up on one clip (first-call compilation, decoder start-up), written elsewhere.
    warm = pending_work(clips[:1], read_captions(cap_dir), ["short"], False)
    run_local(warm, be, cfg, ctx, out, out / "warmup", batch_size=1, progress=False)
    work = pending_work(clips, read_captions(cap_dir), cfg.enabled_types(), False)
    stats = run_local(work, be, cfg, ctx, out, cap_dir, batch_size=len(work), progress=False)
    rows = read_captions(cap_dir).to_pylist()
    tok_in = sum(r["tokens_in"] or 0 for r in rows)
    tok_out = sum(r["tokens_out"] or 0 for r in rows)
    prep = stats.prep_s
    result: dict[str, Any] = {
        "backend": backend,
        "device": "cpu" if cpu else torch.cuda.get_device_name(0),
        "clips": len(work),
        "captions": len(rows),
        "setup_s": round(setup_s, 2),
        "wall_s": round(stats.wall_s, 3),
        "clips_per_s": round(len(work) / stats.wall_s, 3),
        "out_tokens": tok_out,
        "out_tok_per_s": round(tok_out / stats.wall_s, 1),
        "out_tok_per_s_in_generate": round(tok_out / stats.gen_s, 1) if stats.gen_s else None,
        "mean_tokens_in": round(tok_in / max(len(rows), 1)),
        "mean_tokens_out": round(tok_out / max(len(rows), 1)),
        "frame_prep_s": round(prep, 3),
        "generate_s": round(stats.gen_s, 3),
        "prep_share": round(prep / (prep + stats.gen_s), 3) if prep + stats.gen_s else None,
    }
    if ceiling and backend == "vllm":
        result.update(text_ceiling(be, len(rows), result["mean_tokens_in"], result["mean_tokens_out"]))
    be.close()
    shutil.rmtree(out, ignore_errors=True)
    return result


def text_ceiling(be: Any, n: int, len_in: int, len_out: int) -> dict[str, Any]:
    """Decode ceiling: n text-only prompts of the same lengths, ignore_eos (vllm bench throughput)."""
    import random

    from vllm import SamplingParams

    vocab = be.tokenizer.vocab_size
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(0, vocab) for _ in range(len_in)]} for _ in range(n)]
    sp = SamplingParams(temperature=1.0, max_tokens=len_out, ignore_eos=True)
    t0 = time.perf_counter()
    outs = be.llm.generate(prompts, sp, use_tqdm=False)
    dt = time.perf_counter() - t0
    toks = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"ceiling_out_tok_per_s": round(toks / dt, 1), "ceiling_requests": n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--frames", type=int, default=48, help="frames per generated clip")
    ap.add_argument("--fps", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--model", default=None, help="model dir or hub id (default: tiny random Qwen2-VL)")
    ap.add_argument("--backends", default="transformers,vllm")
    ap.add_argument("--no-ceiling", action="store_true")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one backend, print JSON
    ap.add_argument("--src", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print(
            "BENCH "
            + json.dumps(
                run_one(args.worker, args.model, Path(args.src), args.max_tokens, not args.no_ceiling)
            )
        )
        return 0

    os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")
    tmp = Path(tempfile.mkdtemp(prefix="caption-bench-"))
    try:
        model = args.model or str(build_tiny_model(tmp / "tiny-qwen2-vl"))
        src = tmp / "src"
        make_clips(src, args.clips, args.size, args.frames, args.fps)
        results = []
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            if backend == "vllm":
                py = VLLM_VENV / "bin" / "python"
                if not py.exists():
                    print(f"skip vllm: {py} missing (bash .ci/vllm_env.sh)", file=sys.stderr)
                    continue
                cmd = [str(py), __file__, "--worker", "vllm", "--model", model, "--src", str(src)]
                cmd += ["--max-tokens", str(args.max_tokens)] + (["--no-ceiling"] if args.no_ceiling else [])
                env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_LOGGING_LEVEL": "WARNING"}
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
                if proc.returncode or not lines:
                    print(f"vllm bench failed ({proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
                    continue
                results.append(json.loads(lines[-1][6:]))
            else:
                results.append(run_one(backend, model, src, args.max_tokens, not args.no_ceiling))
        name = args.model or "tiny random Qwen2-VL"
        print(
            f"\ncaption benchmark: {args.clips} clips {args.size}x{args.size}, "
            f"{args.frames} frames @ {args.fps} fps, model {name}, max_tokens {args.max_tokens}"
        )
        cols = [
            "backend", "device", "clips_per_s", "out_tok_per_s", "out_tok_per_s_in_generate",
            "prep_share", "frame_prep_s", "generate_s", "setup_s", "mean_tokens_in", "mean_tokens_out",
            "ceiling_out_tok_per_s",
        ]  # fmt: skip
        print(" | ".join(cols))
        for r in results:
            print(" | ".join(str(r.get(c, "-")) for c in cols))
        for r in results:
            if r["backend"] == "vllm":
                gpu_model = args.model or "Qwen/Qwen2-VL-7B-Instruct"
                print(
                    f"ceiling on a GPU: vllm bench throughput --model {gpu_model} --dataset-name random "
                    f"--input-len {r['mean_tokens_in']} --output-len {r['mean_tokens_out']}"
                )
        print(json.dumps(results))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
