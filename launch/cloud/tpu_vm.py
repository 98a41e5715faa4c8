"""Cloud TPU VM: create it through a queued resource, install the image, train on all hosts.

    python -m launch.cloud.tpu_vm up --name=s2s-tpu --project=P --zone=us-west4-a \
        --accelerator_type=v5litepod-8 --image=IMAGE --data_dir=gs://B/data \
        --workdir=gs://B/run --spot --dry-run
    python -m launch.cloud.tpu_vm down --name=s2s-tpu --project=P --zone=us-west4-a

One client per slice, whatever its size:
- single-host slices (v5litepod-8, v4-8, v3-8, ...): the host pulls the image and runs
  `s2s-train --strategy=tpu --tpu=local` in it;
- multi-host slices (v5litepod-16, v4-32, v3-32, ...): only worker 0 runs the image,
  with `--tpu=<name>` and TPU_LOAD_LIBRARY=0, and reaches every host's chips through the
  TensorFlow servers of a `tpu-vm-tf-<version>-pod-pjrt` runtime (Cloud TPU's layout for
  TF2 on pod slices; <version> must be the TensorFlow of the image). That client is the
  one chief: it alone writes checkpoints, summaries and config.json.
Preemption (Spot, maintenance): the trainer saves on SIGTERM and exits 143, or the VM
just disappears. Run the same `up` command again: a suspended or failed queued resource
is deleted and requested anew, and training resumes from the last checkpoint.
"""

import dataclasses
import re
import shlex
import subprocess
import sys
import time
from typing import Sequence

from launch.cloud import cli, commands

PROG = "python -m launch.cloud.tpu_vm"
CONTAINER = "s2s-train"
GONE_STATES = ("SUSPENDED", "FAILED")  # a preempted or unfulfillable request
TENSORFLOW_VERSION = "2.21.0"  # the image's TensorFlow (constraints.txt)
SINGLE_HOST_RUNTIME = "v2-alpha-tpuv5-lite"  # the image brings TensorFlow and libtpu
# Chips (v5e, v6e) or TensorCores (v2-v4, v5p) per host, by the accelerator type's prefix.
_PER_HOST = {"v5litepod": 4, "v5e": 4, "v6e": 4, "v2": 8, "v3": 8, "v4": 8, "v5p": 8}


def slice_hosts(accelerator_type: str) -> int:
    """Hosts of a slice: `v5litepod-16` -> 4, `v4-32` -> 4, anything of 8 or fewer -> 1."""
    match = re.fullmatch(r"([a-z0-9]+)-(\d+)", accelerator_type)
    if not match or match.group(1) not in _PER_HOST:
        raise cli.LaunchError(f"--accelerator_type={accelerator_type!r} is not one of "
                              f"{', '.join(p + '-N' for p in _PER_HOST)}")
    size = int(match.group(2))
    return 1 if size <= 8 else size // _PER_HOST[match.group(1)]


@dataclasses.dataclass(frozen=True)
class TpuVm:
    name: str
    project: str
    zone: str
    accelerator_type: str = "v5litepod-8"
    runtime_version: str = ""  # "": SINGLE_HOST_RUNTIME, or the TF pod runtime for pods
    spot: bool = False

    def flags(self) -> list[str]:
        return [f"--project={self.project}", f"--zone={self.zone}"]

    @property
    def hosts(self) -> int:
        return slice_hosts(self.accelerator_type)

    @property
    def runtime(self) -> str:
        if self.runtime_version:
            return self.runtime_version
        if self.hosts > 1:
            return f"tpu-vm-tf-{TENSORFLOW_VERSION}-pod-pjrt"
        return SINGLE_HOST_RUNTIME

    @property
    def client_worker(self) -> str:
        """Where the image runs: the only host, or worker 0 of a pod slice."""
        return "all" if self.hosts == 1 else "0"

    @property
    def tpu_flag(self) -> str:
        return "local" if self.hosts == 1 else self.name

    @property
    def client_env(self) -> dict:
        return {} if self.hosts == 1 else {"TPU_LOAD_LIBRARY": "0"}


def create_command(tpu: TpuVm) -> list[str]:
    argv = ["gcloud", "compute", "tpus", "queued-resources", "create", tpu.name,
            f"--node-id={tpu.name}", *tpu.flags(), f"--accelerator-type={tpu.accelerator_type}",
            f"--runtime-version={tpu.runtime}"]
    return argv + (["--spot"] if tpu.spot else [])


def state_command(tpu: TpuVm) -> list[str]:
    return ["gcloud", "compute", "tpus", "queued-resources", "describe", tpu.name, *tpu.flags(),
            "--format=value(state.state)"]


def delete_command(tpu: TpuVm) -> list[str]:
    return ["gcloud", "compute", "tpus", "queued-resources", "delete", tpu.name, *tpu.flags(),
            "--force", "--quiet"]


def ssh_command(tpu: TpuVm, script: str) -> list[str]:
    """Runs `script` on the host(s) that run the client (TpuVm.client_worker)."""
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu.name, *tpu.flags(),
            f"--worker={tpu.client_worker}", f"--command={script}"]


def install_script(image: str) -> str:
    """Pull the image on a host (Artifact Registry / gcr.io need docker credentials)."""
    registry = image.split("/", 1)[0]
    steps = []
    if registry.endswith(("pkg.dev", "gcr.io")):
        steps.append(f"sudo gcloud auth configure-docker {shlex.quote(registry)} --quiet")
    steps.append(f"sudo docker pull {shlex.quote(image)}")
    return " && ".join(steps)


