"""The Inception-v1 I3D video classifier (Carreira & Zisserman 2017) as FVD uses it.

FVD's features are the 400 Kinetics logits of this network on 224x224 clips scaled to [-1, 1].
The module and parameter names follow the PyTorch port that the common FVD code loads
(pytorch-i3d; VideoGPT/TATS's `i3d_pretrained_400.pt`, which cd-fvd downloads), so that state
dict loads with strict=True. Convolutions and pools pad like TensorFlow's "SAME", as the original
network was trained with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 400
RESOLUTION = 224
# Three stride-2 temporal steps and a temporal pool of 2: shorter clips leave nothing to pool.
MIN_FRAMES = 9


def _same_pad(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride), strict=True):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else v


class SamePool3d(nn.MaxPool3d):
    """Max pooling with TF "SAME" padding (zeros, as the port does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_same_pad(x, _triple(self.kernel_size), _triple(self.stride)))


class Unit3D(nn.Module):
    """Conv3d (SAME padding) -> BatchNorm -> ReLU; the logits unit has a bias and neither of the others."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        norm_act: bool = True,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.norm_act = kernel, stride, norm_act
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, padding=0, bias=not norm_act)
        if norm_act:
            self.bn = nn.BatchNorm3d(cout, eps=1e-5, momentum=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        return F.relu(self.bn(x)) if self.norm_act else x


class InceptionBlock(nn.Module):
    """Four branches: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; 3x3x3 max pool -> 1x1; concatenated."""

    def __init__(self, cin: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        k3 = (3, 3, 3)
        self.b0 = Unit3D(cin, w0)
        self.b1a, self.b1b = Unit3D(cin, w1a), Unit3D(w1a, w1b, k3)
        self.b2a, self.b2b = Unit3D(cin, w2a), Unit3D(w2a, w2b, k3)
        self.b3a, self.b3b = SamePool3d(k3, (1, 1, 1)), Unit3D(cin, w3)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


# (name, kind, args): the layer sequence of Inception-v1 I3D up to Mixed_5c.
_LAYOUT: list[tuple[str, str, tuple]] = [
    ("Conv3d_1a_7x7", "unit", (3, 64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "unit", (64, 64)),
    ("Conv3d_2c_3x3", "unit", (64, 192, (3, 3, 3))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", (192, (64, 96, 128, 16, 32, 32))),
    ("Mixed_3c", "mixed", (256, (128, 128, 192, 32, 96, 64))),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", (480, (192, 96, 208, 16, 48, 64))),
    ("Mixed_4c", "mixed", (512, (160, 112, 224, 24, 64, 64))),
    ("Mixed_4d", "mixed", (512, (128, 128, 256, 24, 64, 64))),
    ("Mixed_4e", "mixed", (512, (112, 144, 288, 32, 64, 64))),
    ("Mixed_4f", "mixed", (528, (256, 160, 320, 32, 128, 128))),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", (832, (256, 160, 320, 32, 128, 128))),
    ("Mixed_5c", "mixed", (832, (384, 192, 384, 48, 128, 128))),
]


class InceptionI3d(nn.Module):
    """I3D with a 400-way logits head; `forward` returns the time-averaged logits [B, 400]."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.order: list[str] = []
        for name, kind, args in _LAYOUT:
            if kind == "unit":
                layer: nn.Module = Unit3D(*args)
            elif kind == "pool":
                layer = SamePool3d(*args)
            else:
                layer = InceptionBlock(*args)
            self.add_module(name, layer)
            self.order.append(name)
        self.logits = Unit3D(1024, num_classes, norm_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float [B, 3, T, H, W] in [-1, 1], T >= MIN_FRAMES; H = W = 224 for standard FVD."""
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D takes [B, 3, T, H, W], got {tuple(x.shape)}")
        if x.shape[2] < MIN_FRAMES:
            raise ValueError(f"I3D needs at least {MIN_FRAMES} frames, got {x.shape[2]}")
        for name in self.order:
            x = self._modules[name](x)
        # At 224x224 the map is 7x7 and this is the original (2, 7, 7) pool; pooling the whole map
        # lets smoke tests run the same network on small frames. The classifier's dropout is the
        # identity in eval.
        x = F.avg_pool3d(x, kernel_size=(2, *x.shape[3:]), stride=1)
        return self.logits(x)[:, :, :, 0, 0].mean(dim=2)
