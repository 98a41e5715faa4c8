"""Container entrypoint for a Kubernetes Indexed Job: TF_CONFIG from the pod's index.

    python -m launch.cloud.k8s_worker --job_name=s2s --service=s2s-workers --replicas=4 \
        -- s2s-train --strategy=multi_worker_mirrored ...

Kubernetes sets JOB_COMPLETION_INDEX (0..replicas-1) in each pod of an Indexed Job. The
command runs as a child; SIGTERM is forwarded to it (the trainer saves a checkpoint and
exits 0) and then this process exits 143, so Kubernetes records the pod as interrupted and
starts it again instead of marking that index complete. The rerun resumes from the
checkpoint.
"""

import os
import signal
import subprocess
import sys
from typing import Sequence

from launch import exit_codes
from launch.cloud import cli, tf_config

PROG = "python -m launch.cloud.k8s_worker"
INDEX_VARIABLE = "JOB_COMPLETION_INDEX"


def worker_environment(environ: dict, *, job_name: str, service: str, replicas: int,
                       port: int) -> dict:
    """A copy of `environ` with TF_CONFIG for this pod (none for a single worker)."""
    if replicas < 1:
        raise cli.LaunchError(f"--replicas={replicas} must be at least 1")
    raw = environ.get(INDEX_VARIABLE)
    if raw is None or not raw.isdigit():
        raise cli.LaunchError(f"{INDEX_VARIABLE} is {raw!r}: run this inside an Indexed Job "
                              "(completionMode: Indexed)")
    index = int(raw)
    if index >= replicas:
        raise cli.LaunchError(f"{INDEX_VARIABLE}={index} but --replicas={replicas}")
    env = dict(environ)
    if replicas > 1:
        hosts = tf_config.indexed_job_hosts(job_name=job_name, service=service,
                                            replicas=replicas, port=port)
        env["TF_CONFIG"] = tf_config.dumps(tf_config.build(hosts=hosts, index=index))
    return env


def run_forwarding_signals(argv: Sequence[str], *, env: dict) -> int:
    """Runs argv, forwarding SIGTERM/SIGINT; its exit code (128 + N for signal N)."""
    try:
        child = subprocess.Popen(list(argv), env=env)
    except FileNotFoundError as error:
        raise cli.LaunchError(f"{argv[0]} is not installed or not on PATH") from error

    def forward(signum, _frame):
        child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    return exit_codes.normalize(child.wait())


def parse_args(argv: Sequence[str]):
    parser = cli.ArgumentParser(prog=PROG,
                                description=__doc__.split("\n")[0])
    parser.add_argument("--job_name", help="The Indexed Job's metadata.name.")
    parser.add_argument("--service", help="The headless Service's name.")
    parser.add_argument("--replicas", type=int, help="The Job's completions.")
    parser.add_argument("--port", type=int, default=tf_config.DEFAULT_PORT)
    parser.add_argument("--keep_tf_config", action="store_true",
                        help="TF_CONFIG comes from an operator (Kubeflow TFJob): only forward "
                             "signals and report preemption.")
    parser.add_argument("command", nargs="+", help="The command to run, after `--`.")
    args = parser.parse_args(argv)
    if not args.keep_tf_config and not (args.job_name and args.service and args.replicas):
        parser.error("--job_name, --service and --replicas are required without "
                     "--keep_tf_config")
    return args


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    if args.keep_tf_config:
        env = dict(os.environ)
    else:
        env = worker_environment(os.environ, job_name=args.job_name, service=args.service,
                                 replicas=args.replicas, port=args.port)
    print(f"k8s_worker: TF_CONFIG={env.get('TF_CONFIG', '(single worker: none)')}",
          file=sys.stderr, flush=True)
    sys.exit(run_forwarding_signals(args.command, env=env))


if __name__ == "__main__":
    cli.run_main(PROG, main)