def train_script(image: str, train_argv: list[str], *, env: dict | None = None) -> str:
    """Replace any previous container, run training detached, and follow its log.

    Detached, so a dropped ssh session does not stop training; --privileged and
    --net=host give the container the TPU devices and the slice's network. The script
    exits with the trainer's code (0 only when the run finished).
    """
    env_flags = [f"--env={key}={value}" for key, value in sorted((env or {}).items())]
    run = ["sudo", "docker", "run", "-d", f"--name={CONTAINER}", "--net=host", "--privileged",
           *env_flags, image, *train_argv]
    return (f"sudo docker rm -f {CONTAINER} >/dev/null 2>&1; {shlex.join(run)} && "
            f"sudo docker logs -f {CONTAINER} && "
            f"exit $(sudo docker wait {CONTAINER})")


def tpu_train_command(tpu: TpuVm, *, config: str, data_dir: str, workdir: str,
                      overrides: Sequence[str]) -> list[str]:
    return commands.train_command(config=config, data_dir=data_dir, workdir=workdir,
                                  strategy="tpu", tpu=tpu.tpu_flag, overrides=overrides)


def queued_resource_state(tpu: TpuVm) -> str:
    """ACTIVE, WAITING_FOR_RESOURCES, ...; "" when the queued resource does not exist."""
    result = subprocess.run(state_command(tpu), capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else ""


def wait_until_active(tpu: TpuVm, *, timeout: float, poll_seconds: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (state := queued_resource_state(tpu)) != "ACTIVE":
        if state in GONE_STATES:
            raise cli.LaunchError(f"queued resource {tpu.name} is {state}")
        if time.monotonic() > deadline:
            raise cli.LaunchError(f"queued resource {tpu.name} is still {state or 'absent'} "
                                  f"after {timeout:g} s")
        print(f"{tpu.name}: {state or 'requested'}; waiting", file=sys.stderr, flush=True)
        time.sleep(poll_seconds)


def up(tpu: TpuVm, *, image: str, train_argv: list[str], dry_run: bool,
       wait_timeout: float) -> None:
    """Create (or re-create after preemption), wait for ACTIVE, install, train."""
    install = ssh_command(tpu, install_script(image))
    train = ssh_command(tpu, train_script(image, train_argv, env=tpu.client_env))
    if dry_run:
        cli.run_commands([create_command(tpu)], dry_run=True)
        print(f"# then poll until this prints ACTIVE: {shlex.join(state_command(tpu))}")
        cli.run_commands([install, train], dry_run=True)
        return
    state = queued_resource_state(tpu)
    if state in GONE_STATES:
        cli.run_commands([delete_command(tpu)], dry_run=False)
        state = ""
    if not state:
        cli.run_commands([create_command(tpu)], dry_run=False)
    wait_until_active(tpu, timeout=wait_timeout)
    cli.run_commands([install, train], dry_run=False)


def parse_args(argv: Sequence[str], *, prog: str = PROG):
    parser = cli.ArgumentParser(prog=prog,
                                description="Train s2s-pipeline on a Cloud TPU VM.")
    parser.add_argument("action", choices=["up", "train", "down"],
                        help="up: create+install+train; train: on an existing TPU; "
                             "down: delete the queued resource and its TPU.")
    parser.add_argument("--name", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--zone", required=True)
    parser.add_argument("--accelerator_type", default="v5litepod-8")
    parser.add_argument("--runtime_version", default="",
                        help=f"Default: {SINGLE_HOST_RUNTIME} on one host; "
                             f"tpu-vm-tf-{TENSORFLOW_VERSION}-pod-pjrt on a multi-host slice.")
    parser.add_argument("--spot", action="store_true", help="Spot capacity (preemptible).")
    parser.add_argument("--image", help="The TPU build of the Dockerfile's image.")
    parser.add_argument("--data_dir", help="gs:// s2s-preprocess output.")
    parser.add_argument("--workdir", help="gs:// training workdir (checkpoints survive here).")
    parser.add_argument("--config", default="configs/transformer.py")
    parser.add_argument("--override", action="append", default=[],
                        help="Config override section.field=value (repeatable).")
    parser.add_argument("--wait_timeout", type=float, default=24 * 3600.0,
                        help="Seconds to wait for the queued resource to become ACTIVE.")
    cli.add_dry_run(parser)
    args = parser.parse_args(argv)
    if args.action != "down" and not (args.image and args.data_dir and args.workdir):
        parser.error(f"{args.action} needs --image, --data_dir and --workdir")
    return args


def main(argv: Sequence[str], *, prog: str = PROG) -> None:
    args = parse_args(argv, prog=prog)
    tpu = TpuVm(name=args.name, project=args.project, zone=args.zone,
                accelerator_type=args.accelerator_type, runtime_version=args.runtime_version,
                spot=args.spot)
    if args.action == "down":
        cli.run_commands([delete_command(tpu)], dry_run=args.dry_run)
        return
    train_argv = tpu_train_command(tpu, config=args.config,
                                   data_dir=cli.require_gcs("--data_dir", args.data_dir),
                                   workdir=cli.require_gcs("--workdir", args.workdir),
                                   overrides=cli.split_overrides(args.override))
    if args.action == "train":
        cli.run_commands([ssh_command(tpu, install_script(args.image)),
                          ssh_command(tpu, train_script(args.image, train_argv,
                                                        env=tpu.client_env))],
                         dry_run=args.dry_run)
        return
    up(tpu, image=args.image, train_argv=train_argv, dry_run=args.dry_run,
       wait_timeout=args.wait_timeout)


if __name__ == "__main__":
    cli.run_main(PROG, main)
