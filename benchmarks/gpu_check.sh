#!/usr/bin/env bash
# The GPU check: train_bench rows on one H100/H200 in under 10 minutes, written to one JSON.
#
#   benchmarks/gpu_check.sh [OUT.json]              # default: gpu_check.json in the repo root
#   benchmarks/gpu_check.sh --dry-run [OUT.json]    # the same rows on the CPU with a tiny DiT (tests)
#
# Rows, most important first (each group is its own process, so an OOM or a compile failure
# costs only its group; a group that would start after the time budget is recorded as skipped):
#   1. stage 1 (256x256x48: 3,298 tokens, batch 8, bf16), AC on, eager: attention flex | sdpa | none
#   2. stage 2 (848x480x48: 19,306 tokens, batch 1), AC on, eager: flex | sdpa
#   3. stage 1, AC on, compiled blocks: flex | none
#   4. stage 1, AC off, eager and compiled: flex
#   5. stage 1, partial AC (every 2nd block), compiled: flex
# Each row: median step time, samples/s, tokens/s, peak memory, MFU (corrected FLOPs: adaLN and
# time embedding once per sample). The model is the full-size CogVideoX-2B transformer with random
# weights built from its config (no Hugging Face Hub), text slots sized to LLM-jp-3-1.8B.
#
# Python: $PYTHON, else the repo's .venv, else a python3 that imports torch, diffusers and
# transformers; otherwise a venv is made (.venv-gpucheck, reusing a preinstalled CUDA torch through
# system site packages) and the few packages the bench needs come from the package registry.
set -euo pipefail

DRY=0
OUT=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) OUT="$arg" ;;
  esac
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/gpu_check.json}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-540}"  # no group starts after this many seconds (and none runs past)
cd "$ROOT"

has_stack() { "$1" -c "import torch, diffusers, transformers, pydantic, yaml, safetensors" 2>/dev/null; }
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && has_stack .venv/bin/python; then
    PY=.venv/bin/python
  elif command -v python3 >/dev/null && has_stack python3; then
    PY=python3
  else
    echo "gpu_check: installing the bench's packages into .venv-gpucheck" >&2
    python3 -m venv --system-site-packages .venv-gpucheck
    PKGS="diffusers transformers pydantic pyyaml safetensors numpy"
    .venv-gpucheck/bin/python -c "import torch" 2>/dev/null || PKGS="torch $PKGS"
    # shellcheck disable=SC2086
    .venv-gpucheck/bin/pip install -q -c constraints.txt $PKGS
    PY=.venv-gpucheck/bin/python
  fi
fi

ROWS="$(mktemp "${TMPDIR:-/tmp}/gpu_check_rows.XXXXXX")"
LOGS="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_logs.XXXXXX")"
trap 'rm -f "$ROWS"' EXIT
START=$(date +%s)
COMMON=(--steps 6 --warmup 2 --json "$ROWS")
[ "$DRY" = 1 ] && COMMON+=(--dry-run)

GROUPS_ONLY="${GPU_CHECK_GROUPS:-}"  # comma-separated group names to run (default: all)
group() {  # group NAME ARGS...: one train_bench process, unless the budget is spent
  local name="$1"; shift
  if [ -n "$GROUPS_ONLY" ] && [[ ",$GROUPS_ONLY," != *",$name,"* ]]; then
    return 0
  fi
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  if [ "$left" -le 30 ]; then
    printf '{"group": "%s", "skipped": "time budget spent"}\n' "$name" >> "$ROWS"  # name: no quotes
    return 0
  fi
  echo "gpu_check: $name (${left}s left)" >&2
  local rc=0
  timeout "$left" "$PY" benchmarks/train_bench.py "${COMMON[@]}" "$@" > "$LOGS/$name.log" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    "$PY" -c 'import json, sys; print(json.dumps({"group": sys.argv[1], "error": f"exit {sys.argv[2]}",
      "log_tail": open(sys.argv[3], errors="replace").read()[-1500:]}))' "$name" "$rc" "$LOGS/$name.log" >> "$ROWS"
  fi
}

group stage1_attention --shapes stage1 --batch-size 8 --ac on --compile off --attention flex,sdpa,none
group stage2_ac --shapes stage2 --batch-size 1 --ac on --compile off --attention flex,sdpa
group stage1_compile --shapes stage1 --batch-size 8 --ac on --compile on --attention flex,none
group stage1_no_ac --shapes stage1 --batch-size 8 --ac off --compile off,on --attention flex
group stage1_partial_ac --shapes stage1 --batch-size 8 --ac on --ac-every 2 --compile on --attention flex

"$PY" - "$ROWS" "$OUT" "$START" "$DRY" <<'EOF'
import json, platform, sys, time

rows_path, out, start, dry = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
import torch

rows = [json.loads(line) for line in open(rows_path, encoding="utf-8") if line.strip()]
report = {
    "check": "videojp gpu_check v1",
    "dry_run": dry,
    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    "torch": torch.__version__,
    "python": platform.python_version(),
    "elapsed_s": round(time.time() - start, 1),
    "rows": rows,
}
with open(out, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1)
print(f"gpu_check: {len(rows)} rows -> {out}")
EOF
