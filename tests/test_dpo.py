"""Flow-DPO (training/dpo.py) on the tiny DiT with synthetic preferences: chosen = a clean latent,
rejected = the same latent corrupted by noise."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from training.config import parse_train_config
from training.dpo import dpo_loss, dpo_step, frozen_copy, load_reference, velocity_errors
from training.modeling import build_transformer
from training.step import Micro
from training.tiny import TINY_TRANSFORMER

SHAPE = (2, 4, 4, 4)  # latents F, C, H, W: 2 x 2 x 2 = 8 video tokens at patch 2
TEXT_LEN, TEXT_DIM, PAIRS = 16, 64, 8


def _policy(seed: int = 0) -> torch.nn.Module:
    cfg = parse_train_config(
        {"seed": seed, "text": {"max_length": TEXT_LEN}, "model": {"transformer_config": TINY_TRANSFORMER}}
    )
    torch.manual_seed(seed)
    return build_transformer(cfg, TEXT_DIM, SHAPE).train()


def _pairs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen [P, F, C, H, W], rejected, caption embeddings [P, L, D]): smooth patterns vs noisy ones."""
    g = torch.Generator().manual_seed(1)
    f, c, h, _ = SHAPE
    grid = torch.linspace(0, math.pi, h)
    base = torch.sin(grid[:, None] + grid[None, :])  # [H, W]
    amp = torch.randn(PAIRS, f, c, 1, 1, generator=g)
    chosen = amp * base
    rejected = chosen + 1.5 * torch.randn(chosen.shape, generator=g)
    return chosen, rejected, torch.randn(PAIRS, TEXT_LEN, TEXT_DIM, generator=g)


def _micro(chosen: torch.Tensor, emb: torch.Tensor, g: torch.Generator) -> Micro:
    b = chosen.shape[0]
    mask = torch.ones(b, TEXT_LEN, dtype=torch.bool)
    return Micro(chosen, emb, mask, torch.randn(chosen.shape, generator=g), torch.rand(b, generator=g))


def _evaluate(policy: torch.nn.Module, ref: torch.nn.Module, beta: float) -> dict[str, float]:
    """Margin, accuracy and the policy's flow loss on chosen minus rejected, over fixed fresh draws."""
    chosen, rejected, emb = _pairs()
    g = torch.Generator().manual_seed(123)
    margins, gap = [], []
    with torch.no_grad():
        for _ in range(4):
            m = _micro(chosen, emb, g)
            r = dpo_loss(policy, ref, m, rejected, beta, attention="sdpa")
            margins.append(r.margin)
            gap.append(r.policy_chosen - r.policy_rejected)
    margin = torch.cat(margins)
    return {
        "margin": float(margin.mean()),
        "accuracy": float((margin > 0).float().mean()),
        "gap": sum(gap) / len(gap),
    }


def test_at_the_start_the_margin_is_zero_and_the_loss_log2() -> None:
    policy = _policy()
    ref = frozen_copy(policy)
    chosen, rejected, emb = _pairs()
    r = dpo_loss(policy, ref, _micro(chosen, emb, torch.Generator().manual_seed(0)), rejected, 10.0, "sdpa")
    assert torch.equal(r.margin, torch.zeros(PAIRS))
    assert r.accuracy == 0.0
    assert abs(float(r.loss.detach()) - math.log(2)) < 1e-6
    assert not any(p.requires_grad for p in ref.parameters())
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(policy, ref, _micro(chosen, emb, torch.Generator()), rejected, 0.0)


@pytest.mark.slow
def test_a_short_dpo_run_learns_the_synthetic_preference() -> None:
    torch.manual_seed(0)
    policy = _policy()
    ref = frozen_copy(policy)
    beta = 50.0
    before = _evaluate(policy, ref, beta)
    chosen, rejected, emb = _pairs()
    opt = torch.optim.AdamW(policy.parameters(), lr=2e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(7)
    losses = []
    for _ in range(30):
        r = dpo_step(policy, ref, opt, _micro(chosen, emb, g), rejected, beta, attention="sdpa")
        losses.append(float(r.loss))
    after = _evaluate(policy, ref, beta)
    assert before["margin"] == 0.0 and before["accuracy"] == 0.0
    assert after["margin"] > 0.05, after
    assert after["accuracy"] > 0.75, after  # chance = 0.5
    # the policy's flow loss on chosen falls relative to rejected
    assert after["gap"] < before["gap"] - 0.05, (before, after)
    assert sum(losses[-5:]) / 5 < math.log(2) - 0.05, losses


def test_beta_to_zero_drops_the_reference() -> None:
    """As beta -> 0: loss -> log 2 and grad(loss) / beta -> 1/4 grad(mean(e_policy(w) - e_policy(l)))."""
    policy = _policy()
    ref = frozen_copy(policy)
    with torch.no_grad():  # the policy has moved away from the reference
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    chosen, rejected, emb = _pairs()
    m = _micro(chosen, emb, torch.Generator().manual_seed(3))
    beta = 1e-4
    r = dpo_loss(policy, ref, m, rejected, beta, "sdpa")
    assert abs(float(r.loss) - math.log(2)) < 1e-4
    r.loss.backward()
    g_dpo = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None]) / beta
    policy.zero_grad()
    e_w = velocity_errors(policy, m, "sdpa", torch.float32, False)
    e_l = velocity_errors(policy, Micro(rejected, m.emb, m.mask, m.x0, m.t), "sdpa", torch.float32, False)
    (0.25 * (e_w - e_l).mean()).backward()
    g_plain = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
    assert torch.allclose(g_dpo, g_plain, rtol=1e-2, atol=1e-6 * float(g_plain.abs().max()))


