"""The one trainer config: every launcher (in-process, torchrun, Ray Train) and the sampler read it.

    train:                      # jobs/configs/train.yaml, or the `train:` section of a combined file
      steps: 10000
      model: {...}  text: {...}  vae: {...}  flow: {...}  optim: {...}  data: {...}
      parallel: {...}  checkpoint: {...}  log: {...}  sample: {...}
      objective: flow            # or dpo: Video-DPO on pair shards (`vjp pairs`), with dpo: {...}

Unknown keys and bad values are errors naming their key path (curation.configfile.validate);
`--set a.b=value` overrides are applied to the raw mapping before validation, so they are checked
the same way. The JSON Schema is schemas/train_config.v1.schema.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.configfile import apply_overrides, read_yaml_section, validate

SECTION = "train"

# diffusers CogVideoXTransformer3DModel's defaults are the CogVideoX-2B configuration; only the
# fields a text-to-video trainer must choose are spelled out. text_embed_dim and
# max_text_seq_length are always taken from the text encoder section (see modeling.py).
COGVIDEOX_2B: dict[str, Any] = {
    "num_attention_heads": 30,
    "attention_head_dim": 64,
    "num_layers": 30,
    "in_channels": 16,
    "out_channels": 16,
    "patch_size": 2,
    "time_embed_dim": 512,
    "use_rotary_positional_embeddings": False,
    "use_learned_positional_embeddings": False,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelConfig(_Strict):
    attention: Literal["auto", "flex", "sdpa"] = Field(
        "auto",
        description="kernel of the joint attention with text.mask_padding: flex = FlexAttention with a "
        "padding block mask (fused kernel, compiled on CUDA); sdpa = SDPA with a boolean mask (the "
        "reference; a mask rules out flash attention); auto = flex on CUDA, sdpa on the CPU",
    )
    transformer: str | None = Field(
        None,
        description="hub id or folder of a pretrained CogVideoXTransformer3DModel; null = random init "
        "from `transformer_config` (the seed report trains from scratch)",
    )
    transformer_subfolder: str | None = None
    transformer_revision: str | None = None
    transformer_config: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides of the CogVideoX-2B transformer configuration (from-scratch init only)",
    )
    init_from: str | None = Field(
        None,
        description="start from this run's checkpoint (a step folder or a run folder = its latest): "
        "stage 2 from stage 1. Weights and EMA are loaded; the optimizer too unless reset_optimizer",
    )
    reset_optimizer: bool = Field(True, description="with init_from: fresh optimizer, schedule and step")


class TextConfig(_Strict):
    model: str = Field("llm-jp/llm-jp-3-1.8b", description="causal LM used as a frozen text encoder")
    revision: str | None = None
    hidden_layer: int = Field(-1, description="hidden_states index (-1 = last layer, as AIdeaLab-VideoJP)")
    max_length: int = Field(
        226,
        ge=1,
        description="tokens per caption; the DiT's joint position embedding has this many text slots",
    )
    mask_padding: bool = Field(
        True, description="padding tokens are masked out of the DiT's joint attention (else they attend)"
    )
    embed_dim: int | None = Field(
        None, description="hidden size; null = read from the text encoder's config (2048 for LLM-jp-3-1.8B)"
    )


class VAEConfig(_Strict):
    model: str = "THUDM/CogVideoX-2b"
    subfolder: str | None = "vae"
    revision: str | None = None
    cls: str = Field(
        "diffusers:AutoencoderKLCogVideoX",
        description="module:Class of the VAE (any diffusers-style autoencoder with from_pretrained, "
        "encode().latent_dist and decode().sample), or a preset: cogvideox (8x8 space, 4x time) or ltx "
        "(AutoencoderKLLTXVideo, 32x32 space, 8x time; model and subfolder default to Lightricks/LTX-Video)",
    )
    scaling_factor: float | None = Field(None, description="null = the VAE config's scaling_factor")
    posterior: Literal["sample", "mean"] = Field(
        "sample",
        description="pixel shards: sample the VAE posterior (CogVideoX's training) or take its mean "
        "(what vjp encode stores)",
    )
    tiling: bool = False
    decode_timestep: float | None = Field(
        None,
        ge=0.0,
        description="timestep-conditioned decoders only (LTX-Video >= 0.9.1): the decode timestep; null = "
        "the LTX recipe's 0.05 (training/vae.py)",
    )
    decode_noise_scale: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="timestep-conditioned decoders only: share of seeded noise mixed into the latents "
        "before decode; null = the LTX recipe's 0.025",
    )

    @model_validator(mode="after")
    def _preset(self) -> VAEConfig:
        from training.vae import PRESETS

        preset = PRESETS.get(self.cls)
        if preset is not None:  # a preset name: its class, and its weights unless given
            self.cls = preset.cls
            if "model" not in self.model_fields_set:
                self.model = preset.model
            if "subfolder" not in self.model_fields_set:
                self.subfolder = preset.subfolder
        return self


class FlowConfig(_Strict):
    timestep_sampling: Literal["uniform", "logit_normal"] = Field(
        "logit_normal", description="logit-normal on the noise level (SD3, Open-Sora 2.0) or uniform"
    )
    logit_mean: float = Field(0.0, description="mean of the logit of the noise level (> 0: noisier t)")
    logit_std: float = 1.0
    shift: float | Literal["auto"] | None = Field(
        "auto",
        description="resolution shift alpha towards the noise end (t=0 here); auto = Open-Sora 2.0's rule "
        "from the latent token count; null/1 = none",
    )
    caption_dropout: float = Field(0.1, ge=0.0, le=1.0, description="share of empty captions (for CFG)")


class OptimConfig(_Strict):
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = Field(
        0.01, ge=0.0, description="on matrices only: norms, biases and embeddings are not decayed"
    )
    warmup_steps: int = Field(1000, ge=0)
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine floor as a share of lr")
    grad_clip: float = Field(1.0, gt=0)
    ema_decay: float = Field(0.9999, ge=0.0, lt=1.0)
    ema_start_step: int = Field(0, ge=0, description="EMA copies the weights until this step")
    ema_warmup: bool = Field(
        True,
        description="decay_t = min(ema_decay, (1 + t) / (10 + t)) at t steps after ema_start_step, so "
        "the EMA forgets the random init early (without it 0.9999 keeps 61% of it at step 5k)",
    )


class DataConfig(_Strict):
    kind: Literal["auto", "pixels", "latents"] = Field(
        "auto", description="pixels: VAE + text encoder on the fly; latents: shards from vjp encode"
    )
    split: str = "train"
    batch_size: int = Field(1, ge=1, description="per rank, per micro-step")
    num_workers: int = Field(2, ge=0)
    prefetch_factor: int = Field(2, ge=1)
    decode_threads: int = Field(1, ge=1)
    pin_memory: bool = True
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for --shards URLs (s3://, gs://, hf://): endpoint_url, region, anon, "
        "profile; credentials come from the environment, never from here (the config is copied into RUN/)",
    )

    @model_validator(mode="after")
    def _no_credentials(self) -> DataConfig:
        from training.data.store import check_storage_options

        check_storage_options(self.storage_options, "data.storage_options")
        return self


class ParallelConfig(_Strict):
    fsdp: Literal["auto", "on", "off"] = Field("auto", description="auto = FSDP2 when world size > 1")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto = bf16 on CUDA, fp32 on CPU")
    activation_checkpointing: bool = Field(
        True, description="checkpoint_wrapper per block (before compile and FSDP); see ac_every"
    )
    ac_every: int = Field(
        1, ge=1, description="partial AC: checkpoint every k-th block (1 = all); trades memory for speed"
    )
    compile: bool = Field(False, description="torch.compile each block (after AC, before FSDP)")
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    allow_reshard: bool = Field(
        False, description="resume on a different world size (the data stream restarts its epoch order)"
    )


class CheckpointConfig(_Strict):
    every: int = Field(500, ge=1)
    keep_last: int = Field(3, ge=1)
    export: bool = Field(True, description="write export/: EMA weights as a diffusers folder per checkpoint")
    export_raw: bool = Field(
        True, description="also export/raw/: the trained (non-EMA) weights, `vjp sample --weights raw`"
    )
    folder: str | None = Field(
        None,
        description="where checkpoints go: a path or an fsspec URL (s3://bucket/run1/checkpoints) that every "
        "node reaches; null = RUN/checkpoints. Resume reads the latest complete one from here",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for a `folder` URL (endpoint_url, region, profile); credentials come "
        "from the environment, never from here",
    )

    @model_validator(mode="after")
    def _no_credentials(self) -> CheckpointConfig:
        from training.data.store import check_storage_options

        check_storage_options(self.storage_options, "checkpoint.storage_options")
        return self

    def root(self, run_dir: str) -> str:
        """The checkpoints folder of a run in `run_dir`."""
        from training.checkpoint import checkpoint_root

        return checkpoint_root(run_dir, self.folder)


class LogConfig(_Strict):
    every: int = Field(1, ge=1)
    tensorboard: bool | Literal["auto"] = "auto"
    progress: bool | Literal["auto"] = "auto"
    peak_tflops: float | None = Field(
        None,
        description="accelerator bf16 dense peak for MFU; null = known GPUs (H100/H200/A100), else no MFU",
    )


class SampleConfig(_Strict):
    """Sampler defaults, as the released VideoJP model."""

    steps: int = Field(25, ge=1)
    guidance: float = 2.5
    negative_prompt: str = ""
    frames: int | None = Field(
        None, ge=1, description="null = the training clips' frames (48 in both stages)"
    )
    height: int | None = Field(None, ge=16, description="null = the training clips' height")
    width: int | None = Field(None, ge=16, description="null = the training clips' width")
    fps: float | None = Field(None, gt=0, description="null = the training clips' fps (24)")


class DPOConfig(_Strict):
    """Video-DPO (`objective: dpo`, training/dpo.py): preference pairs from `vjp pairs`."""

    beta: float = Field(
        5000.0,
        gt=0,
        description="how far the policy may move from the reference: the margin is -beta/2 times the "
        "policy's advantage in velocity error (per-element MSE) on chosen over rejected, relative to the "
        "reference; small beta = weak pull back to the reference, large = the sigmoid saturates once a "
        "pair is ranked right (Diffusion-DPO's SD1.5 value; tune it)",
    )
    reference: str | None = Field(
        None,
        description="the frozen reference: null = the run's starting weights (model.init_from's trained "
        "weights, else model.transformer or the seeded init); or a checkpoint step/run folder or an "
        "export/ folder, whose exported weights (reference_weights) are loaded",
    )
    reference_weights: Literal["ema", "raw"] = Field(
        "ema", description="with an explicit reference: its export's EMA weights or export/raw/"
    )


class TrainConfig(_Strict):
    version: Literal[1] = 1
    seed: int = 0
    steps: int = Field(10000, ge=1, description="optimizer steps")
    grad_accum: int = Field(1, ge=1)
    max_nonfinite_in_a_row: int = Field(
        8, ge=1, description="skipped non-finite steps in a row before the run stops with an error"
    )
    objective: Literal["flow", "dpo"] = Field(
        "flow",
        description="flow = rectified flow on stage shards; dpo = Video-DPO (Flow-DPO) on pair shards "
        "from `vjp pairs`, against a frozen reference (the dpo section)",
    )
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    vae: VAEConfig = Field(default_factory=VAEConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        bad = set(self.model.transformer_config) & {"text_embed_dim", "max_text_seq_length"}
        if bad:
            raise ValueError(
                f"model.transformer_config.{sorted(bad)[0]} is set from the text section "
                "(text.embed_dim / text.max_length)"
            )
        return self


def parse_train_config(
    data: dict[str, Any] | None, origin: str = "<dict>", overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    return validate(TrainConfig, apply_overrides(data or {}, overrides, SECTION), origin, what="train config")


def load_train_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The `train:` section of a YAML file (or the whole file), with overrides, validated."""
    data = read_yaml_section(path, SECTION, what="train config") if path else {}
    return parse_train_config(data, str(path or "<defaults>"), overrides)
