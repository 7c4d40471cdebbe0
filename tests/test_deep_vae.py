"""The deep-compression VAE preset (LTX-Video's AutoencoderKLLTXVideo, 32x space, 8x time): tiny real
configs with random weights saved and loaded through from_pretrained, the latent geometry against real
encodes, the round trip, the DiT sized from the measured latents, and `vjp encode` -> `vjp train`
-> `vjp sample` -> `vjp eval` through the same commands as the CogVideoX VAE."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from training.config import TrainConfig, VAEConfig, parse_train_config
from training.modeling import VAE, transformer_config
from training.tiny import TINY_LTX_CHANNELS, build_tiny_models
from training.vae import PRESETS, compression_of, default_patch_size, latent_shape

# Stage for the LTX VAE: H, W multiples of 32 and 1 + 8k frames -> latents [3, 8, 2, 2] (12 tokens).
LTX_STAGE = {"width": 64, "height": 64, "frames": 17, "fps": 8.0, "target_shard_bytes": None,
             "max_shard_samples": 2}  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    root = tmp_path_factory.mktemp("models")
    return {v: build_tiny_models(root, vae=v) for v in ("cogvideox", "ltx")}


def _vae(models: dict[str, dict[str, str]], name: str) -> VAE:
    cfg = VAEConfig(cls=name, model=models[name]["vae"], subfolder=None, posterior="mean")
    return VAE(cfg, torch.device("cpu"), torch.float32)


def test_presets_fill_class_and_weights_unless_given() -> None:
    ltx = VAEConfig(cls="ltx")
    assert (ltx.cls, ltx.model, ltx.subfolder) == (
        "diffusers:AutoencoderKLLTXVideo",
        "Lightricks/LTX-Video",
        "vae",
    )
    own = VAEConfig(cls="ltx", model="/some/folder", subfolder=None)
    assert (own.cls, own.model, own.subfolder) == ("diffusers:AutoencoderKLLTXVideo", "/some/folder", None)
    assert VAEConfig().cls == "diffusers:AutoencoderKLCogVideoX"
    with pytest.raises(ValueError, match="module:Class"):
        VAE(VAEConfig(cls="nonsense"), torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("name", ["cogvideox", "ltx"])
def test_latent_geometry_from_the_ratios_matches_real_encodes(
    models: dict[str, dict[str, str]], name: str
) -> None:
    vae = _vae(models, name)
    preset = PRESETS[name]
    spatial, temporal = compression_of(vae.model)
    assert (spatial, temporal) == (preset.spatial, preset.temporal)
    channels = 4 if name == "cogvideox" else TINY_LTX_CHANNELS  # tiny configs; the real ones: 16, 128
    # 80x112 is not a multiple of 32: LTX rounds up (2.5 -> 3, 3.5 -> 4 cells)
    for frames, h, w in [(9, 64, 64), (17, 64, 96), (16, 32, 32), (9, 80, 112)]:
        f, c, lh, lw = vae.latent_shape(frames, h, w)  # measured by encoding zeros
        expect = latent_shape(preset, frames, h, w)
        assert (f, lh, lw) == (expect[0], expect[2], expect[3]), (name, frames, h, w)
        assert c == channels


def test_ltx_round_trip_pixels_latents_pixels(models: dict[str, dict[str, str]]) -> None:
    vae = _vae(models, "ltx")
    x = torch.rand(2, 17, 3, 64, 96, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (2, 3, TINY_LTX_CHANNELS, 2, 3)  # 17 -> 3 frames, 64x96 -> 2x3 (32x)
    assert torch.isfinite(z).all()
    y = vae.decode(z)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    # LTX's per-channel statistics: latents are standardised after encode and restored before decode
    raw = vae.model.encode(x.permute(0, 2, 1, 3, 4)).latent_dist.mean
    mean, std = (getattr(vae.model, k).view(1, -1, 1, 1, 1) for k in ("latents_mean", "latents_std"))
    assert not torch.allclose(std, torch.ones_like(std))  # the tiny VAE has non-trivial ones
    expect = ((raw - mean) / std * vae.scaling_factor).permute(0, 2, 1, 3, 4)
    assert torch.allclose(z, expect, atol=1e-5)
    direct = vae.model.decode(raw).sample.permute(0, 2, 1, 3, 4)
    assert torch.allclose(y, direct, atol=1e-4)


def _cfg(**transformer: Any) -> TrainConfig:
    return parse_train_config({"model": {"transformer_config": transformer}})


def test_the_dit_follows_the_measured_latents() -> None:
    assert [default_patch_size(s) for s in (8, 16, 32)] == [2, 1, 1]
    # CogVideoX at stage 2 (848x480x48): 12 x 60 x 106 latents, patch 2 -> 19080 tokens.
    cog = transformer_config(_cfg(), 2048, (12, 16, 60, 106), spatial_compression=8)
    assert (cog["patch_size"], cog["in_channels"], cog["sample_height"], cog["sample_width"]) == (
        2,
        16,
        60,
        106,
    )
    # LTX: 32x in space -> patch 1, 128 channels from the latents (no in_channels override needed).
    ltx = transformer_config(_cfg(), 2048, (6, 128, 15, 26), spatial_compression=32)
    assert (ltx["patch_size"], ltx["in_channels"], ltx["out_channels"]) == (1, 128, 128)
    assert (ltx["sample_frames"] - 1) // ltx["temporal_compression_ratio"] + 1 == 6
    assert transformer_config(_cfg(patch_size=2), 2048, (6, 128, 16, 26), 32)["patch_size"] == 2
    with pytest.raises(ValueError, match="not divisible"):
        transformer_config(_cfg(patch_size=2), 2048, (6, 128, 15, 26), 32)
    with pytest.raises(ValueError, match="in_channels=16 but the VAE gives 128"):
        transformer_config(_cfg(in_channels=16), 2048, (6, 128, 15, 26), 32)


def _cli(module: str, argv: list[str]) -> int:
    import importlib

    mod = importlib.import_module(module)
    p = argparse.ArgumentParser()
    mod.add_arguments(p)
    return int(mod.run(p.parse_args(argv)))


@pytest.mark.slow
def test_ltx_vae_encodes_trains_samples_and_evaluates_through_the_same_commands(tmp_path: Path) -> None:
    import av
    import yaml

    from curation.configfile import apply_overrides
    from tests.test_shards import make_clips, shard_local, write_config
    from training.tiny import tiny_train_overrides

    models = build_tiny_models(tmp_path / "models", vae="ltx")
    specs = [
        {"clip_id": f"v{i}_{i:07d}_{i + 30:07d}", "video_id": f"v{i}", "caption": f"海辺の波 {i}",
         "width": 96, "height": 80, "frames": 24, "fps": 8}
        for i in range(4)
    ]  # fmt: skip
    manifests = make_clips(tmp_path / "cur", specs)
    shard_cfg = write_config(
        tmp_path / "shard.yaml",
        {"ltx": LTX_STAGE},
        captions={"fallback": "source_caption"},
        split={"eval_fraction": 0.0},
        encode={"vae_cls": "ltx"},
    )
    assert shard_local(manifests, "ltx", tmp_path / "shards", shard_cfg) == 0
    enc = ["--shards", str(tmp_path / "shards" / "ltx"), "--out", str(tmp_path / "latents"), "--config",
           str(shard_cfg), "--vae", models["vae"], "--vae-subfolder", "", "--text-encoder",
           models["text_encoder"], "--runner", "local"]  # fmt: skip
    assert _cli("jobs.encode", enc) == 0
    import io
    import tarfile

    import numpy as np

    idx = json.loads((tmp_path / "latents" / "ltx" / "__index__" / "train.json").read_text())
    assert idx["encode"]["vae_cls"] == "ltx"
    tar = sorted((tmp_path / "latents" / "ltx" / "train").glob("*.tar"))[0]
    with tarfile.open(tar) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith("latents.npy"))
        lat = np.load(io.BytesIO(tf.extractfile(member).read()), allow_pickle=False)  # type: ignore[union-attr]
    assert lat.shape == (TINY_LTX_CHANNELS, 3, 2, 2)  # [C, F, H, W] unscaled, as the CogVideoX shards
    with tarfile.open(tar) as tf:  # the samples record which VAE made them; a CogVideoX run is refused
        meta = json.loads(tf.extractfile(member.name.replace("latents.npy", "json")).read())  # type: ignore[union-attr]
    assert (meta["latents"]["vae_preset"], meta["latents"]["vae_compression"]) == ("ltx", [32, 8])
    from training.vae import check_latent_vae

    check_latent_vae(meta, VAEConfig(cls="ltx", model=models["vae"], subfolder=None), str(tar))
    with pytest.raises(ValueError, match=r"encoded by VAE ltx .* but this run's vae config is cogvideox"):
        check_latent_vae(meta, VAEConfig(model=models["vae"], subfolder=None), str(tar))
    # vjp encode stores what the trainer's pixel path computes (LTX channel standardisation included)
    from training.data.loader import video_tensor
    from training.data.sample_format import decode_mp4

    key = member.name.removesuffix(".latents.npy")
    with tarfile.open(tmp_path / "shards" / "ltx" / "train" / tar.name) as tf:
        mp4 = tf.extractfile(f"{key}.mp4").read()  # type: ignore[union-attr]
    pixel = _vae({"ltx": models}, "ltx").encode(video_tensor(decode_mp4(mp4))[None])[0]
    assert torch.allclose(pixel.permute(1, 0, 2, 3), torch.from_numpy(lat).float(), rtol=2e-3, atol=2e-3)

    base: dict[str, Any] = {
        "steps": 2, "seed": 0, "optim": {"lr": 1e-3, "warmup_steps": 0, "ema_decay": 0.9},
        "data": {"batch_size": 1, "num_workers": 0}, "checkpoint": {"every": 2, "keep_last": 1},
        "log": {"tensorboard": False, "progress": False}, "sample": {"steps": 2},
    }  # fmt: skip
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(yaml.safe_dump({"train": apply_overrides(base, tiny_train_overrides(models))}))
    for kind, shards in (("pixels", tmp_path / "shards" / "ltx"), ("latents", tmp_path / "latents" / "ltx")):
        run = tmp_path / f"run_{kind}"
        assert (
            _cli("jobs.train", ["--config", str(cfg_path), "--shards", str(shards), "--out", str(run)]) == 0
        )
        summary = json.loads((run / "summary.json").read_text())
        assert summary["data"] == kind and summary["latent_shape"] == [3, TINY_LTX_CHANNELS, 2, 2]
        export = Path(summary["checkpoint"]) / "export"
        dit = json.loads((export / "transformer" / "config.json").read_text())
        assert (dit["patch_size"], dit["in_channels"], dit["out_channels"]) == (1, TINY_LTX_CHANNELS, 8)
        assert (
            json.loads((export / "videojp.json").read_text())["vae"]["cls"]
            == "diffusers:AutoencoderKLLTXVideo"
        )
    out = tmp_path / "v.mp4"
    argv = [
        "--ckpt",
        str(tmp_path / "run_latents"),
        "--prompt",
        "海辺の波",
        "--out",
        str(out),
        "--steps",
        "2",
    ]
    assert _cli("jobs.sample", argv) == 0
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 17 and frames[0].shape == (64, 64, 3)  # the stage's frames and size
    # vjp eval (random-weight I3D at 32 px, as tests/test_eval_cli.py) on held-out LTX-stage clips
    assert shard_local(manifests, "ltx", tmp_path / "ev", write_config(
        tmp_path / "ev.yaml", {"ltx": LTX_STAGE}, captions={"fallback": "source_caption"},
        split={"eval_fraction": 1.0})) == 0  # fmt: skip
    ev = ["--ckpt", str(tmp_path / "run_latents"), "--shards", str(tmp_path / "ev" / "ltx"), "--out",
          str(tmp_path / "EVAL"), "--num", "4", "--set", "fvd.allow_random_weights=true", "--set",
          "fvd.resolution=32", "--set", "report.videos=2", "--set", "fvd.bootstrap=10",
          "--device", "cpu"]  # fmt: skip
    assert _cli("jobs.eval", ev) == 0
    metrics = json.loads((tmp_path / "EVAL" / "metrics.json").read_text())
    assert metrics["n"] == 4 and metrics["stage"] == "ltx" and metrics["fvd"]
    assert (tmp_path / "EVAL" / "report.html").stat().st_size > 0


def test_encode_hash_keeps_cogvideox_shards_and_changes_for_ltx() -> None:
    from training.data.stages import ShardConfig

    base = ShardConfig()
    enc = base.encode.model_dump(mode="json")
    assert enc["vae_cls"] == "cogvideox"
    ltx = base.model_copy(update={"encode": base.encode.model_copy(update={"vae_cls": "ltx"})})
    assert base.encode_hash("s") != ltx.encode_hash("s")
    # the default class is left out of the hash: shards encoded before the field existed stay valid
    from training.data.sample_format import config_hash

    enc.pop("vae_cls")
    for k in ("device", "vae_batch_size", "text_batch_size"):
        enc.pop(k)
    assert base.encode_hash("s") == config_hash({"shards": "s", "encode": enc})
