"""TF_CONFIG for a multi-worker job whose workers are numbered 0..N-1 (worker 0 is chief).

MultiWorkerMirroredStrategy reads it; without an explicit "chief" task, worker 0 writes
checkpoints, summaries and exports (launch/strategy.py:worker_info).
"""

import json

DEFAULT_PORT = 2222


def indexed_job_hosts(*, job_name: str, service: str, replicas: int,
                      port: int = DEFAULT_PORT) -> list[str]:
    """Addresses of a Kubernetes Indexed Job's pods behind a headless Service.

    Pod i of Job `job_name` has hostname `{job_name}-{i}`; with `subdomain: {service}` it
    resolves as `{job_name}-{i}.{service}` from any pod in the same namespace.
    """
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    return [f"{job_name}-{index}.{service}:{port}" for index in range(replicas)]


def build(*, hosts: list[str], index: int, task_type: str = "worker") -> dict:
    """The TF_CONFIG dict for task `index` of a cluster made of `hosts` workers."""
    if not 0 <= index < len(hosts):
        raise ValueError(f"worker index {index} is outside 0..{len(hosts) - 1}")
    return {"cluster": {task_type: list(hosts)}, "task": {"type": task_type, "index": index}}


def dumps(config: dict) -> str:
    """Compact JSON, as the TF_CONFIG environment variable expects."""
    return json.dumps(config, separators=(",", ":"), sort_keys=True)
