"""Kubernetes manifests for training + evaluation, generated so their arguments agree.

Three variants, each with a separate evaluator Job that follows the same workdir; in all
of them each pod's entrypoint (launch/cloud/k8s_worker.py) passes on the trainer's exit
code (launch/exit_codes.py) and the failure policy acts on it for the whole group:
- `jobset` (default, GKE): a JobSet (jobset.x-k8s.io) of one Indexed Job. Any interrupted
  worker (exit 143 or 137, an evicted or lost pod) fails the Job and the JobSet restarts
  ALL pods, up to --max_restarts times; any other non-zero exit fails the JobSet.
- `indexed`: a headless Service and a plain Indexed Job, for clusters without JobSet. A
  pod exiting 143/137 or disrupted is replaced without using retries; since every worker
  exits 143 when any of them is interrupted, the whole group is replaced. Any other
  non-zero exit fails the Job.
- `tfjob`: a Kubeflow TFJob (legacy: the training operator sets TF_CONFIG; its ExitCode
  policy retries 128-255 and fails on 1-127, which matches our codes).
One pod uses all its GPUs (MirroredStrategy); several pods train together
(MultiWorkerMirroredStrategy), each with all of its GPUs.

    python -m launch.cloud.k8s --name=s2s-ende --image=IMAGE \
        --config=configs/transformer.py --data_dir=gs://B/data --workdir=gs://B/run \
        --replicas=2 --gpus_per_worker=4 --dry-run
"""

import dataclasses
import subprocess
from typing import Sequence

import yaml

from launch import exit_codes
from launch.cloud import cli, commands, tf_config

PROG = "python -m launch.cloud.k8s"
VARIANTS = ("jobset", "indexed", "tfjob")
RESTART_EXIT_CODES = [exit_codes.PREEMPTED, exit_codes.KILLED]
JOBSET_WORKERS = "workers"  # the JobSet's replicated job; its pods are NAME-workers-0-<i>
TFJOB_CONTAINER = "tensorflow"  # the name the Kubeflow training operator looks for


@dataclasses.dataclass(frozen=True)
class ClusterJob:
    """What to train and on how many pods; every manifest is derived from this."""
    name: str
    image: str
    config: str
    data_dir: str
    workdir: str
    replicas: int = 1
    gpus_per_worker: int = 0
    gpu_type: str = ""  # GKE accelerator node label, e.g. nvidia-l4; empty: any node
    cpu: str = "4"
    memory: str = "16Gi"
    namespace: str = "default"
    port: int = tf_config.DEFAULT_PORT
    overrides: tuple[str, ...] = ()
    volume_claim: str = ""  # PersistentVolumeClaim mounted at mount_path (non-gs:// paths)
    mount_path: str = "/mnt/s2s"
    eval_timeout: float = 3600.0  # evaluator stops after this long without a new checkpoint
    max_restarts: int = 20  # jobset: group restarts after interruptions before giving up

    @property
    def service(self) -> str:
        return f"{self.name}-workers"

    @property
    def strategy(self) -> str:
        return commands.choose_strategy(workers=self.replicas,
                                        accelerators_per_worker=self.gpus_per_worker)

    def train_command(self) -> list[str]:
        return commands.train_command(config=self.config, data_dir=self.data_dir,
                                      workdir=self.workdir, strategy=self.strategy,
                                      overrides=self.overrides)

    def eval_command(self) -> list[str]:
        return commands.watch_command(workdir=self.workdir, data_dir=self.data_dir,
                                      timeout=self.eval_timeout)


def labels(job: ClusterJob, role: str) -> dict:
    return {"app.kubernetes.io/name": "s2s-pipeline", "s2s-pipeline/job": job.name,
            "s2s-pipeline/role": role}


def container(job: ClusterJob, *, name: str, command: list[str], gpus: int) -> dict:
    """One container of our image; GPUs as limits, storage from a PVC when asked."""
    resources = {"requests": {"cpu": job.cpu, "memory": job.memory}}
    if gpus:
        resources["limits"] = {"nvidia.com/gpu": gpus}
    spec = {"name": name, "image": job.image, "command": command, "resources": resources}
    if job.volume_claim:
        spec["volumeMounts"] = [{"name": "s2s-data", "mountPath": job.mount_path}]
    return spec