def test_the_reference_loads_frozen_from_an_export(tmp_path: Path) -> None:
    from training.checkpoint import EXPORT_META

    policy = _policy(seed=3)
    export = tmp_path / "export"
    policy.save_pretrained(export / "transformer")
    (export / EXPORT_META).write_text("{}")
    ref = load_reference(str(export))
    assert not any(p.requires_grad for p in ref.parameters()) and not ref.training
    chosen, _, emb = _pairs()
    m = _micro(chosen, emb, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(
            velocity_errors(ref, m, "sdpa", torch.float32, False),
            velocity_errors(policy.eval(), m, "sdpa", torch.float32, False),
            atol=1e-5,
        )


@pytest.mark.slow
def test_vjp_sample_per_prompt_writes_seeded_candidates_for_an_ab_study(tmp_path: Path) -> None:
    import argparse
    import json

    import av

    from jobs.sample import add_arguments, run
    from tests.train_fixtures import make_tiny_checkpoint
    from training.eval.study import open_study

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    prompts = tmp_path / "p.txt"
    prompts.write_text("夜の街を走る電車。\n海辺の波\n", encoding="utf-8")
    p = argparse.ArgumentParser()
    add_arguments(p)
    out = tmp_path / "cands"
    argv = ["--ckpt", str(ckpt), "--prompts", str(prompts), "--out", str(out), "--per-prompt", "2",
            "--steps", "2", "--seed", "10"]  # fmt: skip
    assert run(p.parse_args(argv)) == 0
    rows = {k: [json.loads(x) for x in (out / f"cand_{k:02d}" / "prompts.jsonl").read_text().splitlines()]
            for k in (0, 1)}  # fmt: skip
    assert [r["seed"] for r in rows[0]] == [10, 12] and [r["seed"] for r in rows[1]] == [11, 13]
    assert [r["prompt"] for r in rows[1]] == ["夜の街を走る電車。", "海辺の波"]
    assert rows[0][0]["checkpoint"] == str(ckpt.resolve()) and rows[0][0]["steps"] == 2
    assert rows[0][0]["step"] == 2 and rows[0][0]["weights"] == "ema"

    def frames(path: Path) -> list[Any]:
        with av.open(str(path)) as c:
            return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]

    a, b = frames(out / "cand_00" / "000000.mp4"), frames(out / "cand_01" / "000000.mp4")
    assert len(a) == len(b) == 16 and any((x != y).any() for x, y in zip(a, b, strict=True))  # other seeds
    assert run(p.parse_args([*argv[:5], str(tmp_path / "one.mp4"), "--per-prompt", "2"])) == 2
    # two candidate folders are an A/B study as they are
    study = open_study(str(tmp_path / "study"), str(out / "cand_00"), str(out / "cand_01"),
                       str(out / "cand_00" / "prompts.jsonl"))  # fmt: skip
    assert len(study["pairs"]) == 2 and not study["skipped"]


def test_the_reference_is_frozen_and_sharded_like_the_policy(tmp_path: Path) -> None:
    """Under FSDP2 (a one-rank gloo group in this process) the reference's parameters are DTensors on
    the policy's mesh, frozen and outside the optimizer; a DPO train_step moves the policy only."""
    import socket

    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from training.dpo import PairMicro, build_reference, dpo_loss_fn
    from training.parallel import Dist
    from training.step import build_model, build_trainer, train_step

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        cfg = parse_train_config(
            {
                "seed": 0,
                "objective": "dpo",
                "text": {"max_length": TEXT_LEN},
                "model": {"transformer_config": TINY_TRANSFORMER},
                "parallel": {"fsdp": "on"},
                "optim": {"lr": 1e-2, "warmup_steps": 0},
                "dpo": {"beta": 10.0},
            }
        )
        d = Dist(0, 1, 0, torch.device("cpu"), True)
        policy, model_config, _ = build_model(cfg, TEXT_DIM, SHAPE, d)
        tr = build_trainer(cfg, policy, d)
        ref = build_reference(cfg, TEXT_DIM, SHAPE, model_config, d)
        ref_params = list(ref.parameters())
        assert ref_params and all(isinstance(p, DTensor) and not p.requires_grad for p in ref_params)
        assert {p.device_mesh for p in ref_params} == {p.device_mesh for p in policy.parameters()}
        assert not ref.training and tr.fsdp
        in_optim = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
        assert not in_optim & {id(p) for p in ref_params}
        before = [p.full_tensor().clone() for p in ref_params]
        chosen, rejected, emb = _pairs()
        m = PairMicro(_micro(chosen, emb, torch.Generator().manual_seed(0)), rejected)
        r = train_step(tr, [m], 1, 0, dpo_loss_fn(ref, cfg.dpo.beta))
        assert r.loss == pytest.approx(math.log(2), abs=1e-6) and r.metrics["reward_margin"] == 0.0
        assert all(p.grad is None for p in ref_params)
        assert all(torch.equal(a, p.full_tensor()) for a, p in zip(before, ref_params, strict=True))
        r2 = train_step(tr, [m], 1, 1, dpo_loss_fn(ref, cfg.dpo.beta))
        assert r2.metrics["reward_margin"] != 0.0  # the policy moved, the reference did not
        assert set(r2.metrics) == {
            "reward_margin",
            "reward_accuracy",
            "flow_loss_chosen",
            "flow_loss_rejected",
        }
    finally:
        dist.destroy_process_group()
