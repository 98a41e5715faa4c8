"""s2s-cloud: one console script for the cloud launchers, one subcommand per module.

    s2s-cloud vertex train --project=P ... --dry-run   # == python -m launch.cloud.vertex train ...

Each subcommand hands its arguments, unchanged, to that module's main(argv); only the
name in its usage and error lines changes (`s2s-cloud vertex: error: ...`). The extras a
module imports when it loads are checked first, so a missing one is a one-line hint.
"""

import argparse
import functools
import importlib
import sys
from typing import Sequence

from launch import extras
from launch.cloud import cli

PROG = "s2s-cloud"
# subcommand -> (module in launch.cloud, one line of help, what the module imports on load)
COMMANDS = {
    "tpu-vm": ("tpu_vm", "Train on a Cloud TPU VM (queued resource), or delete it.", ()),
    "vertex": ("vertex", "Submit training or the evaluator as Vertex AI CustomJobs.", ("yaml",)),
    "k8s": ("k8s", "Apply Kubernetes manifests for training and evaluation.", ("yaml",)),
    "dataflow": ("dataflow", "Run s2s-preprocess on Dataflow.", ()),
    "publish": ("publish", "Publish a trained model if it beats the published one.",
                ("google.api_core",)),
    "retrain": ("retrain_local", "Run the retraining loop on this machine.", ()),
    "kfp": ("kfp_pipeline", "Compile the Kubeflow retraining pipeline, or run it locally.",
            ("kfp",)),
    "retrain-demo": ("retrain_demo", "Two retraining iterations on CMUdict, locally.", ()),
}


def parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<14}{summary}" for name, (_, summary, _) in COMMANDS.items())
    top = cli.ArgumentParser(
        prog=PROG, usage=f"{PROG} [-h] COMMAND [ARGS ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Cloud launchers of s2s-pipeline. Every command takes --dry-run: print\n"
                    "what it would run, submit or upload, and do nothing.",
        epilog=f"commands:\n{listing}\n\n{PROG} COMMAND --help lists a command's flags.")
    top.add_argument("command", metavar="COMMAND", choices=list(COMMANDS),
                     help="one of the commands below")
    return top


def main(argv: Sequence[str]) -> None:
    """Only the first argument is ours (a command, or --help); the rest is the command's."""
    name = parser().parse_args(list(argv[:1])).command
    module_name, _, needs = COMMANDS[name]
    prog = f"{PROG} {name}"
    extras.require(prog, *needs)
    module = importlib.import_module(f"launch.cloud.{module_name}")
    cli.run_main(prog, functools.partial(module.main, prog=prog), argv[1:])


def run() -> None:
    """Console entry point `s2s-cloud`."""
    main(sys.argv[1:])


if __name__ == "__main__":
    run()
