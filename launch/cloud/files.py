"""Reading local paths and gs:// URLs the same way, without importing TensorFlow.

Publishing and the wait step run in small pods and orchestrator workers; google-cloud-storage
is all they need (and, unlike tf.io.gfile, it honours STORAGE_EMULATOR_HOST in tests).

    python -m launch.cloud.files wait gs://bucket/run/config.json --timeout=3600
"""

import functools
import os
import time
from typing import Sequence

from launch import extras
from launch.cloud import cli

PROG = "python -m launch.cloud.files"


def is_gcs(path: str) -> bool:
    return path.startswith("gs://")


def split_gcs(path: str) -> tuple[str, str]:
    """gs://bucket/a/b -> ("bucket", "a/b")."""
    bucket, _, name = path[len("gs://"):].partition("/")
    if not bucket:
        raise cli.LaunchError(f"{path!r} names no bucket")
    return bucket, name


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


@functools.cache
def client():
    """One storage client per process (reads STORAGE_EMULATOR_HOST when set)."""
    extras.check("google.cloud.storage")
    from google.cloud import storage
    return storage.Client()


def bucket(name: str):
    return client().bucket(name)


def exists(path: str) -> bool:
    if not is_gcs(path):
        return os.path.exists(path)
    bucket_name, name = split_gcs(path)
    return bucket(bucket_name).blob(name).exists()


def read_bytes(path: str) -> bytes:
    """The file's content; FileNotFoundError (naming the path) when it is missing."""
    if not is_gcs(path):
        with open(path, "rb") as f:
            return f.read()
    from google.api_core import exceptions
    bucket_name, name = split_gcs(path)
    try:
        return bucket(bucket_name).blob(name).download_as_bytes()
    except exceptions.NotFound as error:
        raise FileNotFoundError(f"{path} does not exist") from error


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def list_files(directory: str) -> list[str]:
    """Paths of every file under `directory`, relative to it, sorted."""
    if not is_gcs(directory):
        found = []
        for root, _, names in os.walk(directory):
            found += [os.path.relpath(os.path.join(root, n), directory) for n in names]
        return sorted(p.replace(os.sep, "/") for p in found)
    bucket_name, prefix = split_gcs(directory)
    prefix = prefix.rstrip("/") + "/"
    return sorted(blob.name[len(prefix):] for blob in client().list_blobs(bucket_name,
                                                                          prefix=prefix)
                  if not blob.name.endswith("/"))


def wait_for(path: str, *, timeout: float, poll_seconds: float = 10.0) -> bool:
    """True once `path` exists; False if `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not exists(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(poll_seconds, max(deadline - time.monotonic(), 0.0)))
    return True


def main(argv: Sequence[str]) -> None:
    parser = cli.ArgumentParser(prog=PROG,
                                description="Wait until a local or gs:// file exists.")
    parser.add_argument("action", choices=["wait"])
    parser.add_argument("path")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--poll_seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    if not wait_for(args.path, timeout=args.timeout, poll_seconds=args.poll_seconds):
        raise cli.LaunchError(f"{args.path} did not appear within {args.timeout:g} s")
    print(f"{args.path} exists")


if __name__ == "__main__":
    cli.run_main(PROG, main)
