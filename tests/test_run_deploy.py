"""The cluster recipes: the RayJob rendered for each stage config (KubeRay's RayJob fields, its pod
templates and the PVC against Kubernetes' own schemas), resubmission, the image recipe's Ray pin,
the Slurm script (`bash -n`, bounded wait, IPv4 head address), and `vjp run --check` naming a
package a config needs that cannot be imported."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from jobs.cli import main
from jobs.run_config import load_run_config, missing_requirements

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "jobs" / "deploy"
BASH = shutil.which("bash")
K8S = "1.33"  # the Kubernetes schema the pod templates are validated against

# Fields of KubeRay's RayJob v1 CRD (ray-operator/config/crd/bases/ray.io_rayjobs.yaml, v1.7):
# an unknown key is pruned by the API server, i.e. silently ignored, so the test rejects it.
RAYJOB_SPEC = {
    "activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
    "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata",
    "preRunningDeadlineSeconds", "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes",
    "submissionMode", "submitterConfig", "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished",
}  # fmt: skip
RAY_CLUSTER_SPEC = {
    "authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
    "headGroupSpec", "headServiceAnnotations", "historyServerOptions", "managedBy", "networkPolicy",
    "rayVersion", "suspend", "tlsOptions", "upgradeStrategy", "workerGroupSpecs",
}  # fmt: skip
HEAD_GROUP = {"enableIngress", "headService", "ingressOptions", "labels", "rayStartParams", "resources",
              "serviceType", "template"}  # fmt: skip
WORKER_GROUP = {
    "groupName", "idleTimeoutSeconds", "labels", "maxReplicas", "minReplicas", "numOfHosts", "priority",
    "rayStartParams", "replicas", "resources", "scaleStrategy", "suspend", "template",
}  # fmt: skip


def render(config: str, *args: str) -> dict[str, Any]:
    assert BASH
    out = subprocess.run(
        [BASH, str(DEPLOY / "submit-rayjob.sh"), config, "--dry-run", *args],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    assert "@" not in out.stdout.replace("@sha256", "")  # every placeholder filled in
    return yaml.safe_load(out.stdout)


def _check_pod_template(template: dict[str, Any], where: str) -> dict[str, Any]:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": template["spec"]}
    try:
        kubernetes_validate.validate(pod, K8S, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise AssertionError(f"{where}: {e.message} at {'.'.join(map(str, e.path))}") from None
    return template["spec"]


def _vjp_run_config(entrypoint: str) -> Path:
    cmd = shlex.split(entrypoint)
    assert cmd[:2] == ["vjp", "run"] and len(cmd) == 3, cmd
    assert re.search(r'^vjp = "jobs\.cli:main"$', (REPO / "pyproject.toml").read_text(), flags=re.M)
    return REPO / cmd[2]


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_rayjob_renders_for_each_stage_config_and_passes_the_schemas(stage: str) -> None:
    doc = render(f"jobs/configs/{stage}.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    assert doc["metadata"]["name"] == f"videojp-{stage}"  # stage 2 is its own RayJob, not stage 1's
    spec = doc["spec"]
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    config = _vjp_run_config(spec["entrypoint"])
    assert config == REPO / "jobs" / "configs" / f"{stage}.yaml"
    cfg, _ = load_run_config(config)
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= RAY_CLUSTER_SPEC and set(cluster["headGroupSpec"]) <= HEAD_GROUP
    head = cluster["headGroupSpec"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # the CRD: strings only
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    pods = [("head", _check_pod_template(head["template"], "headGroupSpec"))]
    gpus = 0
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP and {"groupName", "template"} <= set(group)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        pod = _check_pod_template(group["template"], group["groupName"])
        pods.append((group["groupName"], pod))
        gpus += group["replicas"] * int(pod["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
    for name, pod in pods:
        c = pod["containers"][0]
        assert (
            c["image"] == "registry.example.com/videojp-data:0.1.0"
            and c["workingDir"] == runtime_env["working_dir"]
        )
        # Every pod mounts the shared volume run.out lives on and gets the declared credentials.
        assert "/shared" in {m["mountPath"] for m in c["volumeMounts"]} and cfg.run.out.startswith("/shared/")
        claims = {
            v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        }
        assert claims == {"videojp-shared"}
        secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", []) if "valueFrom" in e}
        secrets |= {e["secretRef"]["name"] for e in c.get("envFrom", [])}
        assert secrets == {"hf-token", "videojp-object-store"}, name
    # Enough GPUs for the trainer's workers (one each) and the caption actors.
    assert gpus >= cfg.run.train.num_workers and gpus >= cfg.caption.vllm.num_actors
    assert (
        render(f"jobs/configs/{stage}.yaml", "--name", "try-2", "--image", "r/i:1")["metadata"]["name"]
        == "try-2"
    )


def test_prerequisites_declare_what_the_pods_use() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "prerequisites.yaml").read_text()))
    (pvc,) = docs
    kubernetes_validate.validate(pvc, K8S, strict=True)
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["metadata"]["name"] == "videojp-shared"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # every pod of every node mounts it
    text = (DEPLOY / "prerequisites.yaml").read_text()
    for secret in ("hf-token", "videojp-object-store"):
        assert f"kubectl create secret generic {secret}" in text
    readme = (REPO / "README.md").read_text()
    for name in ("videojp-shared", "hf-token", "videojp-object-store", "submit-rayjob.sh"):
        assert name in readme, name


def _fake_kubectl(tmp_path: Path, status: str | None) -> tuple[dict[str, str], Path]:
    """A kubectl that records its calls: the prerequisites exist, the RayJob has `status`."""
    log = tmp_path / "calls"
    exists = "0" if status is not None else "1"
    script = tmp_path / "kubectl"
    script.write_text(
        f"""#!/bin/bash
