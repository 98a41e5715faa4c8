"""A tiny preprocessed data dir made without Beam, for dataset / trainer / evaluator tests.

Task: copy a string of letters to its upper-case form, tokenized by a character-level
SentencePiece model; small enough that a tiny model learns it in a few hundred steps.
"""

import json
import os
import random

import sentencepiece as spm
import tensorflow as tf

from pipeline import features
from pipeline import tokenizer as tokenizer_lib

LETTERS = "abcdefgh"


def _random_words(rng: random.Random, letters: str) -> str:
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(1, 4)))
             for _ in range(rng.randint(1, 3))]
    return " ".join(words)


def make_pairs(count: int, *, seed: int, letters: str = LETTERS) -> list[tuple[str, str]]:
    """`count` copy-task pairs with distinct sources (the evaluator groups repeated ones)."""
    rng = random.Random(seed)
    sources = {}
    while len(sources) < count:
        sources.setdefault(_random_words(rng, letters))
    return [(source, source.upper()) for source in sources]


# Separate vocabularies: the target alphabet has pieces the source never uses, so the
# two sides differ in size and in what each id means.
TARGET_ONLY = "XYZ"


def train_tokenizer(output_dir: str, *, name: str = "spm",
                    alphabet: str = LETTERS + " " + LETTERS.upper()) -> str:
    """Character-level model over `alphabet` (both sides' letters by default); returns
    the .model path."""
    prefix = os.path.join(output_dir, name)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([alphabet] * 4), model_prefix=prefix, model_type="char",
        vocab_size=len(set(alphabet.replace(" ", ""))) + 5, pad_id=features.PAD_ID,
        eos_id=features.EOS_ID, unk_id=features.UNK_ID, bos_id=features.BOS_ID,
        minloglevel=2)
    return prefix + ".model"


def write_split(output_dir: str, split: str, pairs: list[tuple[str, str]], *,
                num_shards: int = 1, processor=None, target_processor=None) -> None:
    """(Re)writes a split's TFRecord shards from text pairs with the directory's tokenizer
    (`target_processor`, when the target side has its own)."""
    processor = processor or spm.SentencePieceProcessor(
        model_file=os.path.join(output_dir, "spm.model"))
    target_processor = target_processor or processor
    for shard in range(num_shards):
        path = os.path.join(output_dir, f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for source, target in pairs[shard::num_shards]:
                writer.write(features.encode_example(
                    inputs=processor.encode(source) + [features.EOS_ID],
                    targets=target_processor.encode(target) + [features.EOS_ID],
                    pair_id=features.fingerprint(source, target),
                    inputs_text=source, targets_text=target))


def make_toy_data_dir(output_dir: str, *, num_train: int = 512, num_dev: int = 32,
                      num_test: int = 32, train_shards: int = 2,
                      separate_vocabs: bool = False, letters: str = LETTERS) -> str:
    """With `separate_vocabs`, as `s2s-preprocess --separate_vocabs` writes it: a source
    model over the lower-case letters, a larger target model over the upper-case ones.
    Other `letters` make a shifted data set with its own (shared) tokenizer."""
    tf.io.gfile.makedirs(output_dir)
    if separate_vocabs:
        paths = {"source": train_tokenizer(output_dir, name="spm_source", alphabet=LETTERS),
                 "target": train_tokenizer(output_dir, name="spm_target",
                                           alphabet=LETTERS.upper() + TARGET_ONLY)}
    else:
        paths = dict.fromkeys(("source", "target"), train_tokenizer(
            output_dir, alphabet=letters + " " + letters.upper()))
    processors = {side: spm.SentencePieceProcessor(model_file=path)
                  for side, path in paths.items()}
    counts = {"train": num_train, "dev": num_dev, "test": num_test}
    splits = {}
    for seed, (split, count) in enumerate(counts.items()):
        pairs = make_pairs(count, seed=seed, letters=letters)
        write_split(output_dir, split, pairs,
                    num_shards=train_shards if split == "train" else 1,
                    processor=processors["source"], target_processor=processors["target"])
        splits[split] = {"read": count, "written": count, "dropped": {}}
    sides = {side: {"path": os.path.basename(path), "sha256": tokenizer_lib.sha256_of_file(path),
                    "vocab_size": processors[side].get_piece_size()}
             for side, path in paths.items()}
    fingerprint = (tokenizer_lib.pair_fingerprint(sides["source"]["sha256"],
                                                  sides["target"]["sha256"])
                   if separate_vocabs else sides["source"]["sha256"])
    metadata = {
        "splits": splits,
        "tokenizer": {"path": sides["source"]["path"], "sha256": fingerprint,
                      "model_type": "char", "shared": not separate_vocabs,
                      "source": sides["source"], "target": sides["target"]},
        "vocab_size": max(side["vocab_size"] for side in sides.values()),
        "source_vocab_size": sides["source"]["vocab_size"],
        "target_vocab_size": sides["target"]["vocab_size"],
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
