"""Video features for FVD: the Kinetics-400 I3D logits, with weights from a path or a URL.

    net = load_feature_network(cfg.fvd)        # FVDConfig
    feats = net.features(clips)                # uint8 [T, H, W, 3] clips of equal T -> float64 [B, 400]

The weights are the PyTorch I3D state dict the usual FVD code loads (`i3d_pretrained_400.pt`
of VideoGPT/TATS, which cd-fvd downloads), as a .pt state dict (read with weights_only=True) or
.safetensors. Nothing is downloaded implicitly: a URL in config is fetched once into the cache
folder and checked against `weights_sha256` when that is set. Without weights the network is
randomly initialised from a seed only when the config says so (`allow_random_weights`, for tests
and smoke runs), and metrics.json says so. Preprocessing is the preset's (training/eval/protocol.py):
the short side resized to 224 and centre-cropped, as VideoGPT/TATS/StyleGAN-V do, scaled to [-1, 1].
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from curation.ids import sha256_file

if TYPE_CHECKING:
    import torch

    from training.eval.config import FVDConfig

NETWORK = "i3d_kinetics400_logits"


def resolve_weights(spec: str, cache_dir: str, expected_sha256: str | None = None) -> str:
    """A local file for `spec` (a path, file:// URL, or http(s) URL fetched once into cache_dir)."""
    parsed = urllib.parse.urlparse(spec)
    if parsed.scheme in ("http", "https"):
        name = os.path.basename(parsed.path) or "weights.pt"
        local = os.path.join(cache_dir, hashlib.sha256(spec.encode()).hexdigest()[:12] + "-" + name)
        if not os.path.exists(local):
            os.makedirs(cache_dir, exist_ok=True)
            tmp = local + f".part-{os.getpid()}"
            try:
                urllib.request.urlretrieve(spec, tmp)
                os.replace(tmp, local)
            except OSError as e:
                raise FileNotFoundError(f"feature network weights: cannot fetch {spec}: {e}") from None
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        path = local
    elif parsed.scheme == "file":
        path = urllib.parse.unquote(parsed.path)
    else:
        path = spec
    if not os.path.isfile(path):
        raise FileNotFoundError(f"feature network weights not found: {path}")
    if expected_sha256 and sha256_file(path) != expected_sha256.lower():
        raise ValueError(f"feature network weights {path}: sha256 is not the configured {expected_sha256}")
    return path


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a .pt/.pth file (tensors only: weights_only=True)."""
    import torch

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state: Any = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # unpickling refused or not a torch file: name the file and why
            raise ValueError(
                f"{path}: not a tensor-only torch state dict ({type(e).__name__}: {e})"
            ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a mapping of parameter names to tensors")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def random_init(model: torch.nn.Module, seed: int) -> None:
    """Every parameter and buffer from a seed: He-normal convolutions, identity batch norms.

    He-normal rather than PyTorch's default init: with the default, the logits of 20 stacked
    layers barely depend on the input, which would make a random network useless even for smoke
    tests.
    """
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv3d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm3d):
                m.weight.fill_(1.0)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
                m.num_batches_tracked.zero_()


def preprocess(clips: list[np.ndarray], resolution: int) -> torch.Tensor:
    """uint8 [T, H, W, 3] clips of equal T -> float [B, 3, T, R, R] in [-1, 1]: each frame's short
    side resized to R, centre-cropped (training.eval.protocol.resize_crop)."""
    import torch

    from training.eval.protocol import resize_crop

    lengths = {c.shape[0] for c in clips}
    if len(lengths) > 1:
        raise ValueError(f"clips of one batch must have equal frame counts, got {sorted(lengths)}")
    return torch.stack([resize_crop(c, resolution) for c in clips])


@dataclass
class FeatureNetwork:
    """A loaded feature network and what identifies it in metrics.json."""

    model: Any
    device: str
    resolution: int
    batch_size: int
    weights: str | None
    weights_sha256: str | None
    random_weights: bool
    name: str = NETWORK
    dim: int = 400

    def features(self, clips: list[np.ndarray]) -> np.ndarray:
        """Features [B, dim] (float64) of uint8 clips already cut to one preset's frames (equal T,
        at least I3D's minimum: a short clip is the caller's to leave out, never padded here)."""
        import torch

        from training.eval.i3d import MIN_FRAMES

        out = []
        for i in range(0, len(clips), self.batch_size):
            chunk = clips[i : i + self.batch_size]
            if chunk[0].shape[0] < MIN_FRAMES:
                raise ValueError(f"I3D needs at least {MIN_FRAMES} frames, got {chunk[0].shape[0]}")
            x = preprocess(chunk, self.resolution).to(self.device)
            with torch.inference_mode():
                out.append(self.model(x).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dim": self.dim,
            "resolution": self.resolution,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "random_weights": self.random_weights,
        }


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_feature_network(cfg: FVDConfig) -> FeatureNetwork:
    import torch

    from training.eval.i3d import InceptionI3d

    # Built without PyTorch's default init (a few seconds of CPU for 12.7M parameters): every
    # tensor is then set by the state dict (strict) or by random_init.
    with torch.device("meta"):
        model = InceptionI3d()
    model = model.to_empty(device="cpu")
    weights_path: str | None = None
    digest: str | None = None
    if cfg.weights:
        weights_path = resolve_weights(cfg.weights, os.path.expanduser(cfg.cache_dir), cfg.weights_sha256)
        state = load_state_dict(weights_path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{weights_path}: not I3D weights of the expected layout: {e}") from None
        digest = sha256_file(weights_path)
    elif cfg.allow_random_weights:
        random_init(model, cfg.random_seed)
    else:
        raise FileNotFoundError(
            "fvd.weights is not set: give the I3D weights (i3d_pretrained_400.pt) by path or URL, "
            "or set fvd.allow_random_weights=true for a smoke run (its FVD means nothing)"
        )
    device = pick_device(cfg.device)
    model = model.eval().to(device=device, dtype=torch.float32)
    return FeatureNetwork(
        model=model,
        device=device,
        resolution=cfg.resolution,
        batch_size=cfg.batch_size,
        weights=cfg.weights,
        weights_sha256=digest,
        random_weights=not cfg.weights,
    )
