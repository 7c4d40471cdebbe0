"""LTX-Video >= 0.9.1's timestep-conditioned VAE decoder in the sampler's decode path: a tiny VAE with the
0.9.1 config's structure (timestep_conditioning, decoder noise injection, residual 2x upsamplers; random
weights, saved and loaded through from_pretrained), decoded as diffusers' LTXPipeline does with seeded
noise; and the 0.9.0-style VAE (no conditioning) decoding exactly as before."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from training.config import VAEConfig, parse_train_config
from training.modeling import VAE
from training.tiny import TINY_LTX_CHANNELS, TINY_TEXT_DIM, build_tiny_models, tiny_train_overrides
from training.vae import RECIPE_DECODE_NOISE_SCALE, RECIPE_DECODE_TIMESTEP, denormalize


def build_tiny_ltx_091_vae(folder: Path, seed: int = 0) -> Path:
    """AutoencoderKLLTXVideo shaped like LTX-Video 0.9.1's VAE config (diffusers' conversion of it:
    3 decoder blocks of growing width with residual 2x upsamplers, noise injected in the first three
    decoder stages, timestep_conditioning) at 8-32 channels; the same 32x / 8x compression and
    8 latent channels as training.tiny's 0.9.0-style VAE."""
    from diffusers import AutoencoderKLLTXVideo

    torch.manual_seed(seed)
    vae = AutoencoderKLLTXVideo(
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 16, 32),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True),
        decoder_inject_noise=(True, True, True, False),
        upsample_residual=(True, True, True),
        upsample_factor=(2, 2, 2),
        timestep_conditioning=True,
        latent_channels=TINY_LTX_CHANNELS,
    )
    with torch.no_grad():  # the real weights have non-zero noise scales and channel statistics
        for name, p in vae.named_parameters():
            if "per_channel_scale" in name:
                p.fill_(0.05)
        vae.latents_mean.copy_(0.1 * torch.randn(TINY_LTX_CHANNELS))
        vae.latents_std.copy_(0.5 + torch.rand(TINY_LTX_CHANNELS))
    vae.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vaes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("vaes")
    models = build_tiny_models(root, vae="ltx")  # the 0.9.0-style VAE and the tiny text encoder
    return {"v090": models["vae"], "v091": str(build_tiny_ltx_091_vae(root / "vae_ltx_091")), **models}


def _vae(folder: str, **cfg: Any) -> VAE:
    return VAE(VAEConfig(cls="ltx", model=folder, subfolder=None, **cfg), torch.device("cpu"), torch.float32)


def _latents(seed: int = 0, b: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, TINY_LTX_CHANNELS, 2, 2, generator=torch.Generator().manual_seed(seed))


def _gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_timestep_conditioned_decode_is_seeded_and_follows_the_timestep(vaes: dict[str, Any]) -> None:
    vae = _vae(vaes["v091"])
    assert vae.model.config.timestep_conditioning is True  # survived save -> from_pretrained
    assert vae.decode_settings() == (RECIPE_DECODE_TIMESTEP, RECIPE_DECODE_NOISE_SCALE) == (0.05, 0.025)
    z = _latents(0)
    rng = torch.get_rng_state()
    a = vae.decode(z, _gens(3))
    assert a.shape == (1, 17, 3, 64, 64) and torch.isfinite(a).all()
    assert torch.equal(a, vae.decode(z, _gens(3)))  # same seed -> same pixels
    assert torch.equal(torch.get_rng_state(), rng)  # the decoder's own noise left torch's RNG alone
    assert not torch.allclose(a, vae.decode(z, _gens(4)), atol=1e-4)  # the seed's noise reaches the pixels
    # the timestep acts on its own (no mixing noise), and so does the noise scale
    t0, t5 = vae.decode(z, _gens(3), 0.0, 0.0), vae.decode(z, _gens(3), 0.5, 0.0)
    assert (t0 - t5).abs().max() > 1e-3
    assert (vae.decode(z, _gens(3), 0.05, 0.5) - vae.decode(z, _gens(3), 0.05, 0.0)).abs().max() > 1e-3
    # a video decodes the same alone and in a batch (each draws from its own generator)
    z2 = torch.cat([z, _latents(1)])
    both = vae.decode(z2, _gens(3, 4))
    assert torch.equal(both[:1], a)
    assert torch.equal(both[1:], vae.decode(z2[1:], _gens(4)))
    # config keys override the recipe
    assert _vae(vaes["v091"], decode_timestep=0.0, decode_noise_scale=0.0).decode_settings() == (0.0, 0.0)
    set_in_config = _vae(vaes["v091"], decode_timestep=0.5, decode_noise_scale=0.0)
    assert torch.equal(set_in_config.decode(z, _gens(3)), t5)


