"""Trainer parts in one process: config, flow objective, masked attention, the seekable stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from curation.configfile import ConfigError
from tests.train_fixtures import make_tiny_shards
from training import flow
from training.config import FlowConfig, TrainConfig, load_train_config, parse_train_config

REPO = Path(__file__).resolve().parents[1]


# ---- config ----------------------------------------------------------------------------------
def test_shipped_config_is_the_seed_model() -> None:
    cfg = load_train_config(REPO / "jobs" / "configs" / "train.yaml")
    assert cfg.text.model == "llm-jp/llm-jp-3-1.8b"
    assert cfg.vae.model == "THUDM/CogVideoX-2b" and cfg.vae.subfolder == "vae"
    assert cfg.model.transformer is None and cfg.model.transformer_config == {}
    assert cfg.sample.steps == 25 and cfg.sample.guidance == 2.5


def test_bad_keys_and_values_name_their_path() -> None:
    with pytest.raises(ConfigError) as e:
        parse_train_config({"optim": {"lrr": 1}, "data": {"batch_size": 0}}, "x.yaml")
    msg = str(e.value)
    assert "x.yaml" in msg and "optim.lrr: unknown key" in msg and "data.batch_size" in msg
    with pytest.raises(ConfigError, match="text_embed_dim"):
        parse_train_config({"model": {"transformer_config": {"text_embed_dim": 4096}}})


def test_overrides_are_validated_like_the_file() -> None:
    cfg = parse_train_config({}, overrides=["optim.lr=2e-4", "train.steps=7", "flow.shift=auto"])
    assert cfg.optim.lr == 2e-4 and cfg.steps == 7 and cfg.flow.shift == "auto"
    with pytest.raises(ConfigError, match=r"flow\.timestep_sampling"):
        parse_train_config({}, overrides=["flow.timestep_sampling=cosine"])
    with pytest.raises(ConfigError, match=r"expected key\.path=value"):
        parse_train_config({}, overrides=["steps"])


# ---- flow ------------------------------------------------------------------------------------
def test_time_direction_and_model_timestep() -> None:
    t = torch.tensor([0.0, 0.5, 1.0])
    # t=0 is noise: the DiT sees its noise end (999); data is 0.
    assert flow.model_timestep(t).tolist() == [999.0, 499.5, 0.0]
    x0, x1 = torch.zeros(3, 2), torch.ones(3, 2)
    assert torch.equal(flow.interpolate(x0, x1, t)[:, 0], t)


def test_shift_moves_samples_towards_noise() -> None:
    g = torch.Generator().manual_seed(0)
    plain = flow.sample_t(20000, FlowConfig(), 1.0, g)
    g = torch.Generator().manual_seed(0)
    shifted = flow.sample_t(20000, FlowConfig(shift=3.0), 3.0, g)
    assert abs(plain.mean().item() - 0.5) < 0.01
    assert shifted.mean().item() < plain.mean().item() - 0.1  # more time spent near t=0 (noise)
    assert 3.0 < flow.auto_shift(32 * 32, 12) < 4.0  # stage 1: ~3.5 as Open-Sora 2.0's rule gives
    assert flow.auto_shift(60 * 106, 12) > flow.auto_shift(32 * 32, 12)
    ts = flow.euler_times(10, 3.0)
    assert ts[0] == 0 and ts[-1] == 1 and bool((ts[1:] > ts[:-1]).all())


def test_logit_normal_puts_a_positive_mean_on_the_noise_side() -> None:
    # SD3's logit-normal is on the noise level s = 1 - t: a positive logit mean means noisier t
    # (t < 0.5 here), and the median sits at 1 - sigmoid(mean). A flipped direction fails both.
    g = torch.Generator().manual_seed(1)
    t = flow.sample_t(20000, FlowConfig(timestep_sampling="logit_normal", logit_mean=1.0), 1.0, g)
    assert t.min() > 0.0 and t.max() < 1.0
    assert abs(t.median().item() - (1 - torch.sigmoid(torch.tensor(1.0)).item())) < 0.01
    shifted = flow.sample_t(20000, FlowConfig(timestep_sampling="logit_normal"), 3.0, g)
    assert shifted.median().item() < 0.3  # the resolution shift also moves towards noise (t=0)
    assert flow.flow_loss(torch.ones(2), torch.zeros(2), torch.ones(2)).item() == 0.0


def test_defaults_are_the_recipe() -> None:
    cfg = TrainConfig()
    assert cfg.flow.timestep_sampling == "logit_normal" and cfg.flow.shift == "auto"
    assert cfg.optim.ema_warmup and cfg.checkpoint.export_raw and cfg.model.attention == "auto"
    for name in ("stage1", "stage2", "train"):
        shipped = load_train_config(REPO / "jobs" / "configs" / f"{name}.yaml")
        assert (shipped.flow.timestep_sampling, shipped.flow.shift) == ("logit_normal", "auto"), name


# ---- the DiT with masked joint attention ---------------------------------------------------------
def _tiny_dit(max_len: int = 8) -> torch.nn.Module:
    from training.modeling import build_transformer
    from training.tiny import TINY_TRANSFORMER

    cfg = parse_train_config(
        {"text": {"max_length": max_len}, "model": {"transformer_config": TINY_TRANSFORMER}}
    )
    torch.manual_seed(0)
    return build_transformer(cfg, 16, (2, 4, 4, 4)).eval()


def test_padding_does_not_leak_into_attention() -> None:
    from training.modeling import joint_mask

    model = _tiny_dit()
    x = torch.randn(1, 2, 4, 4, 4)
    real = torch.randn(1, 3, 16)  # a 3-token caption
    pad_a = torch.cat([real, torch.randn(1, 5, 16)], dim=1)  # padded to 8 with two different paddings
    pad_b = torch.cat([real, torch.zeros(1, 5, 16)], dim=1)
    mask = torch.tensor([[True] * 3 + [False] * 5])
    video_tokens = 2 * 2 * 2
    t = torch.tensor([500.0])

    def out(emb: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        kw = None if m is None else {"attention_mask": joint_mask(m, video_tokens)}
        return model(
            hidden_states=x, encoder_hidden_states=emb, timestep=t, attention_kwargs=kw, return_dict=False
        )[0]

    with torch.no_grad():
        a, b = out(pad_a, mask), out(pad_b, mask)
        assert torch.allclose(a, b, atol=1e-6)  # masked: what sits in the padding does not matter
        assert not torch.allclose(out(pad_a, None), out(pad_b, None), atol=1e-4)  # unmasked it would


def test_flex_attention_equals_the_masked_sdpa_reference() -> None:
    from torch.nn.attention.flex_attention import create_block_mask

    from training.modeling import attention_kwargs, padding_block_mask

    # The block mask built from per-block counts is create_block_mask's, also with ragged blocks.
    valid = torch.ones(3, 300, dtype=torch.bool)
    valid[0, 3:8] = False
    valid[1, 5:140] = False
    valid[2, 1:256] = False
    ours = padding_block_mask(valid)
    ref = create_block_mask(lambda b, h, q, kv: valid[b, kv], 3, None, 300, 300, device="cpu")
    assert torch.equal(ours.to_dense(), ref.to_dense())
    assert ours.full_kv_num_blocks[:, 0, 0].tolist() == [1, 0, 0]  # a block with no padding: no mask work
    assert ours.kv_num_blocks[2, 0, 0] == 2  # its middle block is all padding: skipped

    model = _tiny_dit(max_len=8)
    x = torch.randn(2, 2, 4, 4, 4)
    emb = torch.randn(2, 8, 16)
    mask = torch.tensor([[True] * 3 + [False] * 5, [True] * 6 + [False] * 2])
    t = torch.tensor([500.0, 20.0])

    def out(mode: str) -> torch.Tensor:
        kw = attention_kwargs(mode, mask, 8)
        return model(
            hidden_states=x, encoder_hidden_states=emb, timestep=t, attention_kwargs=kw, return_dict=False
        )[0]

    with torch.no_grad():
        flex, sdpa = out("flex"), out("sdpa")
        torch.testing.assert_close(flex, sdpa, rtol=1e-5, atol=1e-5)
        unmasked = model(hidden_states=x, encoder_hidden_states=emb, timestep=t, return_dict=False)[0]
        assert not torch.allclose(flex, unmasked, atol=1e-4)  # the mask is applied, not ignored


def test_mfu_formula_matches_torch_flop_counter() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from training.metrics import matmul_params, train_flops_per_sample
    from training.modeling import attention_kwargs, build_transformer

    tc = {"num_layers": 2, "num_attention_heads": 4, "attention_head_dim": 32, "time_embed_dim": 128,
          "in_channels": 4, "out_channels": 4}  # fmt: skip
    cfg = parse_train_config({"text": {"max_length": 16}, "model": {"transformer_config": tc}})
    torch.manual_seed(0)
    model = build_transformer(cfg, 64, (4, 4, 8, 8))
    params = matmul_params(model)
    assert params.sample > params.joint  # adaLN + time embedding: most weights of this tiny config
    b, video = 2, 4 * 4 * 4
    x, emb = torch.randn(b, 4, 4, 8, 8), torch.randn(b, 16, 64)
    mask = torch.ones(b, 16, dtype=torch.bool)
    mask[:, 5:] = False
    # The math SDPA path decomposes into bmm, which the counter sees (it has no CPU flash formula).
    with FlopCounterMode(display=False) as fc, sdpa_kernel(SDPBackend.MATH):
        v = model(hidden_states=x, encoder_hidden_states=emb, timestep=torch.tensor([3.0, 500.0]),
                  attention_kwargs=attention_kwargs("sdpa", mask, video), return_dict=False)[0]  # fmt: skip
        v.square().mean().backward()
    counted = fc.get_total_flops() / b
    ours = train_flops_per_sample(dict(model.config), params, video, 16)
    assert abs(ours / counted - 1) < 0.05, (ours, counted)
    every_linear_per_token = ours + 6 * params.sample * (video + 16 - 1)  # the former formula
    assert every_linear_per_token / counted > 1.5


def test_full_size_mfu_counts_adaln_once_per_sample() -> None:
    from training.metrics import matmul_params, train_flops_per_sample
    from training.modeling import build_transformer

    cfg = TrainConfig()
    with torch.device("meta"):
        model = build_transformer(cfg, 2048, (12, 16, 32, 32))
    p = matmul_params(model)
    assert 340e6 < p.sample < 370e6 and 1.6e9 < p.total < 1.75e9  # the 357M of 1,688M
    flops = train_flops_per_sample(dict(model.config), p, 3072, 226)
    assert 33e12 < flops < 35e12  # ~33.8 TFLOP per stage-1 sample, not 40.9


# ---- the step, EMA, optimizer groups, AC, FSDP ---------------------------------------------------
def grad_config(fsdp: str = "off", **parallel: Any) -> TrainConfig:
    """The tiny DiT (text 8 x 16) for step-level tests; also used by tests/fsdp_grad_worker.py."""
    from training.tiny import TINY_TRANSFORMER

    return parse_train_config(
        {
            "text": {"max_length": 8},
            "model": {"transformer_config": TINY_TRANSFORMER},
            "optim": {"lr": 1e-2, "warmup_steps": 0},
            "parallel": {"fsdp": fsdp, "precision": "fp32", **parallel},
        }
    )


def fixed_micro(b: int = 4) -> Any:
    """A fixed batch of b latents [2, 4, 4, 4] with padded captions, noise and times."""
    from training.step import Micro

    g = torch.Generator().manual_seed(7)
    mask = torch.zeros(b, 8, dtype=torch.bool)
    for i in range(b):
        mask[i, : 2 + i % 6] = True
    return Micro(
        torch.randn(b, 2, 4, 4, 4, generator=g),
        torch.randn(b, 8, 16, generator=g) * mask[..., None],
        mask,
        torch.randn(b, 2, 4, 4, 4, generator=g),
        torch.rand(b, generator=g),
    )


def _trainer(cfg: TrainConfig) -> Any:
    from training.parallel import init_distributed
    from training.step import build_model, build_trainer

    d = init_distributed(cfg.parallel)
    model, _, _ = build_model(cfg, 16, (2, 4, 4, 4), d)
    return build_trainer(cfg, model, d)


def _grads_at_step(tr: Any) -> list[list[torch.Tensor]]:
    """The gradients the optimizer steps with (a pre-step hook: train_step clears them after)."""
    seen: list[list[torch.Tensor]] = []
    tr.optimizer.register_step_pre_hook(
        lambda opt, *_: seen.append([p.grad.clone() for g in opt.param_groups for p in g["params"]])
    )
    return seen


def test_grad_accumulation_of_two_halves_equals_one_full_batch() -> None:
    from training.step import train_step

    m = fixed_micro(4)
    one, two, half = _trainer(grad_config()), _trainer(grad_config()), _trainer(grad_config())
    ga, gb, gc = _grads_at_step(one), _grads_at_step(two), _grads_at_step(half)
    a = train_step(one, [m], 1, 0)
    b = train_step(two, m.split(2), 2, 0)
    assert a.finite and b.finite and len(ga) == len(gb) == 1
    assert b.loss == pytest.approx(a.loss, rel=1e-5)
    assert b.grad_norm == pytest.approx(a.grad_norm, rel=1e-4)
    for x, y in zip(ga[0], gb[0], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-7)
    train_step(half, [m.split(2)[0]], 1, 0)  # half the batch alone: other gradients
    assert any(not torch.allclose(x, y, rtol=1e-3, atol=1e-6) for x, y in zip(ga[0], gc[0], strict=True))


def test_ema_warmup_follows_the_weights_and_names_ignore_wrappers() -> None:
    from training.ema import EMA, ema_decay_at

    assert ema_decay_at(0.9999, 0, True) == pytest.approx(0.1)
    assert ema_decay_at(0.9999, 90, True) == pytest.approx(0.91)
    assert ema_decay_at(0.9999, 10**6, True) == 0.9999 and ema_decay_at(0.9999, 0, False) == 0.9999
    lin = torch.nn.Linear(4, 4)
    init = lin.weight.detach().clone()
    warm, cold = EMA(lin, 0.9999), EMA(lin, 0.9999, warmup=False)
    with torch.no_grad():
        lin.weight.add_(1.0)  # "training" moved the weights by 1
    for step in range(1, 51):
        warm.update(step)
        cold.update(step)
    moved = {"warm": warm.state_dict()["weight"] - init, "cold": cold.state_dict()["weight"] - init}
    assert moved["warm"].min() > 0.8  # 50 updates with warmup: within 20% of the weights
    assert moved["cold"].max() < 0.01  # without: still 99.5% the init

    cfg = grad_config(activation_checkpointing=True, ac_every=2)
    tr = _trainer(cfg)
    wrapped = [type(b).__name__ for b in tr.model.transformer_blocks]
    assert wrapped == ["CheckpointWrapper", "CogVideoXBlock"]  # partial AC: every 2nd block
    plain = _tiny_dit()
    assert tr.ema.names == [n for n, _ in plain.named_parameters()]  # export names: no wrapper prefix


def test_activation_checkpointing_changes_no_gradient() -> None:
    from training.step import micro_loss

    m = fixed_micro(2)
    grads = []
    for ac in (False, True):
        tr = _trainer(grad_config(activation_checkpointing=ac))
        micro_loss(tr.model, m, "sdpa", torch.float32, False).backward()
        grads.append([p.grad.clone() for p in tr.model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_no_weight_decay_on_norms_biases_and_embeddings() -> None:
    from training.step import param_groups

    model = _tiny_dit()
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    assert "transformer_blocks.0.attn1.to_q.weight" in decayed and "proj_out.weight" in decayed
    assert "transformer_blocks.0.attn1.to_q.bias" in kept and "norm_final.weight" in kept
    assert "transformer_blocks.0.norm1.norm.weight" in kept and "patch_embed.proj.weight" in kept
    assert not any("bias" in n or "norm.weight" in n or "patch_embed" in n for n in decayed)
    assert decayed | kept == set(names.values())


@pytest.mark.slow
def test_fsdp_on_two_ranks_gives_the_one_process_gradients(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from training.step import build_model, micro_loss

    out = tmp_path / "grads.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tests.fsdp_grad_worker", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    fsdp = load_file(str(out))
    from training.parallel import init_distributed

    cfg = grad_config()
    model, _, _ = build_model(cfg, 16, (2, 4, 4, 4), init_distributed(cfg.parallel))
    micro_loss(model, fixed_micro(), "sdpa", torch.float32, False).backward()
    from training.ema import clean_name

    one = {clean_name(n): p.grad for n, p in model.named_parameters()}
    assert fsdp.keys() == one.keys()
    for k in one:
        torch.testing.assert_close(fsdp[k], one[k], rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.slow
def test_compiled_blocks_train_like_eager_on_the_cpu() -> None:
    from training.step import train_step

    # Inductor builds C++ kernels on the CPU here (gcc); the GPU check runs the same path on CUDA.
    # One step of a one-block DiT keeps the compile to about a minute on 2 cores.
    m = fixed_micro(2)
    one_block = {"transformer_config": {**_tiny_transformer(), "num_layers": 1}}
    eager = _trainer(grad_config(activation_checkpointing=True).model_copy(
        update={"model": grad_config().model.model_copy(update=one_block)}))  # fmt: skip
    cfg = grad_config(activation_checkpointing=True, compile=True)
    compiled = _trainer(cfg.model_copy(update={"model": cfg.model.model_copy(update=one_block)}))
    assert all(b._compiled_call_impl is not None for b in compiled.model.transformer_blocks)
    ga, gb = _grads_at_step(eager), _grads_at_step(compiled)
    a, b = train_step(eager, [m], 1, 0), train_step(compiled, [m], 1, 0)
    assert b.loss == pytest.approx(a.loss, rel=1e-4)
    assert b.grad_norm == pytest.approx(a.grad_norm, rel=1e-3)
    for x, y in zip(ga[0], gb[0], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-5)


def _tiny_transformer() -> dict[str, Any]:
    from training.tiny import TINY_TRANSFORMER

    return dict(TINY_TRANSFORMER)


def test_train_bench_dry_run_writes_a_row_per_mode(tmp_path: Path) -> None:
    import json

    from benchmarks.train_bench import main

    out = tmp_path / "rows.jsonl"
    assert main(["--dry-run", "--attention", "flex,sdpa,none", "--ac", "on,off", "--json", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["attention"], r["ac"]) for r in rows] == [
        (a, ac) for ac in (True, False) for a in ("flex", "sdpa", "none")
    ]
    for r in rows:
        assert r["loss_finite"] is True
        if r["attention"] == "flex":  # forward only on the CPU
            assert r["forward_only"]
        else:
            assert r["samples_per_s"] > 0 and r["tflop_per_sample"] >= 0 and r["mfu"] is None


@pytest.mark.slow
def test_gpu_check_script_dry_run_writes_one_json(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_GROUPS": "stage1_attention"}
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["device"] == "cpu" and report["torch"] == torch.__version__
    shapes = [(x["shape"], x["attention"]) for x in report["rows"]]
    assert shapes == [("stage1", "flex"), ("stage1", "sdpa"), ("stage1", "none")]
    assert all("error" not in x for x in report["rows"])


def test_transformer_config_is_cogvideox_2b_sized_to_the_text_encoder() -> None:
    from training.modeling import transformer_config

    cfg = TrainConfig()
    c = transformer_config(cfg, 2048, (12, 16, 32, 32))
    assert (c["num_layers"], c["num_attention_heads"], c["attention_head_dim"]) == (30, 30, 64)
    assert c["text_embed_dim"] == 2048 and c["max_text_seq_length"] == 226
    assert not c["use_rotary_positional_embeddings"] and c["patch_size"] == 2
    assert (c["sample_frames"], c["sample_height"], c["sample_width"]) == (45, 32, 32)


# ---- the seekable data stream ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_tiny_shards(tmp_path_factory.mktemp("stream"), n=7)


def _keys(stream: Any, start: int, n: int) -> list[str]:
    return [stream.raw(c)["__key__"] for c in range(start, start + n)]


def test_stream_is_a_function_of_the_position(tiny_data: dict[str, Any], tmp_path: Path) -> None:
    from training.stream import RankStream, SampleTable

    table = SampleTable.build(str(tiny_data["shards"]), "train", str(tmp_path))
    # the index's own sample table (vjp shard wrote it), mapped in place: nothing cached, no rescan
    assert len(table) == 7 and table.path is not None and not list(tmp_path.iterdir())
    assert SampleTable.build(str(tiny_data["shards"]), "train", str(tmp_path)).path == table.path
    r0, r1 = RankStream(table, 0, 0, 2), RankStream(table, 0, 1, 2)
    assert r0.per_rank == 3  # 7 samples on 2 ranks: 3 each, the 7th left out of that epoch
    e0 = _keys(r0, 0, 3) + _keys(r1, 0, 3)
    assert len(set(e0)) == 6  # an epoch never gives one sample to two ranks
    assert _keys(r0, 3, 3) != _keys(r0, 0, 3)  # a new epoch, a new order
    # Seeking: a fresh stream started at position 4 continues exactly where the first one was.
    assert _keys(RankStream(table, 0, 0, 2), 4, 5) == _keys(r0, 4, 5)
    assert _keys(RankStream(table, 1, 0, 2), 0, 3) != _keys(r0, 0, 3)  # the seed matters


def test_stream_refuses_a_changed_world_size(tiny_data: dict[str, Any]) -> None:
    from training.stream import RankStream, SampleTable, resume_consumed

    table = SampleTable.build(str(tiny_data["shards"]), "train")
    saved = RankStream(table, 0, 0, 2).position(10).to_json()
    assert resume_consumed(saved, RankStream(table, 0, 0, 2), False) == 10
    with pytest.raises(ValueError, match="allow_reshard"):
        resume_consumed(saved, RankStream(table, 0, 0, 3), False)
    assert resume_consumed(saved, RankStream(table, 0, 0, 4), True) == 5


def test_loader_batches_follow_the_stream(tiny_data: dict[str, Any]) -> None:
    from training.stream import RankStream, SampleTable, make_loader

    stream = RankStream(SampleTable.build(str(tiny_data["shards"]), "train"), 0, 0, 1)
    batch = next(iter(make_loader(stream, 2, 2, 0, 2, False)))
    assert batch["key"] == _keys(stream, 2, 2)
    assert tuple(batch["video"].shape) == (2, 16, 3, 32, 32)
    assert batch["video"].min() >= -1.0 and batch["video"].max() <= 1.0


def test_worker_processes_keep_the_stream_order(tiny_data: dict[str, Any]) -> None:
    from training.stream import RankStream, SampleTable, make_loader

    stream = RankStream(SampleTable.build(str(tiny_data["shards"]), "train"), 0, 0, 1)
    it = iter(make_loader(stream, 5, 2, 2, 2, False))  # two forkserver workers, from position 5
    keys = [k for _ in range(4) for k in next(it)["key"]]
    assert keys == _keys(stream, 5, 8)


def test_the_console_line_shows_dpo_margin_and_accuracy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from training.metrics import StepLog

    log = StepLog(str(tmp_path), every=1, tensorboard=False, progress=False, total=2, start=0, enabled=True)
    base = {"lr": 1e-4, "grad_norm": 0.5, "samples_per_s": 3.0, "data_wait": 0.1, "skipped": False}
    log.log({"step": 1, "loss": 0.7, **base})
    log.log({"step": 2, "loss": 0.6, "reward_margin": 0.25, "reward_accuracy": 0.75, **base})
    flow_line, dpo_line = capsys.readouterr().out.splitlines()
    assert "margin" not in flow_line and flow_line.startswith("step 1 loss 0.70000 lr")
    assert dpo_line.startswith("step 2 loss 0.60000 margin 0.250 acc 0.750 lr")
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["reward_accuracy"] == 0.75 and "reward_margin" not in rows[0]