echo "$*" >> {log}
case "$1 $2" in
  "get rayjob") if [[ "$*" == *jsonpath* ]]; then echo -n "{status or ""}"; fi; exit {exists} ;;
  "create -f") cat > {tmp_path / "created.yaml"} ;;
esac
exit 0
"""
    )
    script.chmod(0o755)
    return {**os.environ, "KUBECTL": str(script)}, log


@pytest.mark.parametrize("status", [None, "Complete", "Failed", "Running"])
def test_resubmission_deletes_a_finished_rayjob_then_creates_it(tmp_path: Path, status: str | None) -> None:
    env, log = _fake_kubectl(tmp_path, status)
    run = subprocess.run(
        [BASH or "bash", str(DEPLOY / "submit-rayjob.sh"), "jobs/configs/stage2.yaml"],
        capture_output=True, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    calls = log.read_text().splitlines()
    assert "get pvc videojp-shared" in calls and "get secret videojp-object-store" in calls
    if status == "Running":  # never kills a running job unless asked
        assert run.returncode == 1 and "--force" in run.stderr
        assert not any(c.startswith(("delete", "create")) for c in calls)
        return
    assert run.returncode == 0, run.stderr
    deleted = [c for c in calls if c.startswith("delete")]
    assert deleted == ([] if status is None else ["delete rayjob videojp-stage2 --wait=true"])
    assert calls[-1] == "create -f -"  # create, not apply: a finished RayJob is not a no-op
    created = yaml.safe_load((tmp_path / "created.yaml").read_text())
    assert created["spec"]["entrypoint"] == "vjp run jobs/configs/stage2.yaml"


def test_image_recipe_pins_the_ray_version_of_the_rayjob() -> None:
    ray_version = render("jobs/configs/stage1.yaml")["spec"]["rayClusterSpec"]["rayVersion"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(rf"^ARG RAY_VERSION={re.escape(ray_version)}$", dockerfile, flags=re.M)
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py3\d+-gpu$", dockerfile, flags=re.M)
    install = (DEPLOY / "install.sh").read_text()
    assert f"RAY_VERSION=${{RAY_VERSION:-{ray_version}}}" in install
    assert '"ray[default]==$RAY_VERSION"' in install and "vllm" in install and ".[$EXTRAS]" in install
    assert "EXTRAS=${EXTRAS:-hf,vllm}" in install  # s3fs/gcsfs (hf extra) and vLLM, what the configs use
    # The image runs the configs' own check at build time, so a missing package fails the build.
    assert "vjp run jobs/configs/stage1.yaml --check" in dockerfile
    import ray

    assert ray.__version__ == ray_version, "the Ray of this checkout differs from the recipes' pin"
    for script in ("submit-rayjob.sh", "install.sh"):
        assert subprocess.run([BASH or "bash", "-n", str(DEPLOY / script)]).returncode == 0


def test_slurm_script_starts_ray_waits_bounded_and_submits_the_config() -> None:
    path = DEPLOY / "slurm.sbatch"
    text = path.read_text()
    assert BASH and subprocess.run([BASH, "-n", str(path)], capture_output=True).returncode == 0
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, flags=re.M))
    nodes, gpus = int(sbatch["nodes"]), int(sbatch["gpus-per-node"])
    assert "ray start --head" in text and 'ray start --address="$RAY_ADDRESS"' in text
    default = re.search(r"^CONFIG=\$\{1:-\$\{CONFIG:-(\S+)\}\}$", text, flags=re.M)
    assert default, "the config is the script's argument"
    assert re.search(r"ray job submit .*?-- vjp run \"\$CONFIG\"", text, flags=re.S)
    assert 'vjp run "$CONFIG" --check' in text  # missing packages fail before Ray starts
    cfg, _ = load_run_config(REPO / default.group(1))
    assert cfg.run.train.num_workers == nodes * gpus
    # The wait is bounded per probe and in all, catches what ray.init raises, and notices a dead head.
    assert "timeout -k 5 30 python" in text and "deadline=$((SECONDS + WAIT_S))" in text
    assert "except (ConnectionError, RuntimeError, TimeoutError)" in text and 'kill -0 "$head_pid"' in text
    assert '"excludes": [".venv"' in text


def test_slurm_head_address_is_the_first_ipv4(tmp_path: Path) -> None:
    """The address pipeline of the script, fed what `hostname --all-ip-addresses` prints."""
    line = next(ln for ln in (DEPLOY / "slurm.sbatch").read_text().splitlines() if "| tr ' ' '\\n'" in ln)
    pipeline = line.strip().removeprefix("| ").removesuffix(" || true)")
    out = subprocess.run(
        [BASH or "bash", "-c", f"echo 'fe80::1 127.0.1.1 10.2.3.4 192.168.0.9 ' | {pipeline}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "10.2.3.4"


def test_check_names_the_missing_package(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo = str(REPO / "jobs" / "configs" / "demo.yaml")
    # A protocol whose filesystem package is not installed here (adlfs: Azure).
    assert main(["run", demo, "--check", "--out", "az://container/out"]) == 2
    err = capsys.readouterr().err
    assert "run.out (az://container/out): az:// needs adlfs, not importable here" in err
    assert main(["run", demo, "--check", "--out", str(tmp_path)]) == 0
    cfg, raw = load_run_config(REPO / "jobs" / "configs" / "stage1.yaml")
    problems = missing_requirements(cfg, raw, ["curate", "caption"])
    vllm_here = "vllm" in sys.modules or _importable("vllm")
    assert any("run.caption.backend (vllm): needs vllm" in p for p in problems) != vllm_here
    # s3:// and hf:// sources resolve here (s3fs and huggingface_hub are installed) ...
    assert not any("s3://" in p or "hf://" in p for p in problems)
    # ... and the steps that do not read the sources or caption need neither.
    assert missing_requirements(cfg, raw, ["shard", "train"]) == []
    bad = {**raw, "run": {**raw["run"], "sources": ["pixabay:gs://b/x"], "caption": {"backend": "openai"}}}
    from jobs.run_config import parse_run_config

    problems = missing_requirements(parse_run_config(bad), bad, ["curate"])
    gcsfs_here = _importable("gcsfs")
    assert any("run.sources[0] (pixabay:gs://b/x): gs:// needs gcsfs" in p for p in problems) != gcsfs_here


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
