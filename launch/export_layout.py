"""The layout of an export root, written once for every reader, without TensorFlow.

An export root (s2s-evaluate's WORKDIR/export/best, s2s-export's --export_dir) holds
complete, never-modified version directories and one small pointer file naming the
version in force:

    ROOT/current.json                       {"version": "<name>", "step": ..., ...}
    ROOT/<UTC time>-step<step>-<uuid8>/     a SavedModel (or CTranslate2 model) + s2s_export.json

A new version is written in full under a fresh name and the pointer is replaced last, in
one write: a reader that follows the pointer always finds a complete model, on a local
disk and on gs:// alike, where a directory rename would copy objects one by one.
Roots written before versioning held the SavedModel itself; `resolve` accepts both.

The cloud launchers read roots through google-cloud-storage (launch/cloud/files.py) and
the jobs through tf.io.gfile, so the functions here take the reading functions as
arguments.
"""

import datetime
import json
import uuid
from typing import Callable

POINTER = "current.json"  # names the version in force; replaced last, atomically
MANIFEST = "s2s_export.json"  # in every version directory: marks it as one of our exports
LEASE_PREFIX = "_lease-"  # writers' lease claims (launch/shared_files.py)


class NotAnExportError(ValueError):
    """The directory is neither an export root nor an export written by this project."""


def join(base: str, *parts: str) -> str:
    """'/'-joined path: the same for local paths and gs:// URLs."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def version_name(step: int | None, *, now: datetime.datetime | None = None) -> str:
    """A fresh version directory name: sortable by time, the step for people, and a
    random tail so two writers never pick the same name (PIDs repeat across containers)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    step_part = f"-step{step}" if step is not None else ""
    return f"{now:%Y%m%dT%H%M%S}Z{step_part}-{uuid.uuid4().hex[:8]}"


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
