"""The layout of an export root, written once for every reader, without TensorFlow.

An export root (s2s-evaluate's WORKDIR/export/best, s2s-export's --export_dir) holds
complete, never-modified version directories and one small pointer file naming the
version in force:

    ROOT/current.json          {"version": "<N>", "step": ..., "previous_version": ...}
    ROOT/<N>/saved_model.pb    a SavedModel (or CTranslate2 model) + s2s_export.json

This is TF Serving's layout: N is an integer (the UTC time as YYYYMMDDHHMMSS, always
above the versions already there), so `tensorflow_model_server --model_base_path=ROOT`
serves the root as it is, and its default policy (the highest version) is the one in
force. A new version is written in full under a staging name (ROOT/.staging-*, which
TF Serving ignores), renamed to its number, and the pointer is replaced last, in one
write: a reader that follows the pointer always finds a complete model, on a local disk
and on gs:// alike (there the rename copies objects one by one; TF Serving retries a
load that found a version half-copied). Versions named before integer versions
(<UTC time>-step<step>-<uuid8>) and roots written before versioning, which held the
SavedModel itself, still resolve.

The cloud launchers read roots through google-cloud-storage (launch/cloud/files.py) and
the jobs through tf.io.gfile, so the functions here take the reading functions as
arguments.
"""

import datetime
import json
import re
import uuid
from typing import Callable, Iterable

POINTER = "current.json"  # names the version in force; replaced last, atomically
MANIFEST = "s2s_export.json"  # in every version directory: marks it as one of our exports
LEASE_PREFIX = "_lease-"  # writers' lease claims (launch/shared_files.py)
STAGING_PREFIX = ".staging-"  # a version being written; TF Serving skips non-integer names
INTEGER_VERSION = re.compile(r"^[1-9][0-9]{0,17}$")  # TF Serving: an int64 directory name
LEGACY_VERSION = re.compile(r"^\d{8}T\d{6}Z(-step\d+)?-[0-9a-f]{8}$")


class NotAnExportError(ValueError):
    """The directory is neither an export root nor an export written by this project."""


def join(base: str, *parts: str) -> str:
    """'/'-joined path: the same for local paths and gs:// URLs."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def next_version(existing: Iterable[str], *, now: datetime.datetime | None = None) -> str:
    """The integer name of a new version: the UTC time as YYYYMMDDHHMMSS, or one above the
    highest integer version in `existing` when that is later (TF Serving serves the
    highest). Callers hold the root's lease, so no other writer picks the same number."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    taken = [int(name) for name in existing if INTEGER_VERSION.match(name)]
    return str(max([int(f"{now:%Y%m%d%H%M%S}"), *(number + 1 for number in taken)]))


def is_version(name: str) -> bool:
    """A version directory name, today's integers or the older time-step-uuid names."""
    return bool(INTEGER_VERSION.match(name) or LEGACY_VERSION.match(name))


def staging_name() -> str:
    """Where a version is written before it gets its number; unique per writer."""
    return f"{STAGING_PREFIX}{uuid.uuid4().hex}"


def parse_pointer(text: str, *, path: str) -> dict:
    """The pointer record; NotAnExportError naming `path` when it is not one."""
    try:
        record = json.loads(text)
        name = record["version"]
    except (ValueError, KeyError, TypeError) as error:
        raise NotAnExportError(f"{path} is not a valid export pointer ({error!r})") from error
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise NotAnExportError(f"{path} names an invalid version {name!r}")
    return record


def resolve(path: str, *, read_text: Callable[[str], str],
            exists: Callable[[str], bool]) -> str:
    """The model directory that `path` (an export root or a model directory) stands for.

    read_text raises FileNotFoundError for a missing file; exists tells whether a file is
    there. Raises NotAnExportError with the reason otherwise.
    """
    pointer = join(path, POINTER)
    try:
        record = parse_pointer(read_text(pointer), path=pointer)
    except FileNotFoundError:
        if exists(join(path, MANIFEST)):
            return path.rstrip("/")  # a model directory, or a root from before versioning
        raise NotAnExportError(f"{path} is not an s2s-pipeline export (no {POINTER} and "
                               f"no {MANIFEST})") from None
    version = join(path, record["version"])
    if not exists(join(version, MANIFEST)):
        raise NotAnExportError(f"{pointer} names {record['version']}, which has no "
                               f"{MANIFEST}: the export root was damaged")
    return version
