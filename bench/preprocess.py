"""Benchmark: the Beam preprocess job vs a plain Python loop on the same corpus.

    python bench/preprocess.py [--data=TSV] [--runs=N] [Beam flags, e.g. --direct_num_workers=2]

Trains an 8k SentencePiece model once (untimed), runs one untimed warm-up round, then times
  (a) the full Beam job on the local runner with --tokenizer_model (reading, cleaning, dedup,
      tokenizing, sharding, writing, metadata), and
  (b) a plain loop: read lines, sentencepiece encode each side, serialize, TFRecordWriter,
and checks that both give the same ids for the same pairs. Prints one JSON line last.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from pipeline import features, preprocess, tokenizer  # noqa: E402

DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data", "gettext-en-de", "train.tsv")
VOCAB_SIZE = 8000


def read_pairs(path: str) -> list:
    with open(path, "rb") as stream:
        lines = stream.read().split(b"\n")
    pairs = []
    for line in lines:
        fields = line.split(b"\t")
        if len(fields) == 2:
            pairs.append((fields[0].decode("utf-8", "replace"),
                          fields[1].decode("utf-8", "replace")))
    return pairs


def train_model(pairs: list, path: str) -> None:
    model = tokenizer.train_sentencepiece([text for pair in pairs for text in pair],
                                          vocab_size=VOCAB_SIZE)
    with open(path, "wb") as stream:
        stream.write(model)


def plain_loop(*, data: str, model_path: str, output: str, encode_example) -> dict:
    """What one would write without Beam: one pass, one process, one output file."""
    import sentencepiece as spm
    import tensorflow as tf
    processor = spm.SentencePieceProcessor(model_file=model_path)
    eos = [features.EOS_ID]
    ids = {}
    with open(data, "rb") as stream, tf.io.TFRecordWriter(output) as writer:
        for line in stream:
            fields = line.rstrip(b"\r\n").split(b"\t")
            if len(fields) != 2:
                continue
            source, target = fields[0].decode("utf-8"), fields[1].decode("utf-8")
            inputs = processor.encode(source) + eos
            targets = processor.encode(target) + eos
            pair_id = features.fingerprint(source, target)
            writer.write(encode_example(inputs=inputs, targets=targets, pair_id=pair_id,
                                        inputs_text=source, targets_text=target))
            ids[pair_id] = (inputs, targets)
    return ids


def beam_job(*, data: str, model_path: str, output_dir: str, beam_args: list) -> dict:
    options = preprocess.pipeline_options_from_argv(beam_args)
    return preprocess.preprocess(pipeline_options=options, train=[f"tsv:{data}"],
                                 output_dir=output_dir, tokenizer_model=model_path,
                                 overwrite=True)


def read_beam_ids(output_dir: str) -> dict:
    import tensorflow as tf
    ids = {}
    for path in tf.io.gfile.glob(os.path.join(output_dir, features.shard_pattern("train"))):
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            example = features.decode_example(record)
            ids[example[features.ID]] = (example[features.INPUTS], example[features.TARGETS])
    return ids


def timed(function, **kwargs):
    started = time.perf_counter()
    result = function(**kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (median reported)")
    args, beam_args = parser.parse_known_args()
    data = os.path.abspath(args.data)
    if not os.path.exists(data):
        sys.exit(f"bench: no such file: {data}")
    pairs = read_pairs(data)
    with tempfile.TemporaryDirectory() as work:
        model_path = os.path.join(work, "spm.model")
        train_model(pairs, model_path)  # untimed

        beam_times, plain_times, proto_times = [], [], []
        for run in range(-1, args.runs):  # round -1 warms up imports and caches, untimed
            if run == 0:
                beam_times, plain_times, proto_times = [], [], []
            metadata, seconds = timed(beam_job, data=data, model_path=model_path,
                                      output_dir=os.path.join(work, "beam"),
                                      beam_args=beam_args)
            beam_times.append(seconds)
            plain_ids, seconds = timed(plain_loop, data=data, model_path=model_path,
                                       output=os.path.join(work, "plain.tfrecord"),
                                       encode_example=features.fast_encode_example)
            plain_times.append(seconds)
            _, seconds = timed(plain_loop, data=data, model_path=model_path,
                               output=os.path.join(work, "proto.tfrecord"),
                               encode_example=features.encode_example)
            proto_times.append(seconds)
            print(f"run {run}: beam {beam_times[-1]:.2f}s  plain {plain_times[-1]:.2f}s  "
                  f"plain+tf.train.Example {proto_times[-1]:.2f}s", file=sys.stderr)

        beam_ids = read_beam_ids(os.path.join(work, "beam"))
        compared = [pair_id for pair_id in beam_ids if pair_id in plain_ids]
        mismatches = sum(beam_ids[i] != plain_ids[i] for i in compared)
        print(preprocess.format_summary(metadata), file=sys.stderr)

    # Other jobs share the machine: Beam and plain run back to back in every round, and the
    # median of the per-round ratios is robust to a round slowed down for one of them.
    median = statistics.median
    beam_seconds, plain_seconds, proto_seconds = (
        median(beam_times), median(plain_times), median(proto_times))
    result = {
        "bench": "preprocess",
        "data": os.path.relpath(data, REPO),
        "pairs": len(pairs),
        "beam_written": metadata["splits"]["train"]["written"],
        "beam_seconds": round(beam_seconds, 3),
        "plain_seconds": round(plain_seconds, 3),
        "beam_pairs_per_s": round(len(pairs) / beam_seconds),
        "plain_pairs_per_s": round(len(pairs) / plain_seconds),
        "ratio": round(median(b / p for b, p in zip(beam_times, plain_times)), 3),
        "ratio_of_best_times": round(min(beam_times) / min(plain_times), 3),
        "plain_tf_example_pairs_per_s": round(len(pairs) / proto_seconds),
        "ratio_vs_plain_tf_example": round(
            median(b / p for b, p in zip(beam_times, proto_times)), 3),
        "ids_compared": len(compared),
        "id_mismatches": mismatches,
        "settings": {"vocab_size": VOCAB_SIZE, "runs": args.runs,
                     "timing": "median of runs; ratio = median of per-run beam/plain",
                     "plain_loop": "per-line sp.encode + features.fast_encode_example + "
                                   "tf.io.TFRecordWriter (same serializer as the Beam job)",
                     "beam_args": beam_args or ["(default) --runner=FnApiRunner in_memory"],
                     "num_shards": metadata["num_shards"], "cpus": os.cpu_count()},
    }
    print(json.dumps(result))
    if mismatches or not compared:
        sys.exit(1)


if __name__ == "__main__":
    main()