def test_the_mix_is_diffusers_ltx_pipelines(vaes: dict[str, Any]) -> None:
    """z <- (1 - s) z + s noise on the denormalised latents, then decode(z, temb=t) (LTXPipeline.__call__);
    the noise from the video's generator, the decoder's injected noise from torch's RNG seeded after."""
    vae = _vae(vaes["v091"])
    z = _latents(2)
    t, s = 0.05, 0.025
    g = torch.Generator().manual_seed(7)
    den = denormalize(vae.model, (z / vae.scaling_factor).permute(0, 2, 1, 3, 4))
    noise = torch.randn(den.shape, generator=g)
    mixed = (1 - s) * den + s * noise
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
        want = vae.model.decode(mixed, torch.tensor([t])).sample.permute(0, 2, 1, 3, 4)
    assert torch.equal(vae.decode(z, _gens(7), t, s), want)
    assert not torch.allclose(want, vae.model.decode(den, torch.tensor([t])).sample.permute(0, 2, 1, 3, 4))


def test_a_090_style_vae_decodes_as_before(vaes: dict[str, Any]) -> None:
    vae = _vae(vaes["v090"])
    assert not vae.model.config.timestep_conditioning and vae.decode_settings() is None
    z = _latents(0, b=2)
    rng = torch.get_rng_state()
    y = vae.decode(z)
    direct = vae.model.decode(denormalize(vae.model, (z / vae.scaling_factor).permute(0, 2, 1, 3, 4)))
    assert torch.equal(y, direct.sample.permute(0, 2, 1, 3, 4))  # one batched decode, no noise, no temb
    assert torch.equal(vae.decode(z, _gens(5, 6)), y)  # generators are not used
    assert torch.equal(torch.get_rng_state(), rng)
    with pytest.raises(ValueError, match=r"decode_timestep=0\.05 but this AutoencoderKLLTXVideo decoder"):
        _vae(vaes["v090"], decode_timestep=0.05)
    with pytest.raises(ValueError, match="no timestep conditioning"):
        vae.decode(z, None, None, 0.1)
    assert torch.equal(_vae(vaes["v090"], decode_timestep=0.0).decode(z), y)  # 0 = off: allowed


def _export(root: Path, vaes: dict[str, Any], vae: str, **vae_cfg: Any) -> Path:
    """An export folder as training writes it (train.export_meta, the tiny DiT for the tiny LTX latents),
    built without a training run: the sampler's decode path is what is tested here."""
    from curation.configfile import apply_overrides
    from training.checkpoint import EXPORT_FORMAT, EXPORT_META
    from training.modeling import build_transformer
    from training.train import export_meta

    models = {"vae": vaes[vae], "text_encoder": vaes["text_encoder"], "vae_cls": "ltx"}
    raw = apply_overrides({"sample": {"steps": 2}}, tiny_train_overrides(models))
    raw["vae"].update(vae_cfg)
    cfg = parse_train_config(raw)
    latent_shape = (3, TINY_LTX_CHANNELS, 2, 2)
    folder = root / f"export_{vae}"
    torch.manual_seed(0)
    build_transformer(cfg, TINY_TEXT_DIM, latent_shape, 32).save_pretrained(folder / "transformer")
    cond = SimpleNamespace(latent_shape=latent_shape, latent_scale=1.0, pixel_shape=(17, 64, 64), fps=8.0)
    meta = {"format": EXPORT_FORMAT, "step": 0, "weights": "ema", **export_meta(cfg, cond, 1.0)}  # type: ignore[arg-type]
    (folder / EXPORT_META).write_text(json.dumps(meta))
    return folder


def test_sampler_and_vjp_sample_through_a_timestep_conditioned_vae(
    vaes: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobs.sample import add_arguments, run
    from training.sample import Sampler

    s = Sampler(str(_export(tmp_path, vaes, "v091")), "cpu")
    assert (s.settings["decode_timestep"], s.settings["decode_noise_scale"]) == (0.05, 0.025)
    a, b = s.generate(["海辺の波", "夜の街"], [3, 4])  # batch_size 1: the DiT's floats do not see the batch
    [a2] = s.generate(["海辺の波"], [3])
    assert a.shape == (17, 64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, a2)  # same seed -> same pixels
    assert not np.array_equal(a, b)
    [c] = s.generate(["海辺の波"], [3], decode_timestep=0.5, decode_noise_scale=0.0)
    assert not np.array_equal(a, c)

    p = argparse.ArgumentParser()
    add_arguments(p)
    exp = str(tmp_path / "export_v091")
    argv = ["--ckpt", exp, "--prompt", "海辺の波", "--per-prompt", "2", "--out", str(tmp_path / "c")]
    assert run(p.parse_args([*argv, "--decode-timestep", "0.1"])) == 0
    row = json.loads((tmp_path / "c" / "cand_00" / "prompts.jsonl").read_text().splitlines()[0])
    assert (row["decode_timestep"], row["decode_noise_scale"]) == (0.1, 0.025)  # recorded with the candidate

    # the 0.9.0-style VAE: no decode keys in the settings, and asking for a timestep is a clear error
    old = Sampler(str(_export(tmp_path, vaes, "v090")), "cpu")
    assert "decode_timestep" not in old.settings
    out = str(tmp_path / "x.mp4")
    ck = ["--ckpt", str(tmp_path / "export_v090"), "--prompt", "海辺の波", "--out", out, "--steps", "1"]
    assert run(p.parse_args([*ck, "--decode-timestep", "0.05"])) == 2
    assert "no timestep conditioning" in capsys.readouterr().err
