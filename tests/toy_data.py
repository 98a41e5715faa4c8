"""A tiny preprocessed data dir made without Beam, for dataset / trainer / evaluator tests.

Task: copy a string of letters to its upper-case form, tokenized by a character-level
SentencePiece model; small enough that a tiny model learns it in a few hundred steps.
"""

import hashlib
import json
import os
import random

import sentencepiece as spm
import tensorflow as tf

from pipeline import features

LETTERS = "abcdefgh"


def _random_words(rng: random.Random) -> str:
    words = ["".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 4)))
             for _ in range(rng.randint(1, 3))]
    return " ".join(words)


def make_pairs(count: int, *, seed: int) -> list[tuple[str, str]]:
    """`count` copy-task pairs with distinct sources (the evaluator groups repeated ones)."""
    rng = random.Random(seed)
    sources = {}
    while len(sources) < count:
        sources.setdefault(_random_words(rng))
    return [(source, source.upper()) for source in sources]


def train_tokenizer(output_dir: str) -> str:
    """Character-level model over both alphabets; returns the .model path."""
    text = [LETTERS + " " + LETTERS.upper()] * 4
    prefix = os.path.join(output_dir, "spm")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_prefix=prefix, model_type="char",
        vocab_size=len(LETTERS) * 2 + 5, pad_id=features.PAD_ID, eos_id=features.EOS_ID,
        unk_id=features.UNK_ID, bos_id=features.BOS_ID, minloglevel=2)
    return prefix + ".model"


def write_split(output_dir: str, split: str, pairs: list[tuple[str, str]], *,
                num_shards: int = 1, processor=None) -> None:
    """(Re)writes a split's TFRecord shards from text pairs with the directory's tokenizer."""
    processor = processor or spm.SentencePieceProcessor(
        model_file=os.path.join(output_dir, "spm.model"))
    for shard in range(num_shards):
        path = os.path.join(output_dir, f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for source, target in pairs[shard::num_shards]:
                writer.write(features.encode_example(
                    inputs=processor.encode(source) + [features.EOS_ID],
                    targets=processor.encode(target) + [features.EOS_ID],
                    pair_id=features.fingerprint(source, target),
                    inputs_text=source, targets_text=target))


def make_toy_data_dir(output_dir: str, *, num_train: int = 512, num_dev: int = 32,
                      num_test: int = 32, train_shards: int = 2) -> str:
    tf.io.gfile.makedirs(output_dir)
    model_path = train_tokenizer(output_dir)
    processor = spm.SentencePieceProcessor(model_file=model_path)
    counts = {"train": num_train, "dev": num_dev, "test": num_test}
    splits = {}
    for seed, (split, count) in enumerate(counts.items()):
        pairs = make_pairs(count, seed=seed)
        write_split(output_dir, split, pairs,
                    num_shards=train_shards if split == "train" else 1, processor=processor)
        splits[split] = {"read": count, "written": count, "dropped": {}}
    with open(model_path, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    metadata = {
        "splits": splits,
        "tokenizer": {"path": "spm.model", "sha256": sha256, "model_type": "char",
                      "shared": True,
                      "source": {"path": "spm.model", "sha256": sha256},
                      "target": {"path": "spm.model", "sha256": sha256}},
        "vocab_size": processor.get_piece_size(),
        "pad_id": features.PAD_ID, "eos_id": features.EOS_ID,
        "unk_id": features.UNK_ID, "bos_id": features.BOS_ID,
        "bucket_boundaries": [8, 16],
        "max_length": 16,
    }
    with open(os.path.join(output_dir, features.METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2)
    with open(os.path.join(output_dir, features.COMPLETED_FILE), "w") as f:
        f.write("")
    return output_dir
