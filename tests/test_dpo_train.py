"""Video-DPO end to end: `vjp pairs` (pair shards from a JSONL or from `vjp compare` votes) and
`vjp train` with `train.objective: dpo` on tiny models (CPU, gloo): synthetic preferences (chosen =
a clean clip, rejected = the same clip with heavy noise) are learned on 2 processes, a SIGKILLed DPO
run resumes exactly, and a run from votes exports a checkpoint `vjp sample` loads."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.test_shards import cli, write_config
from tests.train_fixtures import (
    TINY_STAGE,
    descendants,
    encoder_argv,
    losses,
    tiny_config,
    torchrun,
    two_process_run,
    wait_for_checkpoint,
    wait_gone,
)
from training.config import load_train_config
from training.data.pair_format import PairIndex
from training.data.pair_shards import read_rows
from training.tiny import build_tiny_models

PROMPTS = ["夜の街を走る電車。", "海辺に打ち寄せる波と夕暮れの空。"]
N_PAIRS = 8


def synthetic_pair(i: int, frames: int = 16, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(clean, corrupted) uint8 [T, H, W, 3]: a smooth moving pattern, and it plus heavy noise."""
    t = np.arange(frames)[:, None, None]
    y, x = np.arange(size)[None, :, None], np.arange(size)[None, None, :]
    r = 128 + 100 * np.sin(x / 5 + t / 3 + i) + 0 * y
    g = 128 + 100 * np.cos(y / 6 - t / 4 + 2 * i) + 0 * x
    b = np.full_like(r, 40.0 * (i % 5))
    clean = np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8)
    noise = np.random.default_rng(i).integers(-90, 90, clean.shape)
    return clean, (clean.astype(int) + noise).clip(0, 255).astype(np.uint8)


def write_pair_videos(folder: Path, n: int) -> list[dict[str, str]]:
    """n pairs of mp4s at the tiny stage's exact size (as `vjp sample` writes candidates)."""
    from training.data.shard_writer import encode_mp4

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        clean, noisy = synthetic_pair(i)
        (folder / f"c{i}.mp4").write_bytes(encode_mp4(clean, TINY_STAGE["fps"]))
        (folder / f"r{i}.mp4").write_bytes(encode_mp4(noisy, TINY_STAGE["fps"]))
        lines.append({"prompt": PROMPTS[i % 2], "chosen": f"{folder.name}/c{i}.mp4",
                      "rejected": f"{folder.name}/r{i}.mp4"})  # fmt: skip
    return lines


def vjp_pairs(argv: list[str]) -> int:
    return cli(argv, "jobs.pairs")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """8 good pairs and 3 bad lines -> latent pair shards (3 pairs per shard) by `vjp pairs --encode`."""
    from training.data.shard_writer import encode_mp4

    root = tmp_path_factory.mktemp("dpo")
    models = build_tiny_models(root / "models")
    lines: list[dict[str, str]] = write_pair_videos(root / "v", N_PAIRS)
    (root / "v" / "text.mp4").write_bytes(b"not a video")
    short, _ = synthetic_pair(0, frames=8)
    (root / "v" / "short.mp4").write_bytes(encode_mp4(short, 8.0))
    lines[2:2] = [
        {"prompt": "森", "chosen": "v/c0.mp4", "rejected": "v/missing.mp4"},
        {"prompt": "森", "chosen": "v/c0.mp4", "rejected": "v/text.mp4"},
        {"prompt": "森", "chosen": "v/short.mp4", "rejected": "v/r0.mp4"},
    ]
    jsonl = root / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    config = write_config(root / "shard.yaml", {"tiny": TINY_STAGE})
    encode = ["--encode", *encoder_argv(models)]
    argv = ["--from-jsonl", str(jsonl), "--stage", "tiny", "--config", str(config), "--pairs-per-shard", "3"]
    assert vjp_pairs([*argv, "--out", str(root / "P"), *encode]) == 0
    return {"root": root, "models": root / "models", "jsonl": jsonl, "config": config, "argv": argv,
            "encode": encode, "pairs": root / "P" / "tiny"}  # fmt: skip


