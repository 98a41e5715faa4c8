"""The command lines of s2s-preprocess, s2s-train, s2s-evaluate and publish, built once.

Every launcher (TPU VM, Vertex AI, Kubernetes, Dataflow, Airflow, Kubeflow) takes its argv
from here, so train, evaluate and publish always see the same workdir and data_dir.
"""

import shlex
from typing import Sequence

from launch.cloud.cli import LaunchError

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")


def choose_strategy(*, workers: int, accelerators_per_worker: int) -> str:
    """Several machines need TF_CONFIG and collectives; one machine mirrors its devices."""
    if workers < 1 or accelerators_per_worker < 0:
        raise LaunchError(f"need workers >= 1 and accelerators >= 0, got {workers} and "
                          f"{accelerators_per_worker}")
    if workers > 1:
        return "multi_worker_mirrored"
    if accelerators_per_worker > 1:
        return "mirrored"
    return "one_device" if accelerators_per_worker == 1 else "default"


def train_command(*, config: str, data_dir: str, workdir: str, strategy: str, tpu: str = "",
                  overrides: Sequence[str] = ()) -> list[str]:
    """s2s-train argv; `overrides` are `section.field=value` strings (--config.section.field)."""
    if strategy not in STRATEGIES:
        raise LaunchError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    argv = ["s2s-train", f"--config={config}", f"--data_dir={data_dir}",
            f"--workdir={workdir}", f"--strategy={strategy}"]
    if tpu:
        argv.append(f"--tpu={tpu}")
    return argv + [f"--config.{override}" for override in overrides]


def evaluate_command(*, workdir: str, data_dir: str, split: str, watch: bool = False,
                     timeout: float | None = None) -> list[str]:
    """s2s-evaluate argv; scoring dev also exports the best checkpoint to WORKDIR/export/best."""
    if split not in ("dev", "test"):
        raise LaunchError(f"split {split!r} must be dev or test")
    argv = ["s2s-evaluate", f"--workdir={workdir}", f"--data_dir={data_dir}", f"--split={split}"]
    if watch:
        argv.append("--watch")
    if timeout is not None:
        argv.append(f"--timeout={timeout:g}")
    return argv


def wait_for_file_command(path: str, *, timeout: float) -> list[str]:
    """Blocks until `path` exists: an evaluator started beside the trainer waits for it."""
    return ["python", "-m", "launch.cloud.files", "wait", path, f"--timeout={timeout:g}"]


def watch_command(*, workdir: str, data_dir: str, timeout: float) -> list[str]:
    """The evaluator beside training: wait for the trainer's config.json, then follow dev."""
    return chain([wait_for_file_command(f"{workdir.rstrip('/')}/config.json", timeout=timeout),
                  evaluate_command(workdir=workdir, data_dir=data_dir, split="dev", watch=True,
                                   timeout=timeout)])


def final_evaluation_command(*, workdir: str, data_dir: str) -> list[str]:
    """After training: score dev (exports the best) and then test, in one container."""
    return chain([evaluate_command(workdir=workdir, data_dir=data_dir, split="dev"),
                  evaluate_command(workdir=workdir, data_dir=data_dir, split="test")])


def preprocess_command(*, train: str, output_dir: str, dev: str = "", test: str = "",
                       split_fractions: str = "", extra_flags: Sequence[str] = ()) -> list[str]:
    """s2s-preprocess argv: explicit dev/test sources, or fractions split off train."""
    if bool(dev or test) == bool(split_fractions):
        raise LaunchError("give either --dev and --test sources or --split_fractions, not both "
                          "and not neither")
    argv = ["s2s-preprocess", f"--train={train}"]
    if split_fractions:
        argv.append(f"--split_fractions={split_fractions}")
    else:
        argv += [f"--dev={dev}", f"--test={test}"]
    return argv + [f"--output_dir={output_dir}", *extra_flags]


def publish_command(*, workdir: str, data_dir: str, bucket: str, prefix: str) -> list[str]:
    """The publish-if-better step (launch/cloud/publish.py)."""
    return ["python", "-m", "launch.cloud.publish", f"--workdir={workdir}",
            f"--data_dir={data_dir}", f"--bucket={bucket}", f"--prefix={prefix}"]


def chain(commands: Sequence[Sequence[str]]) -> list[str]:
    """Several commands as one container command: `sh -c 'a && b'`, stopping at a failure."""
    return ["sh", "-c", " && ".join(shlex.join(argv) for argv in commands)]
