"""The trainer end to end on tiny models over shards made by `vjp shard` (and `vjp encode`):
torchrun with 2 gloo processes (overfit, exact resume after SIGKILL), Ray Train, stage 2 from
stage 1, non-finite steps, latent shards, and the sampler."""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch

from tests.train_fixtures import (
    descendants,
    losses,
    make_tiny_checkpoint,
    make_tiny_shards,
    tiny_config,
    torchrun,
    two_process_run,
    wait_for_checkpoint,
    wait_gone,
)
from training.config import load_train_config


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_tiny_shards(tmp_path_factory.mktemp("train"), n=4, encode=True)


def _safetensors(path: Path, weights: str = "ema") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    export = path / "export" / ("raw" if weights == "raw" else "")
    return load_file(str(export / "transformer" / "diffusion_pytorch_model.safetensors"))


OVERFIT = {
    "steps": 40,
    "vae__posterior": "mean",
    "flow__caption_dropout": 0.0,
    "optim__lr": 3e-3,
    "checkpoint__every": 10,
    "checkpoint__keep_last": 5,
}


@pytest.fixture(scope="module")
def uninterrupted(data: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """40 steps on 2 processes."""
    return two_process_run(tmp_path_factory.mktemp("run_a"), data["models"], data["shards"], **OVERFIT)


@pytest.mark.slow
def test_torchrun_two_processes_overfit_a_tiny_set(uninterrupted: dict[str, Any]) -> None:
    run = uninterrupted["run"]
    loss = list(losses(run).values())
    assert len(loss) == 40
    first, last = np.mean(loss[:5]), np.mean(loss[-8:])
    assert last < 0.6 * first, (first, last)  # it learns the 4 clips
    summary = json.loads((run / "summary.json").read_text())
    assert summary == uninterrupted["summary"]
    assert summary["world_size"] == 2 and summary["steps"] == 40 and summary["data"] == "pixels"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"lr", "grad_norm", "samples_per_s", "tokens_per_s", "data_wait", "peak_mem_gb"} <= set(rows[0])
    assert all(0.0 <= r["data_wait"] <= 1.0 and r["samples_per_s"] > 0 for r in rows)
    ckpt = Path(summary["checkpoint"])
    assert ckpt.name == "step_000040" and (ckpt / "ranks" / "rank_00001.json").exists()
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000040"


