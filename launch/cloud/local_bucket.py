"""A local directory that publishes like a GCS bucket: the same layout, the same rules.

launch/cloud/publish.py needs objects with generations and writes that succeed only at an
expected generation (0: only if absent). Here an object is a file, its generation is its
modification time in nanoseconds (set to move forward on every write), and writes hold an exclusive lock on
ROOT/.publish.lock, so two local publishers race exactly as two cloud ones do. Only what
publish.py uses is here.
"""

import contextlib
import fcntl
import os
import time
import uuid

from google.api_core import exceptions

LOCK = ".publish.lock"


class LocalBucket:
    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.name = self.root
        self.client = self
        os.makedirs(self.root, exist_ok=True)

    def url(self, name: str) -> str:
        return os.path.join(self.root, name)

    def blob(self, name: str) -> "LocalBlob":
        return LocalBlob(self, name)

    def get_blob(self, name: str) -> "LocalBlob | None":
        blob = LocalBlob(self, name)
        return blob if blob.exists() else None

    def list_blobs(self, bucket_name: str, *, prefix: str = "", delimiter: str | None = None):
        del bucket_name  # one bucket
        return _Listing(self, prefix=prefix, delimiter=delimiter)

    @contextlib.contextmanager
    def locked(self):
        with open(os.path.join(self.root, LOCK), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


class LocalBlob:
    def __init__(self, bucket: LocalBucket, name: str):
        self.bucket, self.name = bucket, name
        self.path = os.path.join(bucket.root, name)
        self.cache_control = None

    @property
    def generation(self) -> int:
        return os.stat(self.path).st_mtime_ns

    def exists(self) -> bool:
        return os.path.isfile(self.path)

    def download_as_bytes(self, *, if_generation_match: int | None = None) -> bytes:
        with self.bucket.locked():
            self._check(if_generation_match)
            with open(self.path, "rb") as f:
                return f.read()

    def download_as_text(self) -> str:
        return self.download_as_bytes().decode("utf-8")

    def upload_from_string(self, data, *, content_type: str | None = None,
                           if_generation_match: int | None = None) -> None:
        del content_type
        self._write(data.encode("utf-8") if isinstance(data, str) else data,
                    if_generation_match=if_generation_match)

    def upload_from_filename(self, filename: str, *,
                             if_generation_match: int | None = None) -> None:
        with open(filename, "rb") as f:
            self._write(f.read(), if_generation_match=if_generation_match)

    def delete(self) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            raise exceptions.NotFound(f"{self.path} does not exist") from None

    def _check(self, expected: int | None) -> None:
        if expected is None:
            if not self.exists():
                raise exceptions.NotFound(f"{self.path} does not exist")
            return
        found = self.generation if self.exists() else 0
        if found != expected:
            raise exceptions.PreconditionFailed(
                f"{self.path} is at generation {found}, not {expected}")

    def _write(self, data: bytes, *, if_generation_match: int | None) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        temporary = f"{self.path}.tmp-{uuid.uuid4().hex}"
        with open(temporary, "wb") as f:
            f.write(data)
        with self.bucket.locked():
            try:
                if if_generation_match is not None:
                    self._check(if_generation_match)
                previous = self.generation if self.exists() else 0
                os.replace(temporary, self.path)
                # File times are coarse (a few ms): set one that always moves forward.
                generation = max(time.time_ns(), previous + 1)
                os.utime(self.path, ns=(generation, generation))
            finally:
                if os.path.exists(temporary):
                    os.remove(temporary)


class _Listing:
    """Iterates the blobs under `prefix`; with a delimiter, `prefixes` holds the
    "folders" one level down (filled once iterated, as the GCS client does)."""

    def __init__(self, bucket: LocalBucket, *, prefix: str, delimiter: str | None):
        self.bucket, self.prefix, self.delimiter = bucket, prefix, delimiter
        self.prefixes: set[str] = set()

    def __iter__(self):
        names = []
        for directory, _, files in os.walk(self.bucket.root):
            for file in files:
                name = os.path.relpath(os.path.join(directory, file), self.bucket.root)
                name = name.replace(os.sep, "/")
                if name.startswith(self.prefix) and ".tmp-" not in name and name != LOCK:
                    names.append(name)
        for name in sorted(names):
            rest = name[len(self.prefix):]
            if self.delimiter and self.delimiter in rest:
                self.prefixes.add(self.prefix + rest.split(self.delimiter)[0] + self.delimiter)
                continue
            yield LocalBlob(self.bucket, name)
