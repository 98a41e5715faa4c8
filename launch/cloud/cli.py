"""Plumbing shared by the launchers' entry points: one-line errors, run-or-print."""

import argparse
import shlex
import subprocess
import sys
from typing import Callable, Sequence

from launch import extras


class LaunchError(Exception):
    """Bad input or a failed external command, reported as one line without a traceback."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (`prog: error: ...`) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_dry_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="Print what would be run or submitted, and do nothing.")


def run_commands(commands: Sequence[Sequence[str]], *, dry_run: bool) -> None:
    """Prints each command as a shell line on dry runs; runs them in order otherwise."""
    for argv in commands:
        if dry_run:
            print(shlex.join(argv))
            continue
        print(f"+ {shlex.join(argv)}", file=sys.stderr, flush=True)
        try:
            subprocess.run(list(argv), check=True)
        except FileNotFoundError as error:
            raise LaunchError(f"{argv[0]} is not installed or not on PATH") from error
        except subprocess.CalledProcessError as error:
            raise LaunchError(f"`{shlex.join(argv)}` exited with status "
                              f"{error.returncode}") from error


def run_main(prog: str, main: Callable[[Sequence[str]], None],
             argv: Sequence[str] | None = None) -> None:
    """Calls main(argv); our errors, a missing extra and Google Cloud client errors (refused
    requests, missing credentials) become one line, `prog: error: message`, and exit 2."""
    try:
        main(sys.argv[1:] if argv is None else list(argv))
    except Exception as error:  # noqa: BLE001  (re-raised below unless it is one of ours)
        if (not isinstance(error, (LaunchError, extras.MissingExtra))
                and not is_google_client_error(error)):
            raise
        message = " ".join(str(error).split())
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def is_google_client_error(error: Exception) -> bool:
    """google-api-core / google-auth errors: the cloud said no, or we have no credentials."""
    return type(error).__module__.startswith(("google.api_core.", "google.auth."))


def require_gcs(flag: str, value: str) -> str:
    """Cloud jobs run on machines that cannot see local paths: insist on gs://."""
    if not value.startswith("gs://") or len(value) <= len("gs://"):
        raise LaunchError(f"{flag}={value!r} must be a gs:// path that the cloud job can reach")
    return value


def split_overrides(values: Sequence[str]) -> list[str]:
    """`model.num_layers=6` style config overrides, checked for the `key=value` shape."""
    for value in values:
        key, sep, _ = value.partition("=")
        if not sep or not key or key.startswith("-"):
            raise LaunchError(f"--override={value!r} must look like section.field=value")
    return list(values)
