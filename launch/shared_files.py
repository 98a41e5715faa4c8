"""Files that several evaluators or exporters may write at once, locally or on gs://.

Two tools: a replace that readers never see half-done, under a temp name no other
writer can pick (PIDs repeat across containers, and two threads share one), and a lease
that lets one writer at a time through a read-modify-write section.

tf.io.gfile has no create-if-absent, so the lease uses claim files: a writer writes its
own uniquely named claim, then lists the claims, and holds the lease only if its claim is
the only live one. Of two writers, the later to list always sees the earlier's claim, so
at most one of them holds it; when both see both, both withdraw and retry after a random
pause. A claim names an expiry that a holder's thread pushes forward; a claim past its
expiry, or left by a process of this host that is no longer running, is removed by the
next writer, so a crashed writer blocks others for at most `ttl` seconds.
"""

import contextlib
import json
import os
import random
import socket
import threading
import time
import uuid

import tensorflow as tf
from absl import logging

from launch import export_layout

DEFAULT_TTL = 60.0  # seconds a claim stays valid without being renewed
_HELD = set()  # claim ids held by this process (threads of one process share its PID)


class LeaseError(RuntimeError):
    """The lease could not be had or kept; the message says why."""


class LeaseTimeout(LeaseError):
    """Another writer kept the lease for longer than this one would wait."""


class LeaseLost(LeaseError):
    """This writer's claim was removed or overtaken: its lease is no longer exclusive."""


def read_text(path: str) -> str:
    """The file's text; FileNotFoundError when it is missing (what export_layout expects)."""
    try:
        with tf.io.gfile.GFile(path) as f:
            return f.read()
    except tf.errors.NotFoundError as error:
        raise FileNotFoundError(path) from error


def write_text_atomically(path: str, text: str) -> None:
    """Readers see the old content or the new, never a mix. On gs:// an object upload is
    already all-or-nothing (and a rename would be a copy); locally: a unique temp + rename."""
    if path.startswith("gs://"):
        with tf.io.gfile.GFile(path, "w") as f:
            f.write(text)
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


class Lease:
    """One writer's claim on `directory` (see the module docstring)."""

    def __init__(self, directory: str, *, ttl: float = DEFAULT_TTL):
        self.directory, self.ttl = directory, ttl
        self.id = uuid.uuid4().hex
        self.path = export_layout.join(directory, f"{export_layout.LEASE_PREFIX}{self.id}.json")
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "id": self.id}

    def _write_claim(self) -> None:
        write_text_atomically(self.path, json.dumps({**self.owner,
                                                     "expires": time.time() + self.ttl}))

    def _delete(self, path: str) -> None:
        try:
            tf.io.gfile.remove(path)
        except tf.errors.NotFoundError:
            pass

    def _others(self) -> list[dict]:
        """Live claims other than ours; stale ones are removed on the way."""
        live = []
        pattern = export_layout.join(self.directory, f"{export_layout.LEASE_PREFIX}*.json")
        for path in tf.io.gfile.glob(pattern):
            if path.rsplit("/", 1)[-1] == self.path.rsplit("/", 1)[1]:
                continue
            claim = read_claim(path)
            if claim is None:
                continue  # released between the listing and the read
            if is_stale(claim):
                logging.warning("removing a stale lease claim %s (%s)", path, describe(claim))
                self._delete(path)
                continue
            live.append(claim)
        return live

    def acquire(self, *, wait: float, poll: float = 0.5) -> None:
        """Returns once the lease is ours; LeaseTimeout after `wait` seconds."""
        tf.io.gfile.makedirs(self.directory)
        deadline = time.monotonic() + wait
        _HELD.add(self.id)
        while True:
            self._write_claim()
            others = self._others()
            if not others:
                return
            self._delete(self.path)
            if time.monotonic() >= deadline:
                _HELD.discard(self.id)
                raise LeaseTimeout(
                    f"{self.directory} is in use by another writer ({describe(others[0])}) "
                    f"and stayed so for {wait:g} s; if that process is gone, its claim "
                    f"expires within {self.ttl:g} s of its last renewal")
            time.sleep(poll * random.uniform(0.5, 1.5))

    def check(self) -> None:
        """LeaseLost unless our claim is still there and unexpired. Other claims do not
        count: a contender writes one, sees ours and withdraws it, and it can only take
        over after removing ours as stale."""
        claim = read_claim(self.path)
        if claim is None or float(claim["expires"]) < time.time():
            raise LeaseLost(f"the lease on {self.directory} was taken over while held "
                            "(a pause longer than its ttl?); stopping before writing")

    def renew(self) -> None:
        """Pushes the expiry forward; a failed write is retried at the next renewal
        (check() catches a claim that expired meanwhile)."""
        try:
            if read_claim(self.path) is not None:
                self._write_claim()
        except tf.errors.OpError as error:
            logging.warning("could not renew the lease claim %s: %s", self.path, error)

    def release(self) -> None:
        _HELD.discard(self.id)
        self._delete(self.path)


def read_claim(path: str) -> dict | None:
    """The claim in `path`, None if it is gone; an unreadable claim counts as expired."""
    try:
        with tf.io.gfile.GFile(path) as f:
            text = f.read()
    except tf.errors.NotFoundError:
        return None
    try:
        claim = json.loads(text)
        float(claim["expires"])
        return claim
    except (ValueError, KeyError, TypeError):
        return {"expires": 0, "host": "?", "pid": 0, "id": path}


def is_stale(claim: dict) -> bool:
    """Expired, or left by a process of this host that is gone (or by an earlier
    incarnation of this container, which restarted with the same PID)."""
    if float(claim["expires"]) < time.time():
        return True
    if claim.get("host") != socket.gethostname():
        return False
    if claim.get("pid") == os.getpid():
        return claim.get("id") not in _HELD
    return not pid_running(int(claim.get("pid", 0)))


def pid_running(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(claim: dict) -> str:
    left = float(claim["expires"]) - time.time()
    return (f"host {claim.get('host')}, pid {claim.get('pid')}, claim {claim.get('id')}, "
            f"expires in {left:.0f} s")


@contextlib.contextmanager
def hold(directory: str, *, wait: float = 900.0, ttl: float = DEFAULT_TTL):
    """`with hold(dir):` one writer at a time; the claim is renewed while the body runs."""
    lease = Lease(directory, ttl=ttl)
    lease.acquire(wait=wait)
    stop = threading.Event()

    def renew():
        while not stop.wait(ttl / 4):
            lease.renew()

    renewer = threading.Thread(target=renew, name="lease-renewal", daemon=True)
    renewer.start()
    try:
        yield lease
    finally:
        stop.set()
        renewer.join()
        lease.release()
