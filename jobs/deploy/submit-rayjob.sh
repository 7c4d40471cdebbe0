#!/usr/bin/env bash
# Submit (or resubmit) `vjp run CONFIG` as a KubeRay RayJob rendered from jobs/deploy/rayjob.yaml.
#
#   bash jobs/deploy/submit-rayjob.sh CONFIG [--name NAME] [--image IMAGE] [--dry-run] [--force]
#
# The RayJob is named after the config (jobs/configs/stage2.yaml -> videojp-stage2) unless --name
# says otherwise. KubeRay never reruns a finished RayJob when the same manifest is applied again,
# so a resubmission deletes the previous RayJob of that name (and with it its Ray cluster; the
# outputs stay on the volume / object store) and creates it anew: every step then skips the work
# earlier attempts finished. A RayJob that is still running is left alone unless --force.
# --dry-run prints the manifest and checks nothing (no cluster needed).
# Environment: IMAGE (default registry.example.com/videojp-data:0.1.0), KUBECTL (default kubectl).
set -euo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
config=""
name=""
image=${IMAGE:-registry.example.com/videojp-data:0.1.0}
dry_run=0
force=0
kubectl=${KUBECTL:-kubectl}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name=${2:?--name needs a value}; shift 2 ;;
    --image) image=${2:?--image needs a value}; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --force) force=1; shift ;;
    -h|--help) usage ;;
    -*) echo "submit-rayjob: unknown option $1" >&2; usage ;;
    *) [[ -z "$config" ]] || usage; config=$1; shift ;;
  esac
done
[[ -n "$config" ]] || usage
# The entrypoint runs in the image's checkout (/opt/videojp): the config is a path inside the repo.
[[ -f "$repo/$config" ]] || { echo "submit-rayjob: $config is not a file of this repository" >&2; exit 2; }
[[ "$config" =~ ^[A-Za-z0-9._/-]+$ ]] || { echo "submit-rayjob: unexpected characters in $config" >&2; exit 2; }
if [[ -z "$name" ]]; then
  stem=$(basename "$config"); stem=${stem%.*}
  name="videojp-$(echo "$stem" | tr '[:upper:]_.' '[:lower:]--')"
fi
# RFC 1123 label (the head service is NAME-head-svc, so keep room for the suffixes).
[[ "$name" =~ ^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$ ]] || {
  echo "submit-rayjob: '$name' is not a valid RayJob name (lower case, digits, '-', <= 40)" >&2; exit 2; }
[[ "$image" =~ ^[A-Za-z0-9._/:@-]+$ ]] || { echo "submit-rayjob: unexpected characters in image" >&2; exit 2; }

manifest=$(sed -e "s|@NAME@|$name|g" -e "s|@CONFIG@|$config|g" -e "s|@IMAGE@|$image|g" "$here/rayjob.yaml")
if [[ $dry_run == 1 ]]; then
  printf '%s\n' "$manifest"
  exit 0
fi

missing=()
"$kubectl" get pvc videojp-shared >/dev/null 2>&1 || missing+=("pvc/videojp-shared")
"$kubectl" get secret hf-token >/dev/null 2>&1 || missing+=("secret/hf-token")
"$kubectl" get secret videojp-object-store >/dev/null 2>&1 || missing+=("secret/videojp-object-store")
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "submit-rayjob: missing prerequisites: ${missing[*]} (see jobs/deploy/prerequisites.yaml)" >&2
  exit 1
fi

if "$kubectl" get rayjob "$name" >/dev/null 2>&1; then
  status=$("$kubectl" get rayjob "$name" -o jsonpath='{.status.jobDeploymentStatus}' 2>/dev/null || true)
  case "$status" in
    Complete|Failed|"") ;;
    *)
      if [[ $force != 1 ]]; then
        echo "submit-rayjob: RayJob $name is $status; --force deletes and restarts it" >&2
        exit 1
      fi ;;
  esac
  echo "submit-rayjob: deleting the previous RayJob $name (${status:-no status}); outputs are kept"
  "$kubectl" delete rayjob "$name" --wait=true
fi
printf '%s\n' "$manifest" | "$kubectl" create -f -
echo "submit-rayjob: submitted $name (vjp run $config); follow it with:"
echo "  $kubectl get rayjob $name -w"
echo "  $kubectl port-forward \"svc/\$($kubectl get rayjob $name -o jsonpath='{.status.rayClusterName}')-head-svc\" 8265"