def pod_spec(job: ClusterJob, *, containers: list[dict], restart_policy: str | None,
             gpus: int) -> dict:
    """Pod spec; the grace period leaves the trainer time to save a checkpoint on SIGTERM."""
    spec = {"restartPolicy": restart_policy} if restart_policy else {}
    spec.update({"terminationGracePeriodSeconds": 300, "containers": containers})
    if gpus and job.gpu_type:
        spec["nodeSelector"] = {"cloud.google.com/gke-accelerator": job.gpu_type}
    if job.volume_claim:
        spec["volumes"] = [{"name": "s2s-data",
                            "persistentVolumeClaim": {"claimName": job.volume_claim}}]
    return spec


def metadata(job: ClusterJob, name: str, role: str) -> dict:
    return {"name": name, "namespace": job.namespace, "labels": labels(job, role)}


def headless_service(job: ClusterJob) -> dict:
    """Gives pod i of the Indexed Job the DNS name `{name}-{i}.{service}`."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": metadata(job, job.service, "train"),
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                     "selector": labels(job, "train"),
                     "ports": [{"name": "grpc", "port": job.port}]}}


def training_pod(job: ClusterJob, *, pod_job_name: str, service: str) -> dict:
    """A training pod of an Indexed Job named `pod_job_name`, reachable through `service`."""
    entrypoint = ["python", "-m", "launch.cloud.k8s_worker", f"--job_name={pod_job_name}",
                  f"--service={service}", f"--replicas={job.replicas}",
                  f"--port={job.port}", "--"]
    trainer = container(job, name="trainer", command=entrypoint + job.train_command(),
                        gpus=job.gpus_per_worker)
    trainer["ports"] = [{"name": "grpc", "containerPort": job.port}]
    pod = pod_spec(job, containers=[trainer], restart_policy="Never", gpus=job.gpus_per_worker)
    pod["subdomain"] = service
    return pod


def fail_on_errors_rule() -> dict:
    """A non-zero exit other than an interruption is an error a restart will not fix."""
    return {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "NotIn",
                                                 "values": RESTART_EXIT_CODES}}


def indexed_job(job: ClusterJob) -> dict:
    """Training pods 0..replicas-1; interrupted pods are replaced without using retries."""
    pod = training_pod(job, pod_job_name=job.name, service=job.service)
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": metadata(job, job.name, "train"),
            "spec": {"completionMode": "Indexed", "completions": job.replicas,
                     "parallelism": job.replicas, "backoffLimit": 6,
                     "podFailurePolicy": {"rules": [
                         {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                         fail_on_errors_rule(),
                         {"action": "Ignore", "onExitCodes": {
                             "containerName": "trainer", "operator": "In",
                             "values": RESTART_EXIT_CODES}}]},
                     "template": {"metadata": {"labels": labels(job, "train")}, "spec": pod}}}


def jobset(job: ClusterJob) -> dict:
    """One Indexed Job in a JobSet: any interruption restarts every pod together.

    backoffLimit 0 makes any failed pod fail its Job. A failure by the podFailurePolicy
    (an error exit) fails the JobSet; every other failure (exit 143/137, eviction, a lost
    node) restarts the whole JobSet. Pod i is `{name}-workers-0-{i}.{name}`.
    """
    pod = training_pod(job, pod_job_name=f"{job.name}-{JOBSET_WORKERS}-0", service=job.name)
    return {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
            "metadata": metadata(job, job.name, "train"),
            "spec": {"network": {"enableDNSHostnames": True, "subdomain": job.name},
                     "failurePolicy": {"maxRestarts": job.max_restarts, "rules": [
                         {"action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]},
                         {"action": "RestartJobSet"}]},
                     "replicatedJobs": [{"name": JOBSET_WORKERS, "replicas": 1, "template": {
                         "spec": {"completionMode": "Indexed", "completions": job.replicas,
                                  "parallelism": job.replicas, "backoffLimit": 0,
                                  "podFailurePolicy": {"rules": [
                                      {"action": "Count",
                                       "onPodConditions": [{"type": "DisruptionTarget"}]},
                                      fail_on_errors_rule()]},
                                  "template": {"metadata": {"labels": labels(job, "train")},
                                               "spec": pod}}}}]}}


def tfjob(job: ClusterJob) -> dict:
    """Kubeflow TFJob: the operator writes TF_CONFIG; exit codes above 128 are retried."""
    entrypoint = ["python", "-m", "launch.cloud.k8s_worker", "--keep_tf_config", "--"]
    trainer = container(job, name=TFJOB_CONTAINER, command=entrypoint + job.train_command(),
                        gpus=job.gpus_per_worker)
    trainer["ports"] = [{"name": "tfjob-port", "containerPort": job.port}]
    # A TFJob takes the restart policy per replica type, not per pod.
    pod = pod_spec(job, containers=[trainer], restart_policy=None, gpus=job.gpus_per_worker)
    return {"apiVersion": "kubeflow.org/v1", "kind": "TFJob",
            "metadata": metadata(job, job.name, "train"),
            "spec": {"runPolicy": {"backoffLimit": 6, "cleanPodPolicy": "None"},
                     "tfReplicaSpecs": {"Worker": {
                         "replicas": job.replicas, "restartPolicy": "ExitCode",
                         "template": {"metadata": {"labels": labels(job, "train")},
                                      "spec": pod}}}}}


def evaluator_job(job: ClusterJob) -> dict:
    """Follows the trainer's checkpoints, scores dev and exports the best model."""
    gpus = min(job.gpus_per_worker, 1)
    evaluator = container(job, name="evaluator", command=job.eval_command(), gpus=gpus)
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": metadata(job, f"{job.name}-eval", "evaluate"),
            "spec": {"backoffLimit": 6, "template": {
                "metadata": {"labels": labels(job, "evaluate")},
                "spec": pod_spec(job, containers=[evaluator], restart_policy="OnFailure",
                                 gpus=gpus)}}}


