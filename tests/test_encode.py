"""`vjp encode`: tiny random CogVideoX VAE and Llama text encoder, saved and loaded via from_pretrained."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.test_shards import cli, make_clips, write_config
from training.data.stages import EncodeConfig

CAPTIONS = [
    "森の中を流れる小川、木漏れ日。",
    "子どもたちが公園で遊んでいる様子をズームで映す。",
    "夜の街。",
    "海辺の波",
]


def build_tiny_models(root: Path) -> tuple[Path, Path]:
    """The tiny random CogVideoX VAE and 2-layer Llama of training.tiny (the demo's and the trainer
    tests' too), saved and loaded back through from_pretrained."""
    from training.tiny import build_tiny_models as build

    models = build(root)
    return Path(models["vae"]), Path(models["text_encoder"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("encode")
    vae, text = build_tiny_models(tmp / "models")
    specs = [
        {"clip_id": f"v{i % 2}_{i:07d}_{i + 60:07d}", "video_id": f"v{i % 2}", "caption": c}
        for i, c in enumerate(CAPTIONS)
    ]
    manifests = make_clips(tmp / "cur", specs)
    stages = {
        "tiny": {"width": 64, "height": 64, "frames": 48, "target_shard_bytes": None, "max_shard_samples": 3}
    }
    config = write_config(
        tmp / "c.yaml", stages, captions={"fallback": "source_caption"}, split={"eval_fraction": 0.0}
    )
    shards = tmp / "shards"
    argv = ["--clips", str(manifests), "--stage", "tiny", "--out", str(shards), "--config", str(config)]
    assert cli([*argv, "--runner", "local"]) == 0
    enc_argv = [
        "--shards", str(shards / "tiny"), "--out", str(tmp / "latents"), "--config", str(config),
        "--vae", str(vae), "--vae-subfolder", "", "--text-encoder", str(text),
    ]  # fmt: skip
    assert cli([*enc_argv, "--runner", "local"], "jobs.encode") == 0
    return {"tmp": tmp, "vae": vae, "text": text, "argv": enc_argv, "latents": tmp / "latents" / "tiny"}


def test_derived_shards_hold_npy_latents_and_text_embeddings(setup: dict[str, Any]) -> None:
    import webdataset as wds
    from transformers import AutoModel, AutoTokenizer

    from training.data.sample_format import ShardIndex

    index = ShardIndex.model_validate_json((setup["latents"] / "__index__" / "train.json").read_text())
    assert index.kind == "latents" and index.samples == 4 and len(index.shards) == 2
    assert index.encode and index.encode["text_encoder"] == str(setup["text"])
    tok = AutoTokenizer.from_pretrained(setup["text"])
    model = AutoModel.from_pretrained(setup["text"]).eval()
    urls = [str(setup["latents"] / "train" / e.name) for e in index.shards]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert len(samples) == 4
    for s in samples:
        assert set(s) >= {"json", "txt", "latents.npy", "text_emb.npy"} and "mp4" not in s
        lat, emb, meta = s["latents.npy"], s["text_emb.npy"], s["json"]
        assert lat.shape == (4, 12, 8, 8) and lat.dtype == np.float16  # 48 frames -> 12, 64 px -> 8
        ids = tok(s["txt"], return_tensors="pt").input_ids
        assert emb.shape == (ids.shape[1], 64) and meta["latents"]["text_len"] == ids.shape[1]
        with torch.no_grad():
            ref = model(input_ids=ids).last_hidden_state[0].numpy()
        # Batched with right padding, sliced to the real tokens: same as encoding the caption alone.
        np.testing.assert_allclose(emb.astype(np.float32), ref, atol=2e-2, rtol=2e-2)
        assert meta["latents"]["latents_shape"] == [4, 12, 8, 8] and meta["caption"] == s["txt"]
    raw = (setup["latents"] / "train" / index.shards[0].name).read_bytes()
    assert b"pickle" not in raw and b"\x80\x04\x95" not in raw  # npy with allow_pickle=False


def test_latent_shards_load_in_datasets_and_the_loader(setup: dict[str, Any]) -> None:
    import datasets

    from training.data.loader import ShardDataModule

    files = [str(p) for p in sorted((setup["latents"] / "train").glob("*.tar"))]
    ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train",
                               cache_dir=str(setup["tmp"] / "hf"))  # fmt: skip
    assert ds.num_rows == 4 and np.asarray(ds[0]["latents.npy"]).shape == (4, 12, 8, 8)
    dm = ShardDataModule(setup["latents"], batch_size=2, num_workers=0, resampled=False, on_error="raise")
    batch = next(iter(dm.loader()))
    assert batch["latents"].shape == (2, 4, 12, 8, 8) and batch["text_emb"].shape[::2] == (2, 64)
    lengths = [m["latents"]["text_len"] for m in batch["meta"]]
    assert batch["text_mask"].sum(1).tolist() == lengths and batch["text_emb"].shape[1] == max(lengths)


def test_rerun_reuses_finished_shards(setup: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert cli([*setup["argv"], "--runner", "local"], "jobs.encode") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shards_written"] == 0 and summary["shards_reused"] == 2


def test_real_models_are_the_defaults_and_gpu_is_optional(setup: dict[str, Any], tmp_path: Path) -> None:
    cfg = EncodeConfig()
    assert (cfg.text_encoder, cfg.text_max_length) == ("llm-jp/llm-jp-3-1.8b", 512)
    assert (cfg.vae, cfg.vae_subfolder) == ("THUDM/CogVideoX-2b", "vae")
    if not torch.cuda.is_available():
        argv = [*setup["argv"], "--device", "cuda", "--runner", "local"]
        argv[argv.index("--out") + 1] = str(tmp_path)
        assert cli(argv, "jobs.encode") == 2  # a clear error, not a crash


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_encode_matches_cpu(setup: dict[str, Any]) -> None:
    from training.data.encode import Encoders

    frames = np.random.default_rng(0).integers(0, 255, (48, 64, 64, 3), dtype=np.uint8)
    base = {"vae": str(setup["vae"]), "vae_subfolder": None, "text_encoder": str(setup["text"])}
    cpu = Encoders(EncodeConfig(**base, device="cpu"))
    gpu = Encoders(EncodeConfig(**base, device="cuda", dtype="float32"))
    np.testing.assert_allclose(
        cpu.encode_videos([frames])[0].astype(np.float32),
        gpu.encode_videos([frames])[0].astype(np.float32),
        atol=1e-2,
    )
    assert gpu.encode_texts(CAPTIONS)[1].shape == cpu.encode_texts(CAPTIONS)[1].shape


@pytest.mark.slow
def test_ray_actor_pool(setup: dict[str, Any], tmp_path: Path, local_ray: Any) -> None:
    argv = [*setup["argv"], "--runner", "ray"]
    argv[argv.index("--out") + 1] = str(tmp_path)
    assert cli(argv, "jobs.encode") == 0
    assert len(list((tmp_path / "tiny" / "train").glob("*.tar"))) == 2
    a = np.load(io.BytesIO(_member(tmp_path / "tiny" / "train" / "000000.tar", ".latents.npy")))
    b = np.load(io.BytesIO(_member(setup["latents"] / "train" / "000000.tar", ".latents.npy")))
    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=1e-3)


def _member(path: Path, suffix: str) -> bytes:
    import tarfile

    with tarfile.open(path) as tf:
        m = next(m for m in tf.getmembers() if m.name.endswith(suffix))
        return tf.extractfile(m).read()  # type: ignore[union-attr]


def test_encode_and_the_trainer_share_one_text_encoder(setup: dict[str, Any]) -> None:
    from training.config import TextConfig
    from training.data.encode import Encoders
    from training.modeling import TextEncoder

    enc = Encoders(EncodeConfig(vae=str(setup["vae"]), vae_subfolder=None, text_encoder=str(setup["text"]),
                                text_max_length=16, store_dtype="float32"))  # fmt: skip
    assert isinstance(enc.text, TextEncoder) and enc.text.cfg.hidden_layer == -1
    stored = enc.encode_texts(CAPTIONS)
    # The trainer's padded encoding of the same captions (what the sampler gives the DiT) holds the
    # stored embeddings in its real slots and zeros in the padding.
    emb, mask = TextEncoder(TextConfig(model=str(setup["text"]), max_length=16), "cpu", torch.float32).encode(
        CAPTIONS
    )
    for i, s in enumerate(stored):
        n = s.shape[0]
        assert int(mask[i].sum()) == n
        np.testing.assert_allclose(emb[i, :n].numpy(), s, atol=1e-4, rtol=1e-4)
        assert not emb[i, n:].any()


def _first_meta(latents: Path) -> tuple[str, dict[str, Any]]:
    """(shard path, json) of the first sample of the first train shard, as the trainer reads it."""
    import webdataset as wds

    url = str(sorted((latents / "train").glob("*.tar"))[0])
    return url, next(iter(wds.WebDataset(url, shardshuffle=False).decode()))["json"]


def test_latent_shards_record_their_vae_and_a_run_with_another_is_refused(setup: dict[str, Any]) -> None:
    from training.config import VAEConfig
    from training.data.sample_format import SampleMeta
    from training.vae import check_latent_vae

    url, meta = _first_meta(setup["latents"])
    lat = meta["latents"]
    assert lat["vae"] == str(setup["vae"])
    assert (lat["vae_cls"], lat["vae_preset"], lat["vae_revision"], lat["vae_compression"]) == (
        "diffusers:AutoencoderKLCogVideoX", "cogvideox", None, [8, 4]
    )  # fmt: skip
    SampleMeta.model_validate(meta)  # the record is the schema's (sample_json.v1, optional fields)
    vae = str(setup["vae"])
    check_latent_vae(meta, VAEConfig(model=vae, subfolder=None), url)  # the encoding VAE: accepted
    check_latent_vae(meta, VAEConfig(cls="cogvideox", model=vae + "/", subfolder=None), url)
    with pytest.raises(ValueError) as e:
        check_latent_vae(meta, VAEConfig(cls="ltx", model=vae, subfolder=None), url)
    msg = str(e.value)
    assert url in msg and meta["key"] in msg and "class differ" in msg
    assert "cogvideox (diffusers:AutoencoderKLCogVideoX" in msg
    assert "ltx (diffusers:AutoencoderKLLTXVideo" in msg
    assert "8x space / 4x time" in msg
    with pytest.raises(ValueError, match="weights differ"):
        check_latent_vae(meta, VAEConfig(), url)  # THUDM/CogVideoX-2b/vae, not the folder that encoded
    with pytest.raises(ValueError, match="revision differ"):
        check_latent_vae(meta, VAEConfig(model=vae, subfolder=None, revision="v2"), url)
    # shards encoded before the class was recorded: accepted with a warning, checked on the path only
    recorded = ("vae_cls", "vae_preset", "vae_revision", "vae_compression")
    old = {**meta, "latents": {k: v for k, v in lat.items() if k not in recorded}}
    SampleMeta.model_validate(old)
    with pytest.warns(UserWarning, match="encoded before vjp encode recorded the VAE class"):
        check_latent_vae(old, VAEConfig(cls="ltx", model=vae, subfolder=None), url)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="class not recorded"):
        check_latent_vae(old, VAEConfig(), url)
    with pytest.raises(ValueError, match="no latents info"):
        check_latent_vae({k: v for k, v in meta.items() if k != "latents"}, VAEConfig(), url)