def test_vjp_pairs_writes_indexed_shards_and_names_bad_pairs(
    pairs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.stream import RankStream, SampleTable

    out = pairs["pairs"]
    index = PairIndex.model_validate_json((out / "__index__" / "train.json").read_text())
    assert index.kind == "latents" and index.samples == N_PAIRS and index.errors == 3
    assert [e.samples for e in index.shards] == [3, 3, 2] and index.sample_table is not None
    rows = read_rows(str(out))
    assert [r.status for r in rows].count("ok") == N_PAIRS and len(rows) == N_PAIRS + 3
    bad = [r for r in rows if r.status == "error"]  # in input order, each naming its file and why
    assert [r.source.rsplit(":", 1)[1] for r in bad] == ["3", "4", "5"]
    assert "missing.mp4" in bad[0].reason and "does not exist" in bad[0].reason
    assert "text.mp4" in bad[1].reason and "unreadable" in bad[1].reason
    assert "short.mp4" in bad[2].reason and "too_short" in bad[2].reason
    # the trainer's seekable stream reads a pair: both latents and the prompt's embedding
    table = SampleTable.build(str(out), "train")
    item = RankStream(table, 0, 0, 1)[0]
    assert item["latents"].shape == item["rejected_latents"].shape == (4, 4, 4, 4)
    assert not torch.equal(item["latents"], item["rejected_latents"])
    assert item["caption"] in PROMPTS and item["text_emb"].shape[1] == 64
    assert item["meta"]["chosen"]["passthrough"] and item["meta"]["latents"]["vae_scaling_factor"] > 0
    # the latents record which VAE made them, as vjp encode's do: a run's VAE check reads pairs alike
    from training.vae import check_latent_vae

    assert item["meta"]["latents"]["vae_preset"] == "cogvideox"
    check_latent_vae(item["meta"], load_train_config(tiny_config(tmp_path / "t.yaml", pairs["models"])).vae)
    # resumable and deterministic: a copy that lost a shard (and its index) gets it rewritten alone,
    # byte for byte the same (the encoder's floats too), and the same index
    again = tmp_path / "P2"
    shutil.copytree(out.parent, again)
    index_bytes = (out / "__index__" / "train.json").read_bytes()
    (again / "tiny" / "train" / "000001.tar").unlink()
    (again / "tiny" / "__index__" / "train.json").unlink()
    from jobs.pairs import add_arguments, run

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert run(p.parse_args([*pairs["argv"], "--out", str(again), *pairs["encode"]])) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shards_written"] == 1 and summary["shards_reused"] == 2
    assert (again / "tiny" / "__index__" / "train.json").read_bytes() == index_bytes
    assert sha(again / "tiny" / "train" / "000001.tar") == sha(out / "train" / "000001.tar")


def test_pixel_pairs_are_fitted_to_the_stage(pairs: dict[str, Any], tmp_path: Path) -> None:
    """Videos already at the stage go in byte for byte; others are windowed, cropped and scaled."""
    from training.data.sample_format import decode_mp4
    from training.data.shard_writer import encode_mp4
    from training.stream import RankStream, SampleTable

    _, noisy = synthetic_pair(3, frames=24, size=48)  # 48x48, 24 frames: crop/scale, a window
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "big.mp4").write_bytes(encode_mp4(noisy[:, :40], 8.0))
    shutil.copy(pairs["root"] / "v" / "c1.mp4", tmp_path / "v" / "c1.mp4")
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"prompt": PROMPTS[0], "chosen": "v/c1.mp4", "rejected": "v/big.mp4"}) + "\n")
    argv = ["--from-jsonl", str(jsonl), "--stage", "tiny", "--config", str(pairs["config"])]
    assert vjp_pairs([*argv, "--out", str(tmp_path / "P")]) == 0
    table = SampleTable.build(str(tmp_path / "P" / "tiny"), "train")
    raw = RankStream(table, 0, 0, 1).raw(0)
    assert raw["chosen.mp4"] == (tmp_path / "v" / "c1.mp4").read_bytes()
    assert decode_mp4(raw["rejected.mp4"]).shape == (16, 32, 32, 3)
    meta = json.loads(raw["json"])
    assert not meta["rejected"]["passthrough"] and meta["rejected"]["region"] == [4, 0, 44, 40]  # center crop
    assert len(meta["rejected"]["frame_indices"]) == 16
    # the same inputs, the same shard bytes (passthrough here; x264 re-encodes of tiny clips are
    # seen to differ in ~5% of runs, README)
    assert vjp_pairs([*argv, "--out", str(tmp_path / "Q")]) == 0
    table_q = SampleTable.build(str(tmp_path / "Q" / "tiny"), "train")
    assert RankStream(table_q, 0, 0, 1).raw(0)["chosen.mp4"] == raw["chosen.mp4"]
    # an input with no usable pair: exit 2, its error rows, and no index left to train on
    jsonl.write_text(
        json.dumps({"prompt": PROMPTS[0], "chosen": "v/c1.mp4", "rejected": "v/gone.mp4"}) + "\n"
    )
    assert vjp_pairs([*argv, "--out", str(tmp_path / "Q")]) == 2
    [row] = read_rows(str(tmp_path / "Q" / "tiny"))
    assert row.status == "error" and "gone.mp4" in (row.reason or "")
    assert not (tmp_path / "Q" / "tiny" / "__index__" / "train.json").exists()
    item = RankStream(table, 0, 0, 1)[0]
    assert item["video"].shape == item["rejected_video"].shape == (16, 3, 32, 32)


