"""SentencePiece unigram, SentencePiece BPE and WordPiece on one corpus, one run.

For each tokenizer: s2s-preprocess (8k vocabulary), s2s-train with the bench config for
--steps, s2s-evaluate on test (beam 4). Prints one JSON line with, per tokenizer, test
BLEU and chrF, mean pieces per sentence on each side, and the share of test sentences
(both sides) whose detokenized pieces give back the text exactly; plus the CPU and the
wall time of each job. The tokenizers run one after another on the same machine.

    python bench/tokenizers.py [--corpus=../shared/data/gettext-en-de] [--steps=1500]
        [--work=DIR] [--tokenizers=unigram,bpe,wordpiece]

A rerun with the same --work reuses finished preprocessing and training.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipeline import dataset, features  # noqa: E402
from pipeline import tokenizer as tokenizer_lib  # noqa: E402

BIN = os.path.dirname(sys.executable)
TOKENIZER_FLAGS = {"unigram": ["--model_type=unigram"], "bpe": ["--model_type=bpe"],
                   "wordpiece": ["--tokenizer=wordpiece"]}


def cpu_name() -> str:
    """The model name plus what decides bfloat16 speed (AMX, AVX512_BF16), since the
    model name of a cloud VM often hides its generation."""
    info = open("/proc/cpuinfo").read()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), "unknown")
    flags = [flag for flag in ("amx_bf16", "avx512_bf16") if f" {flag}" in info]
    return f"{name} ({', '.join(flags) or 'no native bfloat16'})"


def run(command: list) -> float:
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return round(time.monotonic() - started, 1)


def preprocess(corpus: str, data_dir: str, name: str) -> float:
    splits = [f"--{split}=tsv:{corpus}/{split}.tsv" for split in ("train", "dev", "test")]
    return run([f"{BIN}/s2s-preprocess", *splits, "--vocab_size=8000", "--num_shards=1",
                f"--output_dir={data_dir}", *TOKENIZER_FLAGS[name]])


def train(data_dir: str, workdir: str, steps: int) -> float:
    return run([f"{BIN}/s2s-train", "--config=configs/bench.py", f"--data_dir={data_dir}",
                f"--workdir={workdir}", f"--config.train.num_steps={steps}"])


def evaluate(data_dir: str, workdir: str) -> tuple:
    seconds = run([f"{BIN}/s2s-evaluate", f"--workdir={workdir}", f"--data_dir={data_dir}",
                   "--split=test", "--noexport_best"])
    rows = [json.loads(line) for line in open(os.path.join(workdir, "eval", "test",
                                                           "metrics.jsonl"))]
    return seconds, rows[-1]


def test_split_figures(data_dir: str) -> dict:
    """Pieces per sentence (EOS not counted) and exact round trips on the test split."""
    metadata = dataset.load_metadata(data_dir)
    source, target = tokenizer_lib.load_tokenizers(data_dir, metadata)
    lengths = {"source": [], "target": []}
    exact = total = 0
    files = sorted(glob.glob(os.path.join(data_dir, features.shard_pattern("test"))))
    for record in tf.data.TFRecordDataset(files).map(features.parse_example):
        for side, ids_key, text_key, tokenizer in (
                ("source", features.INPUTS, features.INPUTS_TEXT, source),
                ("target", features.TARGETS, features.TARGETS_TEXT, target)):
            ids = record[ids_key].numpy()
            lengths[side].append(len(ids) - 1)
            exact += tokenizer.detokenize(ids) == record[text_key].numpy().decode("utf-8")
            total += 1
    return {"vocab_size": metadata["vocab_size"],
            "source_pieces_per_sentence": round(float(np.mean(lengths["source"])), 2),
            "target_pieces_per_sentence": round(float(np.mean(lengths["target"])), 2),
            "round_trip_exact_percent": round(100.0 * exact / total, 2),
            "round_trip_sentences": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=os.path.join(REPO, "..", "shared", "data",
                                                         "gettext-en-de"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--work", default=None)
    parser.add_argument("--tokenizers", default="unigram,bpe,wordpiece")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="bench_tokenizers_")
    os.chdir(REPO)
    results = {"cpu": cpu_name(), "corpus": os.path.basename(os.path.normpath(args.corpus)),
               "steps": args.steps, "work": work}
    for name in args.tokenizers.split(","):
        data_dir, workdir = os.path.join(work, name, "data"), os.path.join(work, name, "work")
        figures = {"preprocess_s": preprocess(args.corpus, data_dir, name),
                   "train_s": train(data_dir, workdir, args.steps)}
        figures["evaluate_s"], row = evaluate(data_dir, workdir)
        figures.update(bleu=round(row["bleu"], 2), chrf=round(row["chrf"], 2),
                       **test_split_figures(data_dir))
        results[name] = figures
        print(f"{name}: {figures}", file=sys.stderr, flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
