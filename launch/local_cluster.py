"""s2s-local-cluster: run a multi-worker job as N local processes, with the fleet's policy.

    s2s-local-cluster --workers=2 --restart=group --max_restarts=3 -- \
        s2s-train --strategy=multi_worker_mirrored --config=configs/tiny.py ...

Each worker gets TF_CONFIG for `localhost` ports (fresh ones on every attempt) and its
output is prefixed with `[worker i]`. The group ends the way a cluster's does
(launch/exit_codes.py): when every worker exits 0 the job is done; when one exits with an
error a restart will not fix, the others are stopped and the job fails with that code;
when the job was interrupted (a worker preempted, or killed) the whole group is started
again, at most --max_restarts times, and resumes from the workdir's checkpoints. A worker
still running `--stop_grace` seconds after a peer ended is stopped (SIGTERM, then SIGKILL).
SIGTERM or Ctrl-C to the harness is passed to every worker and ends it with 143.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence

from launch import exit_codes

PROG = "s2s-local-cluster"
ATTEMPT_VARIABLE = "S2S_RESTART_ATTEMPT"  # 0 on the first start, k on the k-th restart


class HarnessError(Exception):
    """Bad arguments or a command that cannot start: one line, exit 2."""


def free_ports(count: int) -> list[int]:
    """Ports free right now on localhost (bound together so they are distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("localhost", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def worker_environment(environ: dict, *, ports: list[int], index: int, attempt: int) -> dict:
    env = dict(environ)
    env["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"localhost:{port}" for port in ports]},
        "task": {"type": "worker", "index": index}})
    env[ATTEMPT_VARIABLE] = str(attempt)
    return env


def _say(message: str) -> None:
    print(f"{PROG}: {message}", flush=True)


class Group:
    """One attempt: N worker processes, their prefixed output, and how they ended."""

    def __init__(self, command: Sequence[str], *, workers: int, attempt: int):
        ports = free_ports(workers)
        self.started = time.monotonic()
        self.processes: list[subprocess.Popen] = []
        self._threads = []
        for index in range(workers):
            env = worker_environment(os.environ, ports=ports, index=index, attempt=attempt)
            try:
                process = subprocess.Popen(list(command), env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True, bufsize=1)
            except FileNotFoundError as error:
                self.stop(signal.SIGKILL)
                raise HarnessError(f"{command[0]} is not installed or not on PATH") from error
            self.processes.append(process)
            thread = threading.Thread(target=_relay, args=(process, index), daemon=True)
            thread.start()
            self._threads.append(thread)
        pids = ", ".join(f"worker {i} pid {p.pid}" for i, p in enumerate(self.processes))
        _say(f"attempt {attempt}: {pids}")

    def wait(self, *, stop_grace: float, poll_seconds: float = 0.1) -> list[int]:
        """Exit codes (128 + N for a signal) once all ended; stragglers are stopped."""
        first_end = None
        reported = set()
        while True:
            for index, process in enumerate(self.processes):
                if process.poll() is not None and index not in reported:
                    reported.add(index)
                    code = exit_codes.normalize(process.returncode)
                    _say(f"worker {index} (pid {process.pid}) exited {code} after "
                         f"{time.monotonic() - self.started:.1f} s")
                    if first_end is None:
                        first_end = time.monotonic()
            if len(reported) == len(self.processes):
                break
            if first_end is not None and time.monotonic() - first_end > stop_grace:
                _say(f"stopping the workers still running {stop_grace:g} s after a peer ended")
                self.stop(signal.SIGTERM, then_kill_after=10.0)
                first_end = float("inf")  # stop only once; keep collecting exit codes
            time.sleep(poll_seconds)
        for thread in self._threads:
            thread.join(timeout=5)
        return [exit_codes.normalize(p.returncode) for p in self.processes]

    def stop(self, signum: int, *, then_kill_after: float = 0.0) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signum)
        if then_kill_after:
            deadline = time.monotonic() + then_kill_after
            for process in self.processes:
                try:
                    process.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    process.kill()


def _relay(process: subprocess.Popen, index: int) -> None:
    for line in process.stdout:
        sys.stdout.write(f"[worker {index}] {line}")
        sys.stdout.flush()


def job_code(codes: list[int]) -> int:
    """The job's outcome from its workers' codes: an unfixable error wins, then an
    interruption, and 0 only when every worker finished."""
    errors = [c for c in codes if c != exit_codes.FINISHED and not exit_codes.is_restartable(c)]
    if errors:
        return errors[0]
    if any(exit_codes.is_restartable(c) for c in codes):
        return exit_codes.PREEMPTED
    return exit_codes.FINISHED


def run_job(command: Sequence[str], *, workers: int, restart: str, max_restarts: int,
            stop_grace: float) -> int:
    """Runs the group until it finishes, fails, or runs out of restarts; the job's code."""
    interrupted = []

    def forward(signum, _frame):
        interrupted.append(signum)
        if group is not None:
            group.stop(signum)

    group = None
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    attempt = 0
    while True:
        group = Group(command, workers=workers, attempt=attempt)
        code = job_code(group.wait(stop_grace=stop_grace))
        if code == exit_codes.FINISHED:
            _say("job finished" + (f" after {attempt} restart(s)" if attempt else ""))
            return code
        if interrupted:
            _say(f"stopped by signal {interrupted[0]}; exiting {exit_codes.PREEMPTED}")
            return exit_codes.PREEMPTED
        if code != exit_codes.PREEMPTED:
            _say(f"job failed with exit code {code}: an error a restart will not fix")
            return code
        if restart != "group" or attempt >= max_restarts:
            _say(f"job interrupted and not restarted (restarts used: {attempt} of "
                 f"{max_restarts if restart == 'group' else 0}); exiting {code}")
            return code
        attempt += 1
        _say(f"job interrupted: restarting the whole group (restart {attempt} of "
             f"{max_restarts})")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(exit_codes.ERROR, f"{self.prog}: error: {message}\n")


def parse_args(argv: Sequence[str]):
    parser = _Parser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, required=True, help="Worker processes.")
    parser.add_argument("--restart", choices=["group", "never"], default="group",
                        help="group: restart every worker when the job was interrupted.")
    parser.add_argument("--max_restarts", type=int, default=3)
    parser.add_argument("--stop_grace", type=float, default=120.0,
                        help="Seconds the others may keep running after a worker ended "
                             "(more than s2s-train's --peer_timeout).")
    parser.add_argument("command", nargs="+", help="The worker command, after `--`.")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.max_restarts < 0 or args.stop_grace <= 0:
        parser.error("--workers must be >= 1, --max_restarts >= 0 and --stop_grace > 0")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    return run_job(args.command, workers=args.workers, restart=args.restart,
                   max_restarts=args.max_restarts, stop_grace=args.stop_grace)


def run() -> None:
    try:
        sys.exit(main(sys.argv[1:]))
    except HarnessError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        sys.exit(exit_codes.ERROR)


if __name__ == "__main__":
    run()