def test_objective_and_shards_must_match(pairs: dict[str, Any], tmp_path: Path) -> None:
    from tests.train_fixtures import make_tiny_shards
    from training.train import main

    config = tiny_config(tmp_path / "t.yaml", pairs["models"], steps=1)
    assert main(["--config", str(config), "--shards", str(pairs["pairs"]), "--out", str(tmp_path / "a")]) == 2
    stage = make_tiny_shards(tmp_path / "data", n=2)
    dpo = tiny_config(tmp_path / "d.yaml", pairs["models"], steps=1, objective="dpo")
    assert main(["--config", str(dpo), "--shards", str(stage["shards"]), "--out", str(tmp_path / "b")]) == 2


DPO = {
    "steps": 20,
    "objective": "dpo",
    "dpo__beta": 50.0,
    "flow__caption_dropout": 0.0,
    "optim__lr": 3e-3,
    "checkpoint__every": 5,
    "checkpoint__keep_last": 5,
}


@pytest.fixture(scope="module")
def dpo_run(pairs: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """20 DPO steps on 2 processes."""
    return two_process_run(tmp_path_factory.mktemp("dpo_run"), pairs["models"], pairs["pairs"], **DPO)


def metrics(run: Path) -> dict[int, dict[str, Any]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r for r in rows}


def _pair_tensors(stage: Path, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every pair of the shards as the trainer prepares them: x1 chosen/rejected, text and mask."""
    from training.data.loader import collate
    from training.modeling import pad_text
    from training.stream import RankStream, SampleTable

    stream = RankStream(SampleTable.build(str(stage), "train"), 0, 0, 1)
    b = collate([stream[i] for i in range(len(stream))])
    emb, mask = pad_text(b["text_emb"], b["text_mask"], 16)
    side = [b[k].permute(0, 2, 1, 3, 4) * scale for k in ("latents", "rejected_latents")]
    return side[0], side[1], emb, mask


@pytest.mark.slow
def test_dpo_on_two_processes_learns_the_synthetic_preference(
    pairs: dict[str, Any], dpo_run: dict[str, Any]
) -> None:
    from training.dpo import dpo_loss
    from training.modeling import build_transformer, load_transformer
    from training.step import Micro

    run, summary = dpo_run["run"], dpo_run["summary"]
    assert summary["world_size"] == 2 and summary["steps"] == 20 and summary["data"] == "latents"
    m = metrics(run)
    assert sorted(m) == list(range(1, 21))
    # step 1: the policy is the reference (the run's starting weights), so margin 0 and loss log 2
    assert m[1]["reward_margin"] == 0.0 and m[1]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    late = [m[s] for s in range(11, 21)]
    assert np.mean([r["reward_margin"] for r in late]) > 0.5
    assert np.mean([r["reward_accuracy"] for r in late]) > 0.8  # chance = 0.5
    assert np.mean([r["loss"] for r in late]) < math.log(2) - 0.2
    # On fixed draws over all pairs: the trained policy against its reference (the seeded init).
    cfg = load_train_config(dpo_run["config"])
    meta = json.loads((Path(summary["checkpoint"]) / "export" / "videojp.json").read_text())
    assert meta["objective"] == "dpo"
    chosen, rejected, emb, mask = _pair_tensors(pairs["pairs"], meta["latent_scale"])
    torch.manual_seed(cfg.seed)
    ref = build_transformer(cfg, 64, tuple(summary["latent_shape"])).eval()
    policy = load_transformer(str(Path(summary["checkpoint"]) / "export" / "raw" / "transformer")).eval()
    g = torch.Generator().manual_seed(123)
    margins, gap_policy, gap_ref = [], [], []
    with torch.no_grad():
        for _ in range(4):
            n = chosen.shape[0]
            micro = Micro(
                chosen, emb, mask, torch.randn(chosen.shape, generator=g), torch.rand(n, generator=g)
            )
            r = dpo_loss(policy, ref, micro, rejected, cfg.dpo.beta, "sdpa")
            base = dpo_loss(ref, ref, micro, rejected, cfg.dpo.beta, "sdpa")
            margins.append(r.margin)
            gap_policy.append(r.policy_chosen - r.policy_rejected)
            gap_ref.append(base.policy_chosen - base.policy_rejected)
    margin = torch.cat(margins)
    assert float(margin.mean()) > 0.1 and float((margin > 0).float().mean()) > 0.75
    # the policy's flow loss on chosen fell relative to rejected (against the reference's)
    assert np.mean(gap_policy) < np.mean(gap_ref) - 0.02, (gap_policy, gap_ref)


@pytest.mark.slow
def test_sigkill_and_resume_of_a_dpo_run_is_exact(
    pairs: dict[str, Any], dpo_run: dict[str, Any], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    args = ["--config", str(dpo_run["config"]), "--shards", str(pairs["pairs"]), "--out", str(run)]
    proc = torchrun(2, args, wait=False)
    wait_for_checkpoint(proc, run, 5)
    tree = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not wait_gone(tree), "ranks outlived their SIGKILLed torchrun"
    assert max(losses(run)) < 20, "the run finished before it was killed"
    r = torchrun(2, [*args, "--resume"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resumed from" in r.stdout
    a, b = metrics(dpo_run["run"]), metrics(run)
    assert sorted(b) == list(range(1, 21))
    for step in range(1, 21):
        for k in ("loss", "reward_margin", "reward_accuracy", "flow_loss_chosen"):
            assert b[step][k] == pytest.approx(a[step][k], rel=1e-4, abs=1e-6), (
                step,
                k,
                a[step][k],
                b[step][k],
            )
    from safetensors.torch import load_file

    def ema(r: Path) -> dict[str, torch.Tensor]:
        f = (
            r
            / "checkpoints"
            / "step_000020"
            / "export"
            / "transformer"
            / "diffusion_pytorch_model.safetensors"
        )
        return load_file(str(f))

    ea, eb = ema(dpo_run["run"]), ema(run)
    assert ea.keys() == eb.keys()
    for k in ea:
        torch.testing.assert_close(ea[k], eb[k], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_votes_to_pairs_to_a_dpo_checkpoint_that_vjp_sample_loads(
    pairs: dict[str, Any], tmp_path: Path
) -> None:
    """Candidates from a tiny flow checkpoint (`vjp sample --per-prompt 2`), votes through the study's
    own VoteLog, `vjp pairs --from-votes` (pixel pairs), `vjp train` DPO from that checkpoint, and
    `vjp sample` on the DPO export."""
    from jobs.sample import add_arguments as sample_args
    from jobs.sample import run as sample_run
    from jobs.train import add_arguments as train_args
    from jobs.train import run as train_run
    from tests.train_fixtures import make_tiny_checkpoint
    from training.eval.study import VoteLog, open_study

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    p = argparse.ArgumentParser()
    sample_args(p)
    cands = tmp_path / "cands"
    argv = [
        "--ckpt",
        str(ckpt),
        "--prompts",
        str(prompts),
        "--out",
        str(cands),
        "--per-prompt",
        "2",
        "--steps",
        "2",
    ]
    assert sample_run(p.parse_args(argv)) == 0
    study_dir = tmp_path / "STUDY"
    study = open_study(str(study_dir), str(cands / "cand_00"), str(cands / "cand_01"),
                       str(cands / "cand_00" / "prompts.jsonl"))  # fmt: skip
    log = VoteLog(str(study_dir), study)
    for pair in study["pairs"]:  # two raters prefer candidate 1 (B) on alignment
        for rater in ("r1", "r2"):
            log.add(
                rater,
                pair["id"],
                {"alignment": "left" if pair["left"] == "b" else "right", "quality": "left"},
            )
    out = tmp_path / "P"
    argv = [
        "--from-votes",
        str(study_dir),
        "--stage",
        "tiny",
        "--config",
        str(pairs["config"]),
        "--out",
        str(out),
    ]
    assert vjp_pairs(argv) == 0
    rows = read_rows(str(out / "tiny"))
    assert [r.status for r in rows] == ["ok", "ok"] and all("cand_01" in r.chosen for r in rows)
    index = PairIndex.model_validate_json((out / "tiny" / "__index__" / "train.json").read_text())
    assert index.kind == "video" and index.samples == 2
    config = tiny_config(tmp_path / "dpo.yaml", pairs["models"], steps=2, checkpoint__every=2,
                         objective="dpo", model__init_from=str(ckpt), data__batch_size=1,
                         dpo__beta=100.0)  # fmt: skip
    p = argparse.ArgumentParser()
    train_args(p)
    run_dir = tmp_path / "run"
    assert (
        train_run(
            p.parse_args(["--config", str(config), "--shards", str(out / "tiny"), "--out", str(run_dir)])
        )
        == 0
    )
    m = metrics(run_dir)
    # the reference is the init_from checkpoint's weights: at step 1 the policy equals it
    assert m[1]["reward_margin"] == 0.0 and m[1]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert np.isfinite(m[2]["loss"]) and m[2]["loss"] != m[1]["loss"]
    # an explicit reference: the checkpoint's raw export is the same weights, so again margin 0
    explicit = tiny_config(tmp_path / "ref.yaml", pairs["models"], steps=1, checkpoint__every=1,
                           objective="dpo", model__init_from=str(ckpt), data__batch_size=1,
                           dpo__reference=str(ckpt), dpo__reference_weights="raw")  # fmt: skip
    p = argparse.ArgumentParser()
    train_args(p)
    argv = ["--config", str(explicit), "--shards", str(out / "tiny"), "--out", str(tmp_path / "run_ref")]
    assert train_run(p.parse_args(argv)) == 0
    assert metrics(tmp_path / "run_ref")[1]["reward_margin"] == 0.0
    p = argparse.ArgumentParser()
    sample_args(p)
    video = tmp_path / "dpo.mp4"
    assert sample_run(p.parse_args(["--ckpt", str(run_dir), "--prompt", PROMPTS[0], "--out", str(video),
                                    "--steps", "2"])) == 0  # fmt: skip
    from training.data.sample_format import decode_mp4

    assert decode_mp4(video.read_bytes()).shape == (16, 32, 32, 3)