@pytest.mark.slow
def test_sigkill_and_resume_repeat_the_uninterrupted_run(
    data: dict[str, Any], uninterrupted: dict[str, Any], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    args = ["--config", str(uninterrupted["config"]), "--shards", str(data["shards"]), "--out", str(run)]
    proc = torchrun(2, args, wait=False)
    wait_for_checkpoint(proc, run, 10)
    tree = descendants(proc.pid)  # torchrun, both ranks (each in its own session), their workers
    assert len(tree) >= 3, tree
    # What a user does: kill -9 the launcher's process group. The ranks are not in it; they must
    # notice their launcher died (training.orphan) and die too, before the resume starts.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not wait_gone(tree), "ranks outlived their SIGKILLed torchrun"
    killed_at = max(losses(run))
    assert killed_at < 40, "the run finished before it was killed"
    r = torchrun(2, [*args, "--resume"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resumed from" in r.stdout
    a, b = losses(uninterrupted["run"]), losses(run)
    assert sorted(b) == list(range(1, 41))
    for step in range(1, 41):
        assert b[step] == pytest.approx(a[step], rel=1e-4, abs=1e-6), f"step {step}: {a[step]} vs {b[step]}"
    # Weights and EMA: the exported EMA of both runs' last checkpoint are the same.
    ema_a = _safetensors(uninterrupted["run"] / "checkpoints" / "step_000040")
    ema_b = _safetensors(run / "checkpoints" / "step_000040")
    assert ema_a.keys() == ema_b.keys()
    for k in ema_a:
        torch.testing.assert_close(ema_a[k], ema_b[k], rtol=1e-4, atol=1e-6)


def _rewound_copy(src: Path, run: Path, step: int) -> Path:
    """A copy of a finished run folder as it was at checkpoint `step` (later checkpoints removed)."""
    import shutil

    shutil.copytree(src, run)
    (run / "checkpoints" / "latest").write_text(f"step_{step:06d}\n")
    for ckpt in (run / "checkpoints").glob("step_*"):
        if int(ckpt.name.removeprefix("step_")) > step:
            shutil.rmtree(ckpt)
    return run


@pytest.mark.slow
def test_resume_on_another_world_size_is_refused(
    data: dict[str, Any], uninterrupted: dict[str, Any], tmp_path: Path
) -> None:
    from training.train import main

    run = _rewound_copy(uninterrupted["run"], tmp_path / "run", 10)

    code = main(
        [
            "--config",
            str(uninterrupted["config"]),
            "--shards",
            str(data["shards"]),
            "--out",
            str(run),
            "--resume",
        ]
    )
    assert code == 2  # one process cannot continue a 2-rank stream exactly


@pytest.mark.slow
def test_allow_reshard_continues_a_two_rank_run_on_one(
    data: dict[str, Any], uninterrupted: dict[str, Any], tmp_path: Path
) -> None:
    from training.train import main

    run = _rewound_copy(uninterrupted["run"], tmp_path / "run", 20)
    args = ["--config", str(uninterrupted["config"]), "--shards", str(data["shards"]), "--out", str(run)]
    assert main([*args, "--resume", "--set", "parallel.allow_reshard=true"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["steps"] == 40
    a, b = losses(uninterrupted["run"]), losses(run)
    assert sorted(b) == list(range(1, 41))
    assert all(b[s] == a[s] for s in range(1, 21))  # the 2-rank steps are kept as they were
    # The one rank continued from the 2-rank weights: its losses stay at the trained level, far
    # below a fresh model's first steps (the overfit run's first losses).
    first = np.mean([a[s] for s in range(1, 6)])
    assert np.mean([b[s] for s in range(21, 41)]) < 0.6 * first
    rank0 = json.loads((run / "checkpoints" / "step_000040" / "ranks" / "rank_00000.json").read_text())
    assert not (run / "checkpoints" / "step_000040" / "ranks" / "rank_00001.json").exists()
    assert rank0["position"]["consumed"] > 20 * 2  # it took up the stream past its share of 20 steps


def test_exported_ema_tracks_the_trained_weights(data: dict[str, Any], tmp_path: Path) -> None:
    from training.modeling import build_transformer
    from training.train import train

    config = tiny_config(tmp_path / "t.yaml", data["models"], steps=12, checkpoint__every=12,
                         optim__ema_decay=0.9999, parallel__activation_checkpointing=False)  # fmt: skip
    cfg = load_train_config(config)
    summary = train(cfg, str(data["latents"]), str(tmp_path / "run"))
    ckpt = Path(summary["checkpoint"])
    ema, raw = _safetensors(ckpt), _safetensors(ckpt, "raw")
    torch.manual_seed(cfg.seed)  # the trainer's initial weights
    init = build_transformer(cfg, 64, tuple(summary["latent_shape"])).state_dict()
    assert ema.keys() == raw.keys() == init.keys()

    def dist(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> float:
        return float(sum(((x[k] - y[k]) ** 2).sum() for k in x) ** 0.5)

    moved = dist(raw, init)
    assert moved > 0.1  # training moved the weights
    # 0.9999 without warmup would leave the EMA at 99.9% init; with it the EMA is near the weights.
    assert dist(ema, raw) < 0.35 * moved and dist(ema, init) > 0.65 * moved
    meta = json.loads((ckpt / "export" / "raw" / "videojp.json").read_text())
    assert meta["weights"] == "raw" and meta["step"] == 12


def test_a_run_folder_with_checkpoints_needs_resume(
    data: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobs.train import add_arguments, run

    config = tiny_config(tmp_path / "t.yaml", data["models"], steps=2, checkpoint__every=2)
    p = argparse.ArgumentParser()
    add_arguments(p)
    argv = ["--config", str(config), "--shards", str(data["shards"]), "--out", str(tmp_path / "run")]
    assert run(p.parse_args(argv)) == 0
    assert run(p.parse_args(argv)) == 2
    assert "--resume" in capsys.readouterr().err
    assert run(p.parse_args([*argv, "--resume"])) == 0  # finished: returns at once


def test_non_finite_steps_are_skipped_then_stop_the_run(
    data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training import train as train_mod

    real = train_mod.flow.flow_loss
    calls = {"n": 0}

    def nan_at_step_2(*args: Any) -> torch.Tensor:
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(train_mod.flow, "flow_loss", nan_at_step_2)
    config = tiny_config(tmp_path / "t.yaml", data["models"], steps=4, checkpoint__every=4)
    summary = train_mod.train(load_train_config(config), str(data["latents"]), str(tmp_path / "run"))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows] == [False, True, False, False]
    assert summary["skipped_steps"] == 1 and summary["steps"] == 4
    assert all(np.isfinite(r["loss"]) for i, r in enumerate(rows) if i != 1)

    monkeypatch.setattr(train_mod.flow, "flow_loss", lambda *a: real(*a) * float("inf"))
    config = tiny_config(tmp_path / "t2.yaml", data["models"], steps=10, max_nonfinite_in_a_row=3)
    with pytest.raises(train_mod.NonFiniteError, match="3 non-finite steps in a row"):
        train_mod.train(load_train_config(config), str(data["latents"]), str(tmp_path / "run2"))


def test_latent_shards_train_through_the_same_loop(data: dict[str, Any], tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "t.yaml", data["models"], steps=3, checkpoint__every=3, grad_accum=2)
    from training.train import train

    summary = train(load_train_config(config), str(data["latents"]), str(tmp_path / "run"))
    assert summary["data"] == "latents" and summary["latent_shape"] == [4, 4, 4, 4]
    assert all(np.isfinite(v) for v in losses(tmp_path / "run").values())
    rank0 = json.loads((Path(summary["checkpoint"]) / "ranks" / "rank_00000.json").read_text())
    assert rank0["position"]["consumed"] == 3 * 2 * 2  # steps x micro-steps x batch
    assert rank0["position"]["epoch"] == 3  # 4 samples per epoch on one rank
    # the same shards under another VAE are refused before any step, naming the shard
    config = tiny_config(tmp_path / "ltx.yaml", data["models"], steps=1, vae__cls="ltx")
    with pytest.raises(ValueError, match=r"train/[^ ]+\.tar .*encoded by VAE cogvideox"):
        train(load_train_config(config), str(data["latents"]), str(tmp_path / "ltx_run"))
    assert not (tmp_path / "ltx_run" / "metrics.jsonl").exists()


def test_bf16_compute_keeps_norms_in_fp32(data: dict[str, Any], tmp_path: Path) -> None:
    from diffusers.models.normalization import FP32LayerNorm

    from training.modeling import build_transformer
    from training.parallel import keep_norms_fp32
    from training.tiny import TINY_TRANSFORMER
    from training.train import train

    cfg = load_train_config(None, [f"model.transformer_config={json.dumps(TINY_TRANSFORMER)}"])
    model = build_transformer(cfg, 64, (2, 4, 4, 4))
    n = keep_norms_fp32(model)
    assert n >= 2 * 3 and all(type(m) is not torch.nn.LayerNorm for m in model.modules())
    assert any(isinstance(m, FP32LayerNorm) for m in model.modules())
    # The bf16 path (autocast without FSDP) trains on the CPU too.
    config = tiny_config(tmp_path / "t.yaml", data["models"], steps=2, checkpoint__every=2,
                         parallel__precision="bf16")  # fmt: skip
    summary = train(load_train_config(config), str(data["latents"]), str(tmp_path / "run"))
    assert summary["skipped_steps"] == 0 and np.isfinite(summary["final_loss"])


def test_stage2_starts_from_stage1_weights(data: dict[str, Any], tmp_path: Path) -> None:
    from training.train import train

    s1 = tiny_config(tmp_path / "s1.yaml", data["models"], steps=3, checkpoint__every=3, optim__lr=1e-2)
    train(load_train_config(s1), str(data["latents"]), str(tmp_path / "stage1"))
    # Stage 2 at another resolution (48x32 pixel clips), from stage 1, with a fresh optimizer.
    root = tmp_path / "s2data"
    root.mkdir()
    from tests.test_shards import make_clips, shard_local, write_config

    specs = [
        {
            "clip_id": f"w{i}_0000000_0000030",
            "video_id": f"w{i}",
            "caption": "夜の街を走る電車。",
            "width": 64,
            "height": 40,
            "frames": 24,
            "fps": 8,
        }
        for i in range(2)
    ]
    stage2 = {"width": 48, "height": 32, "frames": 16, "fps": 8.0, "target_shard_bytes": None}
    shard_cfg = write_config(
        root / "c.yaml", {"s2": stage2}, captions={"fallback": "source_caption"}, split={"eval_fraction": 0.0}
    )
    assert shard_local(make_clips(root / "cur", specs), "s2", root / "shards", shard_cfg) == 0
    s2 = tiny_config(
        tmp_path / "s2.yaml",
        data["models"],
        steps=1,
        checkpoint__every=1,
        optim__lr=1e-9,
        optim__ema_decay=0.999999,
        model__init_from=str(tmp_path / "stage1"),
    )
    summary = train(load_train_config(s2), str(root / "shards" / "s2"), str(tmp_path / "stage2"))
    assert summary["latent_shape"] == [4, 4, 4, 6] and summary["steps"] == 1
    # The stage-1 trained weights, carried over (the EMA restarts its warmup on them).
    a = _safetensors(tmp_path / "stage1" / "checkpoints" / "step_000003", "raw")
    b = _safetensors(Path(summary["checkpoint"]), "raw")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4)
    scratch = tiny_config(tmp_path / "s3.yaml", data["models"], steps=1, checkpoint__every=1, optim__lr=1e-9)
    c = _safetensors(
        Path(
            train(load_train_config(scratch), str(root / "shards" / "s2"), str(tmp_path / "s3"))["checkpoint"]
        )
    )
    assert any(not torch.allclose(a[k], c[k], atol=1e-4) for k in a)  # (a fresh init would differ)


@pytest.mark.slow
def test_ray_train_two_workers(data: dict[str, Any], tmp_path: Path, local_ray: Any) -> None:
    from jobs.train import train_from_config

    config = tiny_config(tmp_path / "t.yaml", data["models"], steps=3, checkpoint__every=3)
    summary = train_from_config(
        str(config),
        str(data["latents"]),
        str(tmp_path / "run"),
        launcher="ray",
        num_workers=2,
        gpus_per_worker=0.0,
    )
    assert summary["world_size"] == 2 and summary["steps"] == 3
    assert (Path(summary["checkpoint"]) / "ranks" / "rank_00001.json").exists()
    assert len(losses(tmp_path / "run")) == 3


# ---- sampler ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _read_mp4(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_vjp_sample_writes_the_requested_video(checkpoint: Path, tmp_path: Path) -> None:
    from jobs.sample import add_arguments, run

    p = argparse.ArgumentParser()
    add_arguments(p)
    out = tmp_path / "v.mp4"
    argv = [
        "--ckpt",
        str(checkpoint),
        "--prompt",
        "夕暮れの海辺を柴犬が走っている",
        "--out",
        str(out),
        "--steps",
        "3",
        "--seed",
        "7",
    ]
    assert run(p.parse_args(argv)) == 0
    frames = _read_mp4(out)
    assert frames.shape == (16, 32, 32, 3)  # the training clips' frames and size
    assert (
        run(
            p.parse_args(
                [
                    *argv[:-6],
                    "--out",
                    str(tmp_path / "w.mp4"),
                    "--steps",
                    "3",
                    "--seed",
                    "7",
                    "--frames",
                    "8",
                    "--height",
                    "48",
                    "--width",
                    "64",
                ]
            )
        )
        == 0
    )
    assert _read_mp4(tmp_path / "w.mp4").shape == (8, 48, 64, 3)
    prompts = tmp_path / "p.txt"
    prompts.write_text("夜の街を走る電車。\n\n海辺の波\n", encoding="utf-8")
    assert (
        run(
            p.parse_args(
                [
                    "--ckpt",
                    str(checkpoint.parent.parent),
                    "--prompts",
                    str(prompts),
                    "--out",
                    str(tmp_path / "many"),
                    "--steps",
                    "2",
                ]
            )
        )
        == 0
    )
    rows = [json.loads(x) for x in (tmp_path / "many" / "prompts.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["夜の街を走る電車。", "海辺の波"]
    assert (tmp_path / "many" / "000001.mp4").exists()


def test_a_fixed_seed_gives_the_same_video(checkpoint: Path) -> None:
    from training.sample import Sampler

    s = Sampler.from_checkpoint(str(checkpoint))
    assert s.settings["steps"] == 4 and s.settings["guidance"] == 2.5  # from the config's sample section
    a, b = s.generate(["海辺の波", "夜の街"], [3, 4], steps=3)
    [a2] = s.generate(["海辺の波"], [3], steps=3)  # alone, not in a batch: still the same video
    assert a.dtype == np.uint8 and a.shape == (16, 32, 32, 3)
    np.testing.assert_array_equal(a, a2)
    assert not np.array_equal(a, b)
    [c] = s.generate(["海辺の波"], [3], steps=3, guidance=7.0)
    assert not np.array_equal(a, c)  # guidance acts


def test_vjp_sample_raw_weights(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from jobs.sample import add_arguments, export_folder, run
    from training.sample import Sampler

    p = argparse.ArgumentParser()
    add_arguments(p)
    argv = ["--prompt", "海辺の波", "--steps", "2", "--weights", "raw"]
    assert run(p.parse_args(["--ckpt", str(checkpoint), "--out", str(tmp_path / "r.mp4"), *argv])) == 0
    assert _read_mp4(tmp_path / "r.mp4").shape == (16, 32, 32, 3)
    ema_only = tmp_path / "export"
    shutil.copytree(checkpoint / "export", ema_only, ignore=shutil.ignore_patterns("raw"))
    assert run(p.parse_args(["--ckpt", str(ema_only), "--out", str(tmp_path / "x.mp4"), *argv])) == 2
    assert "export_raw=false" in capsys.readouterr().err

    ema = Sampler(export_folder(str(checkpoint), "ema"))
    raw = Sampler(export_folder(str(checkpoint), "raw"))
    assert export_folder(str(checkpoint), "raw").endswith("export/raw")
    [a], [b] = ema.generate(["海辺の波"], [3], steps=2), raw.generate(["海辺の波"], [3], steps=2)
    assert a.shape == b.shape and not np.array_equal(a, b)  # two different weight sets


@pytest.mark.slow
def test_overfit_one_latent_then_the_sampler_draws_it_from_noise(tmp_path: Path) -> None:
    """One training latent: the best velocity field carries every noise to it. Sampling at guidance 1
    through the real sampler must land on it; a flipped direction, time map or shift would not."""
    import webdataset as wds

    from jobs.sample import export_folder
    from training.sample import Sampler
    from training.train import train

    one = make_tiny_shards(tmp_path / "data", n=1, encode=True)
    config = tiny_config(tmp_path / "t.yaml", one["models"], steps=120, checkpoint__every=120,
                         flow__caption_dropout=0.0, optim__lr=5e-3, data__batch_size=4,
                         parallel__activation_checkpointing=False)  # fmt: skip
    summary = train(load_train_config(config), str(one["latents"]), str(tmp_path / "run"))
    [tar] = sorted((one["latents"] / "train").glob("*.tar"))
    sample = next(iter(wds.WebDataset(str(tar), shardshuffle=False).decode()))
    sampler = Sampler(export_folder(summary["checkpoint"], "raw"), "cpu")
    assert sampler.settings["shift"] == 2.0  # flow.shift auto at 4x4 latents, 4 latent frames

    def pixels(latents: torch.Tensor) -> np.ndarray:
        video = sampler.vae.decode(latents)[0]
        return ((video.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()

    lat = torch.from_numpy(sample["latents.npy"].astype(np.float32)).permute(1, 0, 2, 3)[None]
    target = pixels(lat * sampler.vae.scaling_factor)
    elsewhere = pixels(torch.randn(lat.shape, generator=torch.Generator().manual_seed(5)))
    far = np.abs(elsewhere - target).mean()
    for seed in (0, 1):
        [video] = sampler.generate([sample["txt"]], [seed], steps=20, guidance=1.0)
        err = np.abs(video.astype(np.float64) - target).mean()
        assert err < 0.4 * far, (seed, err, far)


def test_sampler_needs_an_export(tmp_path: Path) -> None:
    from training.sample import Sampler

    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        Sampler.from_checkpoint(str(tmp_path))
