"""Cloud TPU VM: create it through a queued resource, install the image, train on all hosts.

    python -m launch.cloud.tpu_vm up --name=s2s-tpu --project=P --zone=us-west4-a \
        --accelerator_type=v5litepod-8 --image=IMAGE --data_dir=gs://B/data \
        --workdir=gs://B/run --spot --dry-run
    python -m launch.cloud.tpu_vm down --name=s2s-tpu --project=P --zone=us-west4-a

Every host of the slice (`--worker=all`) pulls the image and runs
`s2s-train --strategy=tpu --tpu=local` in it. Preemption (Spot, maintenance): the trainer
gets SIGTERM, saves a checkpoint to the gs:// workdir and exits 0. Run the same `up`
command again: a suspended or failed queued resource is deleted and requested anew, and
training resumes from the last checkpoint.
"""

import dataclasses
import shlex
import subprocess
import sys
import time
from typing import Sequence

from launch.cloud import cli, commands

PROG = "python -m launch.cloud.tpu_vm"
CONTAINER = "s2s-train"
GONE_STATES = ("SUSPENDED", "FAILED")  # a preempted or unfulfillable request


@dataclasses.dataclass(frozen=True)
class TpuVm:
    name: str
    project: str
    zone: str
    accelerator_type: str = "v5litepod-8"
    runtime_version: str = "v2-alpha-tpuv5-lite"
    spot: bool = False

    def flags(self) -> list[str]:
        return [f"--project={self.project}", f"--zone={self.zone}"]


def create_command(tpu: TpuVm) -> list[str]:
    argv = ["gcloud", "compute", "tpus", "queued-resources", "create", tpu.name,
            f"--node-id={tpu.name}", *tpu.flags(), f"--accelerator-type={tpu.accelerator_type}",
            f"--runtime-version={tpu.runtime_version}"]
    return argv + (["--spot"] if tpu.spot else [])


def state_command(tpu: TpuVm) -> list[str]:
    return ["gcloud", "compute", "tpus", "queued-resources", "describe", tpu.name, *tpu.flags(),
            "--format=value(state.state)"]


def delete_command(tpu: TpuVm) -> list[str]:
    return ["gcloud", "compute", "tpus", "queued-resources", "delete", tpu.name, *tpu.flags(),
            "--force", "--quiet"]


def ssh_command(tpu: TpuVm, script: str) -> list[str]:
    """Runs `script` on every host of the slice."""
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu.name, *tpu.flags(),
            "--worker=all", f"--command={script}"]


def install_script(image: str) -> str:
    """Pull the image on a host (Artifact Registry / gcr.io need docker credentials)."""
    registry = image.split("/", 1)[0]
    steps = []
    if registry.endswith(("pkg.dev", "gcr.io")):
        steps.append(f"sudo gcloud auth configure-docker {shlex.quote(registry)} --quiet")
    steps.append(f"sudo docker pull {shlex.quote(image)}")
    return " && ".join(steps)


def train_script(image: str, train_argv: list[str]) -> str:
    """Replace any previous container, run training detached, and follow its log.

    Detached, so a dropped ssh session does not stop training; --privileged and
    --net=host give the container the TPU devices and the slice's network.
    """
    run = ["sudo", "docker", "run", "-d", f"--name={CONTAINER}", "--net=host", "--privileged",
           image, *train_argv]
    return (f"sudo docker rm -f {CONTAINER} >/dev/null 2>&1; {shlex.join(run)} && "
            f"sudo docker logs -f {CONTAINER} && "
            f"exit $(sudo docker wait {CONTAINER})")


def tpu_train_command(*, config: str, data_dir: str, workdir: str,
                      overrides: Sequence[str]) -> list[str]:
    return commands.train_command(config=config, data_dir=data_dir, workdir=workdir,
                                  strategy="tpu", tpu="local", overrides=overrides)


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
    train = ssh_command(tpu, train_script(image, train_argv))
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


def parse_args(argv: Sequence[str]):
    parser = cli.ArgumentParser(prog=PROG,
                                description="Train s2s-pipeline on a Cloud TPU VM.")
    parser.add_argument("action", choices=["up", "train", "down"],
                        help="up: create+install+train; train: on an existing TPU; "
                             "down: delete the queued resource and its TPU.")
    parser.add_argument("--name", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--zone", required=True)
    parser.add_argument("--accelerator_type", default="v5litepod-8")
    parser.add_argument("--runtime_version", default="v2-alpha-tpuv5-lite")
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


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    tpu = TpuVm(name=args.name, project=args.project, zone=args.zone,
                accelerator_type=args.accelerator_type, runtime_version=args.runtime_version,
                spot=args.spot)
    if args.action == "down":
        cli.run_commands([delete_command(tpu)], dry_run=args.dry_run)
        return
    train_argv = tpu_train_command(config=args.config,
                                   data_dir=cli.require_gcs("--data_dir", args.data_dir),
                                   workdir=cli.require_gcs("--workdir", args.workdir),
                                   overrides=cli.split_overrides(args.override))
    if args.action == "train":
        cli.run_commands([ssh_command(tpu, install_script(args.image)),
                          ssh_command(tpu, train_script(args.image, train_argv))],
                         dry_run=args.dry_run)
        return
    up(tpu, image=args.image, train_argv=train_argv, dry_run=args.dry_run,
       wait_timeout=args.wait_timeout)


if __name__ == "__main__":
    cli.run_main(PROG, main)
