"""launch/shared_files.py: atomic replaces and the lease, with threads and dead owners."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from launch import shared_files


def claims(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith("_lease-"))


def write_claim(directory, *, host: str, pid: int, expires: float, claim_id: str = "x") -> str:
    path = os.path.join(directory, f"_lease-{claim_id}.json")
    with open(path, "w") as f:
        json.dump({"host": host, "pid": pid, "id": claim_id, "expires": expires}, f)
    return path


def test_write_text_atomically_replaces_the_content_and_leaves_no_temp_file(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    shared_files.write_text_atomically(path, "one\n")
    shared_files.write_text_atomically(path, "one\ntwo\n")
    assert open(path).read() == "one\ntwo\n"
    assert os.listdir(tmp_path) == ["metrics.jsonl"]


def test_threads_of_one_process_hold_the_lease_one_at_a_time(tmp_path):
    """Threads share a PID, as containers' PID 1 do: the claims must still differ."""
    inside, peak, entries = [0], [0], []
    guard = threading.Lock()

    def work(name):
        for _ in range(3):
            with shared_files.hold(str(tmp_path), wait=60, ttl=10):
                with guard:
                    inside[0] += 1
                    peak[0] = max(peak[0], inside[0])
                time.sleep(0.05)
                entries.append(name)
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert peak[0] == 1
    assert sorted(entries) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert claims(tmp_path) == []


def test_a_live_claim_of_another_host_makes_the_wait_time_out_naming_it(tmp_path):
    write_claim(str(tmp_path), host="evaluator-pod-7", pid=1, expires=time.time() + 60)
    began = time.monotonic()
    with pytest.raises(shared_files.LeaseTimeout, match="host evaluator-pod-7, pid 1"):
        with shared_files.hold(str(tmp_path), wait=1.0):
            pass
    assert 1.0 <= time.monotonic() - began < 10
    assert claims(tmp_path) == ["_lease-x.json"]  # ours withdrawn, theirs untouched


@pytest.mark.parametrize("owner", ["expired", "dead_pid", "earlier_incarnation"])
def test_a_claim_left_by_a_crashed_writer_is_removed(tmp_path, owner, caplog):
    host = socket.gethostname()
    if owner == "expired":
        stale = write_claim(str(tmp_path), host="elsewhere", pid=1, expires=time.time() - 1)
    elif owner == "dead_pid":
        finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                  capture_output=True, text=True, check=True)
        stale = write_claim(str(tmp_path), host=host, pid=int(finished.stdout),
                            expires=time.time() + 60)
    else:  # a restarted container: same host name, same PID, a claim this process never made
        stale = write_claim(str(tmp_path), host=host, pid=os.getpid(),
                            expires=time.time() + 60)
    with shared_files.hold(str(tmp_path), wait=5) as lease:
        assert claims(tmp_path) == [os.path.basename(lease.path)]
    assert not os.path.exists(stale)
    assert "removing a stale lease claim" in caplog.text and stale in caplog.text


def test_check_reports_a_lease_taken_over_while_held(tmp_path):
    with shared_files.hold(str(tmp_path), wait=5) as lease:
        lease.check()
        os.remove(lease.path)
        write_claim(str(tmp_path), host="other", pid=1, expires=time.time() + 60)
        with pytest.raises(shared_files.LeaseLost, match="taken over"):
            lease.check()


def test_a_contender_claim_while_held_is_not_a_takeover(tmp_path):
    """A contender's claim exists between its write and its withdrawal: the holder's
    check must not mistake it for a takeover (this raced under two publisher threads)."""
    with shared_files.hold(str(tmp_path), wait=5) as lease:
        contender = write_claim(str(tmp_path), host="other", pid=1, expires=time.time() + 60)
        lease.check()
        os.remove(contender)
        lease.check()


def test_the_holder_renews_its_claim(tmp_path):
    with shared_files.hold(str(tmp_path), wait=5, ttl=0.4) as lease:
        first = json.load(open(lease.path))["expires"]
        time.sleep(0.5)  # longer than the ttl: only renewal keeps the claim live
        assert json.load(open(lease.path))["expires"] > first
        lease.check()
