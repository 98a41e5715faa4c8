"""Submit s2s-preprocess to Dataflow with the flags Beam's DataflowRunner needs.

    python -m launch.cloud.dataflow --project=P --region=us-central1 \
        --temp_location=gs://B/tmp --train=tsv:gs://B/raw/train.tsv \
        --split_fractions=dev:0.05,test:0.05 --output_dir=gs://B/data/ende \
        --sdk_container_image=IMAGE --dry-run -- --vocab_size=16000

Workers get the code either from the container image (--sdk_container_image, the
Dockerfile's `dataflow-worker` target) or by building this package from --setup_file
(default ./setup.py, run from the repository root). Arguments after `--` go to
s2s-preprocess unchanged.
"""

import re
import time
from typing import Sequence

from launch.cloud import cli, commands

PROG = "python -m launch.cloud.dataflow"


def job_name(output_dir: str, *, now: float | None = None) -> str:
    """A Dataflow-legal name (lowercase letters, digits, '-') that says what it writes."""
    stem = re.sub(r"[^a-z0-9]+", "-", output_dir.rstrip("/").rsplit("/", 1)[-1].lower())
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"s2s-preprocess-{stem.strip('-') or 'data'}-{stamp}"[:63].rstrip("-")


def runner_flags(*, project: str, region: str, temp_location: str, job_name: str,
                 sdk_container_image: str = "", setup_file: str = "",
                 max_num_workers: int = 0, service_account: str = "") -> list[str]:
    """Beam pipeline options for the DataflowRunner; exactly one way to ship the code."""
    if bool(sdk_container_image) == bool(setup_file):
        raise cli.LaunchError("give exactly one of --sdk_container_image and --setup_file")
    flags = ["--runner=DataflowRunner", f"--project={project}", f"--region={region}",
             f"--temp_location={cli.require_gcs('--temp_location', temp_location)}",
             f"--job_name={job_name}"]
    if sdk_container_image:
        flags.append(f"--sdk_container_image={sdk_container_image}")
    else:
        flags.append(f"--setup_file={setup_file}")
    if max_num_workers:
        flags.append(f"--max_num_workers={max_num_workers}")
    if service_account:
        flags.append(f"--service_account_email={service_account}")
    return flags


def dataflow_preprocess_command(*, train: str, output_dir: str, dev: str = "", test: str = "",
                                split_fractions: str = "", preprocess_flags: Sequence[str] = (),
                                runner: Sequence[str]) -> list[str]:
    return commands.preprocess_command(
        train=train, dev=dev, test=test, split_fractions=split_fractions,
        output_dir=cli.require_gcs("--output_dir", output_dir),
        extra_flags=[*preprocess_flags, *runner])


def parse_args(argv: Sequence[str], *, prog: str = PROG):
    parser = cli.ArgumentParser(prog=prog,
                                description="Run s2s-preprocess on Dataflow.")
    parser.add_argument("--project", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--temp_location", required=True, help="gs:// scratch for Beam.")
    parser.add_argument("--train", required=True, help="Training source SPEC.")
    parser.add_argument("--dev", default="")
    parser.add_argument("--test", default="")
    parser.add_argument("--split_fractions", default="", help="e.g. dev:0.05,test:0.05")
    parser.add_argument("--output_dir", required=True, help="gs:// output directory.")
    parser.add_argument("--sdk_container_image", default="",
                        help="Worker image (Dockerfile target dataflow-worker).")
    parser.add_argument("--setup_file", default="",
                        help="Package the code from this setup.py (default ./setup.py when "
                             "no --sdk_container_image).")
    parser.add_argument("--job_name", default="")
    parser.add_argument("--max_num_workers", type=int, default=0)
    parser.add_argument("--service_account", default="")
    cli.add_dry_run(parser)
    parser.add_argument("preprocess_flags", nargs="*",
                        help="After `--`: more s2s-preprocess flags, e.g. --vocab_size=16000.")
    args = parser.parse_args(argv)
    if not args.sdk_container_image and not args.setup_file:
        args.setup_file = "./setup.py"
    return args


def main(argv: Sequence[str], *, prog: str = PROG) -> None:
    args = parse_args(argv, prog=prog)
    runner = runner_flags(project=args.project, region=args.region,
                          temp_location=args.temp_location,
                          job_name=args.job_name or job_name(args.output_dir),
                          sdk_container_image=args.sdk_container_image,
                          setup_file=args.setup_file, max_num_workers=args.max_num_workers,
                          service_account=args.service_account)
    command = dataflow_preprocess_command(
        train=args.train, dev=args.dev, test=args.test, split_fractions=args.split_fractions,
        output_dir=args.output_dir, preprocess_flags=args.preprocess_flags, runner=runner)
    cli.run_commands([command], dry_run=args.dry_run)


if __name__ == "__main__":
    cli.run_main(PROG, main)
