"""What a training worker's exit code tells its platform about the JOB.

One contract for s2s-train, the pods' entrypoint (launch/cloud/k8s_worker.py), the local
fleet harness (s2s-local-cluster) and every manifest's failure policy:

- FINISHED: the run reached config.train.num_steps. Nothing else exits 0.
- PREEMPTED: the job was interrupted and a restart of the whole group resumes it: a
  preemption notice (SIGTERM) to this worker or to a peer (all of them saved a checkpoint
  at the same step), or a peer lost without notice. 128 + SIGTERM, the code Kubernetes
  gives a container stopped by SIGTERM and TensorFlow's PreemptionCheckpointHandler uses.
- ERROR: bad flags, config, data or checkpoints; a restart will not fix it.
"""

import signal

FINISHED = 0
ERROR = 2
PREEMPTED = 128 + signal.SIGTERM  # 143
KILLED = 128 + signal.SIGKILL  # 137: a container or process killed without notice


def normalize(returncode: int) -> int:
    """subprocess reports death by signal N as -N; shells and Kubernetes say 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def is_restartable(returncode: int) -> bool:
    """Whether a restart of the group can resume the job after this worker's exit."""
    return normalize(returncode) in (PREEMPTED, KILLED)