def manifests(job: ClusterJob, *, variant: str) -> list[dict]:
    if variant == "jobset":
        return [jobset(job), evaluator_job(job)]
    if variant == "indexed":
        return [headless_service(job), indexed_job(job), evaluator_job(job)]
    if variant == "tfjob":
        return [tfjob(job), evaluator_job(job)]
    raise cli.LaunchError(f"--variant={variant!r} is not one of {', '.join(VARIANTS)}")


def to_yaml(documents: list[dict]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False, width=100)


def parse_args(argv: Sequence[str], *, prog: str = PROG):
    parser = cli.ArgumentParser(prog=prog,
                                description="Kubernetes manifests for s2s training.")
    parser.add_argument("--variant", choices=VARIANTS, default="jobset",
                        help="jobset (GKE, restarts the group), indexed (plain Indexed Job) "
                             "or tfjob (Kubeflow, legacy).")
    parser.add_argument("--max_restarts", type=int, default=20,
                        help="jobset: group restarts after interruptions before failing.")
    parser.add_argument("--name", required=True, help="Job name (DNS-1123: a-z, 0-9, -).")
    parser.add_argument("--image", required=True)
    parser.add_argument("--config", default="configs/transformer.py")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--replicas", type=int, default=1, help="Training pods.")
    parser.add_argument("--gpus_per_worker", type=int, default=0)
    parser.add_argument("--gpu_type", default="", help="GKE accelerator, e.g. nvidia-l4.")
    parser.add_argument("--cpu", default="4")
    parser.add_argument("--memory", default="16Gi")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--volume_claim", default="",
                        help="PVC to mount at --mount_path when the paths are not gs://.")
    parser.add_argument("--mount_path", default="/mnt/s2s")
    parser.add_argument("--override", action="append", default=[],
                        help="Config override section.field=value (repeatable).")
    cli.add_dry_run(parser)
    return parser.parse_args(argv)


def job_from_args(args) -> ClusterJob:
    if not all(c.isalnum() or c == "-" for c in args.name) or args.name != args.name.lower():
        raise cli.LaunchError(f"--name={args.name!r} must use only a-z, 0-9 and '-'")
    if args.replicas < 1 or args.gpus_per_worker < 0 or args.max_restarts < 0:
        raise cli.LaunchError("--replicas must be >= 1, --gpus_per_worker and --max_restarts "
                              ">= 0")
    return ClusterJob(name=args.name, image=args.image, config=args.config,
                      data_dir=args.data_dir, workdir=args.workdir, replicas=args.replicas,
                      gpus_per_worker=args.gpus_per_worker, gpu_type=args.gpu_type,
                      cpu=args.cpu, memory=args.memory, namespace=args.namespace,
                      overrides=tuple(cli.split_overrides(args.override)),
                      volume_claim=args.volume_claim, mount_path=args.mount_path,
                      max_restarts=args.max_restarts)


def main(argv: Sequence[str], *, prog: str = PROG) -> None:
    args = parse_args(argv, prog=prog)
    text = to_yaml(manifests(job_from_args(args), variant=args.variant))
    if args.dry_run:
        print("# kubectl apply -f -")
        print(text, end="")
        return
    try:
        subprocess.run(["kubectl", "apply", "-f", "-"], input=text, text=True, check=True)
    except FileNotFoundError as error:
        raise cli.LaunchError("kubectl is not installed or not on PATH") from error
    except subprocess.CalledProcessError as error:
        raise cli.LaunchError(f"kubectl apply exited with status {error.returncode}") from error


if __name__ == "__main__":
    cli.run_main(PROG, main)
