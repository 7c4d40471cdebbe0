#!/usr/bin/env bash
# Install this repository and what the cluster configs need into the current Python environment
# (the Ray image's, or a Slurm venv): Ray at the version the RayJob names, vLLM for
# `caption.backend: vllm`, s3fs/gcsfs/huggingface_hub (the `hf` extra) for s3://, gs://, hf:// sources
# and outputs. vLLM pins its own torch: it is installed first, and the package then keeps that torch.
#   bash jobs/deploy/install.sh                  # from the repository root
#   EXTRAS=hf bash jobs/deploy/install.sh        # no vLLM (captioning through the openai backend)
# Then `vjp run CONFIG --check` names anything a config needs that is still missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
RAY_VERSION=${RAY_VERSION:-2.60.0}
EXTRAS=${EXTRAS:-hf,vllm}
PIP=${PIP:-python -m pip}
pins=$(mktemp)
trap 'rm -f "$pins"' EXIT
echo "ray==$RAY_VERSION" > "$pins"
$PIP install --no-cache-dir -c "$pins" "ray[default]==$RAY_VERSION"
if [[ ",$EXTRAS," == *",vllm,"* ]]; then
  $PIP install --no-cache-dir -c "$pins" "vllm>=0.10"
fi
# Keep whatever torch/torchvision are there now (vLLM's, or the image's CUDA build); without
# vLLM on a machine with no torch yet, constraints.txt's known-good pair is used.
python - >> "$pins" <<'PY'
from importlib.metadata import PackageNotFoundError, version
for name in ("torch", "torchvision"):
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        pass
PY
grep -q '^torch==' "$pins" || grep -E '^(torch|torchvision)==' constraints.txt >> "$pins"
$PIP install --no-cache-dir -c "$pins" -e ".[$EXTRAS]"
python -c "import ray; assert ray.__version__ == '$RAY_VERSION', ray.__version__"
echo "install: ray $RAY_VERSION, extras [$EXTRAS]; check a config with: vjp run CONFIG --check"
