"""Turn prefect-kubernetes' default base job template into one whose jobs get NVIDIA GPUs.

    prefect work-pool get-default-base-job-template --type kubernetes --file base.json
    python docker/k8s_gpu_template.py base.json > gpu.json
    prefect work-pool create pretrainflow-k8s --type kubernetes --base-job-template gpu.json

Adds to the job's pod, each with a work-pool variable that a deployment can override:
- ``gpus`` (default 1): ``resources.limits["nvidia.com/gpu"]`` of the flow-run container
- ``shm_size`` (default 8Gi): a memory-backed /dev/shm (PyTorch, NCCL)
- ``env_secret`` (default pretrainflow-stack): a Secret whose keys become environment variables
  (MLFLOW_TRACKING_URI, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, DVC_REMOTE_URL, ...)
and, fixed: a toleration of the ``nvidia.com/gpu`` taint that GPU node pools carry, and
``runAsNonRoot`` (the pipeline image runs as uid 10001). Standard library only.
"""

from __future__ import annotations

import json
import sys
from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"
VARIABLES: dict[str, dict[str, Any]] = {
    "gpus": {"title": "GPUs", "type": "integer", "minimum": 1, "default": 1,
             "description": "NVIDIA GPUs for the flow-run container (resources.limits nvidia.com/gpu)."},
    "shm_size": {"title": "Shared memory", "type": "string", "default": "8Gi",
                 "description": "Size of the memory-backed /dev/shm (PyTorch, NCCL)."},
    "env_secret": {"title": "Environment secret", "type": "string", "default": "pretrainflow-stack",
                   "description": "Kubernetes Secret whose keys are set as environment variables."},
}


def add_gpus(template: dict[str, Any]) -> dict[str, Any]:
    """The template with GPUs, shared memory and the environment Secret; the input is unchanged."""
    out = json.loads(json.dumps(template))
    try:
        pod = out["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        properties = out["variables"]["properties"]
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError("not a Kubernetes base job template (from `prefect work-pool "
                         f"get-default-base-job-template --type kubernetes`): missing {exc}") from exc
    properties.update(VARIABLES)
    resources = container.setdefault("resources", {})
    resources.setdefault("limits", {})[GPU_RESOURCE] = "{{ gpus }}"
    container["envFrom"] = [{"secretRef": {"name": "{{ env_secret }}"}}]
    container["volumeMounts"] = [m for m in container.get("volumeMounts", []) if m.get("name") != "dshm"]
    container["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
    pod["volumes"] = [v for v in pod.get("volumes", []) if v.get("name") != "dshm"]
    pod["volumes"].append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "{{ shm_size }}"}})
    toleration = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
    pod["tolerations"] = [t for t in pod.get("tolerations", []) if t != toleration] + [toleration]
    pod.setdefault("securityContext", {})["runAsNonRoot"] = True
    return out


def main(argv: list[str]) -> int:
    if len(argv) > 2 or (len(argv) == 2 and argv[1] in ("-h", "--help")):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    source = open(argv[1]) if len(argv) == 2 else sys.stdin
    with source:
        template = json.load(source)
    try:
        json.dump(add_gpus(template), sys.stdout, indent=2)
    except ValueError as exc:
        print(f"k8s_gpu_template: {exc}", file=sys.stderr)
        return 1
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
