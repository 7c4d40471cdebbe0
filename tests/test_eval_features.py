"""The FVD feature network: I3D layout and shapes, weights from a path (same code as random init)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from curation.ids import sha256_file
from training.eval.config import FVDConfig
from training.eval.features import load_feature_network, preprocess
from training.eval.i3d import MIN_FRAMES, InceptionI3d


def _videos(n: int, t: int = 10, size: int = 40, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (t, size, size + 8, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def random_net() -> object:
    return load_feature_network(FVDConfig(allow_random_weights=True, resolution=32, device="cpu"))


def test_i3d_has_the_parameter_layout_of_the_fvd_port() -> None:
    shapes = {k: tuple(v.shape) for k, v in InceptionI3d().state_dict().items()}
    # Names and shapes of pytorch-i3d's InceptionI3d, which i3d_pretrained_400.pt is a state dict of.
    assert shapes["Conv3d_1a_7x7.conv3d.weight"] == (64, 3, 7, 7, 7)
    assert shapes["Conv3d_2c_3x3.bn.running_var"] == (192,)
    assert shapes["Mixed_3b.b1b.conv3d.weight"] == (128, 96, 3, 3, 3)
    assert shapes["Mixed_5c.b3b.conv3d.weight"] == (128, 832, 1, 1, 1)
    assert shapes["logits.conv3d.weight"] == (400, 1024, 1, 1, 1) and shapes["logits.conv3d.bias"] == (400,)
    assert not any(k.startswith(("avg_pool", "dropout")) or ".b3a." in k for k in shapes)


def test_standard_224_forward_gives_400_logits() -> None:
    torch.manual_seed(0)
    net = InceptionI3d().eval()
    with torch.inference_mode():
        out = net(torch.rand(1, 3, MIN_FRAMES, 224, 224) * 2 - 1)
    assert out.shape == (1, 400) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="at least 9 frames"):
        net(torch.zeros(1, 3, MIN_FRAMES - 1, 224, 224))


def test_random_network_features_have_the_right_shape_and_depend_on_the_input(random_net: object) -> None:
    net = random_net
    vids = _videos(3)
    feats = net.features(vids)
    assert feats.shape == (3, 400) and feats.dtype == np.float64 and np.isfinite(feats).all()
    assert np.allclose(net.features(vids), feats)  # deterministic
    spread = np.abs(feats[0] - feats[1]).mean() / np.abs(feats).mean()
    assert spread > 1e-3  # a He-initialised network still tells videos apart
    d = net.describe()
    assert d["random_weights"] and d["weights_sha256"] is None and d["dim"] == 400


def test_weights_load_from_a_path_through_the_same_code(tmp_path: Path, random_net: object) -> None:
    state = random_net.model.state_dict()
    pt, st = tmp_path / "i3d.pt", tmp_path / "i3d.safetensors"
    torch.save({f"module.{k}": v for k, v in state.items()}, pt)  # as saved from DataParallel
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, st)
    want = random_net.features(_videos(2))
    for path, spec in ((pt, str(pt)), (st, st.as_uri())):
        net = load_feature_network(FVDConfig(weights=spec, resolution=32, device="cpu"))
        assert not net.describe()["random_weights"]
        assert net.weights_sha256 == sha256_file(str(path))
        assert np.allclose(net.features(_videos(2)), want, rtol=1e-5, atol=1e-6)
    ok = FVDConfig(weights=str(pt), weights_sha256=sha256_file(str(pt)), resolution=32, device="cpu")
    assert load_feature_network(ok).weights_sha256 == ok.weights_sha256


def test_bad_weights_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="allow_random_weights"):
        load_feature_network(FVDConfig())
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_feature_network(FVDConfig(weights=str(tmp_path / "missing.pt")))
    partial = tmp_path / "partial.pt"
    torch.save({"logits.conv3d.weight": torch.zeros(400, 1024, 1, 1, 1)}, partial)
    with pytest.raises(ValueError, match=r"partial\.pt: not I3D weights"):
        load_feature_network(FVDConfig(weights=str(partial)))
    with pytest.raises(ValueError, match="sha256"):
        load_feature_network(FVDConfig(weights=str(partial), weights_sha256="0" * 64))
    evil = tmp_path / "evil.pt"

    class Payload:
        def __reduce__(self) -> tuple:
            return (print, ("unpickled!",))

    evil.write_bytes(pickle.dumps({"w": Payload()}))
    with pytest.raises(ValueError, match=r"evil\.pt: not a tensor-only torch state dict"):
        load_feature_network(FVDConfig(weights=str(evil)))


def test_preprocessing_resizes_the_short_side_centre_crops_and_scales() -> None:
    # A 20x30 (h x w) clip whose left and right thirds are black and middle third white.
    v = np.zeros((10, 20, 30, 3), np.uint8)
    v[:, :, 10:20] = 255
    x = preprocess([v, v], resolution=32)
    assert x.shape == (2, 3, 10, 32, 32) and float(x.max()) <= 1.0 and float(x.min()) >= -1.0
    # Short side 20 -> 32 (scale 1.6, width 48), centre crop 32 of 48: columns 8..40 of the resized
    # frame, i.e. source columns 5..25; the white band (10..20 -> 16..32) sits at crop columns 8..24,
    # kept in proportion (a squash to 32x32 would put it at 10.7..21.3).
    row = x[0, 0, 0, 16].numpy()
    assert row[12] == pytest.approx(1.0) and row[2] == pytest.approx(-1.0) and row[29] == pytest.approx(-1.0)
    assert row[9] > 0 and row[22] > 0 and row[6] < -0.9 and row[26] < -0.9
    with pytest.raises(ValueError, match="uint8"):
        preprocess([v.astype(np.float32)], 32)
    with pytest.raises(ValueError, match="equal frame counts"):
        preprocess([v, v[:9]], 32)


def test_short_clips_are_refused_not_padded(random_net: object) -> None:
    with pytest.raises(ValueError, match="at least 9 frames"):
        random_net.features(_videos(2, t=MIN_FRAMES - 1))
