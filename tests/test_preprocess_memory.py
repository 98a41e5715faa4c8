"""Memory bounds of the preprocess job, under an address-space limit (RLIMIT_AS).

Each test runs in a fresh process that first does a small warm-up (imports, runner threads),
then caps its address space at its peak so far plus a headroom, then does the big thing.
Before the bounds existed each of these died: a newline-free file was held (and copied)
whole, all dead letters were sorted in one list, a shard was sorted in one list.
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADROOM_MB = 400

_CAP = '''
import resource, sys, json

def vm_peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmPeak"):
            return int(line.split()[1]) << 10

def cap(headroom):
    """Caps the address space at the peak so far plus headroom; returns the base."""
    base = vm_peak()
    resource.setrlimit(resource.RLIMIT_AS, (base + headroom, base + headroom))
    return base

def check_cap_holds():
    """True if the cap is in force: an allocation as large as the cap itself fails."""
    try:
        bytearray(resource.getrlimit(resource.RLIMIT_AS)[0])
    except MemoryError:
        return True
    return False
'''

_JOB = _CAP + '''
from pipeline import preprocess
work, lines, headroom = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) << 20

def run(output_dir, **job):
    options = preprocess.pipeline_options_from_argv([])
    return preprocess.preprocess(pipeline_options=options, output_dir=output_dir, **job)

run(work + "/warm", train=["tsv:" + work + "/good.tsv"], vocab_size=40)
with open(work + "/malformed.tsv", "wb") as stream:
    for start in range(0, lines, 100_000):
        stream.write(b"".join(b"no tab on line %d\\n" % i
                              for i in range(start, min(lines, start + 100_000))))
with open(work + "/no_newline.tsv", "wb") as stream:
    for _ in range(200):
        stream.write(b"x\\t" * (1 << 19))  # 200 MiB, no newline
base = cap(headroom)
metadata = run(work + "/out", train=["tsv:" + work + "/malformed.tsv",
                                     "tsv:" + work + "/no_newline.tsv"],
               tokenizer_model=work + "/warm/spm.model", num_shards=1)
print(json.dumps({"metadata": metadata, "peak_above_base_mb": (vm_peak() - base) >> 20,
                  "cap_holds": check_cap_holds()}))
'''

_SHARD = _CAP + '''
import os, random
from pipeline import batches, shard_files
work, total_mb, headroom = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) << 20

def packed_batches(count, per_batch=1000, size=1000):
    """A shard's shuffle values, made lazily as a Dataflow group is paged in."""
    rng = random.Random(11)
    for _ in range(count):
        items = [("%032x" % rng.getrandbits(128), rng.randbytes(size), 9, 9, None)
                 for _ in range(per_batch)]
        blob = batches.pack(items)
        yield batches.unpack(blob), len(blob)

shard_files.write_shard(work + "/warm.tfrecord", split="train", batches=packed_batches(2))
base = cap(headroom)
counts, sha256 = shard_files.write_shard(work + "/big.tfrecord", split="train",
                                         batches=packed_batches(total_mb))
print(json.dumps({"written": counts[("train", "written")],
                  "bytes": os.path.getsize(work + "/big.tfrecord"),
                  "peak_above_base_mb": (vm_peak() - base) >> 20,
                  "cap_holds": check_cap_holds()}))
'''


def run_capped(code, *args, timeout=300):
    """Runs `code` in a fresh interpreter; returns the JSON its last stdout line holds."""
    env = dict(os.environ, MALLOC_ARENA_MAX="2",  # virtual size independent of core count
               PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)],
                            capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_malformed_corpus_and_newline_free_file_are_counted_within_bounded_memory(tmp_path):
    lines = 1_000_000
    with open(tmp_path / "good.tsv", "w") as stream:  # for the warm-up's tokenizer
        stream.writelines(f"open file {i}\tDatei {i} öffnen\n" for i in range(200))
    report = run_capped(_JOB, tmp_path, lines, HEADROOM_MB)
    assert report["cap_holds"]  # the limit was in force: the headroom alone is refused
    train = report["metadata"]["splits"]["train"]
    assert train["read"] == lines + 1 and train["written"] == 0
    assert train["dropped"]["malformed"] == lines
    assert train["dropped"]["line_too_long"] == 1
    assert report["metadata"]["dead_letter"]["count"] == lines + 1
    path = tmp_path / "out" / "dead_letter" / "dead_letter.jsonl"
    with open(path, "rb") as stream:
        count = sum(block.count(b"\n") for block in iter(lambda: stream.read(1 << 20), b""))
        stream.seek(-4096, os.SEEK_END)
        last = json.loads(stream.read().splitlines()[-1])
    assert count == lines + 1
    assert (last["source_file"], last["line"], last["reason"]) == (
        str(tmp_path / "no_newline.tsv"), 1, "line_too_long")
    assert f"line of {200 << 20} bytes" in last["detail"]


def test_a_shard_larger_than_the_memory_cap_is_written(tmp_path):
    headroom_mb, shard_mb = 200, 300  # packed batches of about 1 MB each
    report = run_capped(_SHARD, tmp_path, shard_mb, headroom_mb)
    assert report["cap_holds"]
    assert report["written"] == shard_mb * 1000
    assert report["bytes"] > shard_mb * 1000 * 1000
