"""Exports: a SavedModel mapping a batch of strings to translations, kept in export roots.

Tokenization (tensorflow-text SentencePiece or WordPiece), cached beam search and detokenization all
live in the graph, so a SavedModel loads with plain `tf.saved_model.load` after
`import tensorflow_text`, with no project code on the path. Beam size and the maximum
output length are fixed at export time.

Exports are published into an export root (launch/export_layout.py): a complete version
directory first, then the pointer. `resolve` turns a root into the plain model directory
that TensorFlow (or CTranslate2) loads. This module knows nothing of checkpoints or of
the evaluator: callers hand it a built model, or a function that writes one.
"""

import datetime
import json
from typing import Callable

import tensorflow as tf
from absl import logging

from launch import export_layout, shared_files
from models import decoding
from pipeline import tokenizer as tokenizer_lib

MANIFEST = export_layout.MANIFEST
POINTER = export_layout.POINTER
NotAnExportError = export_layout.NotAnExportError
SAVED_MODEL_FORMAT = "s2s-pipeline translator"
NBEST_SIGNATURE = "nbest"  # beside serving_default: every finished hypothesis, best first
# What a root from before versioning held at its top (removed once a pointer is in force,
# so nothing loads the stale model by mistake).
LEGACY_ENTRIES = ("saved_model.pb", "fingerprint.pb", "variables", "assets")


class Translator(tf.Module):
    """Wraps a trained model and its tokenizer behind one string-to-string function."""

    def __init__(self, model, *, source_model: bytes, target_model: bytes, beam_size: int,
                 alpha: float, max_input_length: int, max_decode_length: int,
                 length_ratio: float, length_offset: int):
        super().__init__()
        self.model = model
        # Distinct names: two SentencePiece resources created under one node name get
        # mixed up when the SavedModel loads in a fresh process (the target side then
        # detokenizes with the source model).
        self.source_tokenizer = tokenizer_lib.tf_text_tokenizer(source_model,
                                                                name="source_tokenizer")
        self.target_tokenizer = (
            self.source_tokenizer if target_model == source_model
            else tokenizer_lib.tf_text_tokenizer(target_model, name="target_tokenizer"))
        self.beam_size, self.alpha = int(beam_size), float(alpha)
        self.max_input_length = int(max_input_length)
        self.max_decode_length = int(max_decode_length)
        self.length_ratio, self.length_offset = float(length_ratio), int(length_offset)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def translate(self, texts):
        """texts: [batch] string -> {"translations": [batch] string, "scores": [batch]}."""
        tokens, scores = self._search(self._encode(texts))
        return {"translations": self._detokenize(tokens), "scores": scores}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def translate_nbest(self, texts):
        """texts: [batch] string -> {"translations": [batch, beam_size] string, best
        first, "scores": [batch, beam_size]}; a slot the search left empty (it stopped
        once nothing could beat its best) is "" with score NO_HYPOTHESIS (-1e9)."""
        tokens, scores = self._search(self._encode(texts), nbest=True)
        shape = tf.shape(tokens)
        texts = self._detokenize(tf.reshape(tokens, [shape[0] * shape[1], shape[2]]))
        return {"translations": tf.reshape(texts, shape[:2]), "scores": scores}

    def _encode(self, texts):
        """[batch] string -> [batch, length] int32 source ids ending in EOS, cut to the
        longest source the model was trained on."""
        config = self.model.config
        pieces = self.source_tokenizer.tokenize(texts)[:, : self.max_input_length - 1]
        eos = tf.fill([pieces.nrows(), 1], tf.cast(config.eos_id, pieces.dtype))
        ids = tf.concat([pieces, eos], axis=1).to_tensor(default_value=config.pad_id)
        return tf.cast(ids, tf.int32)

    def _detokenize(self, tokens):
        """[rows, length] int32 output ids -> [rows] string, EOS and padding dropped."""
        config = self.model.config
        keep = tf.logical_and(tokens != config.pad_id, tokens != config.eos_id)
        return self.target_tokenizer.detokenize(tf.ragged.boolean_mask(tokens, keep))

    def _search(self, ids, *, nbest: bool = False):
        """Beam search with buffers for the batch's longest sentence limit (one traced
        decoder for every length): [batch(, beam), length] tokens, [batch(, beam)]
        scores. Each sentence stops at the limit of its own length, as in the evaluator."""
        ids.set_shape([None, None])
        return decoding.length_bounded_beam_search(
            self.model, ids, beam_size=self.beam_size, alpha=self.alpha, nbest=nbest,
            ratio=self.length_ratio, offset=self.length_offset, cap=self.max_decode_length)


def save_translator(model, *, saved_model_dir: str, source_model: bytes, target_model: bytes,
                    beam_size: int, alpha: float, max_input_length: int,
                    max_decode_length: int, length_ratio: float, length_offset: int,
                    info: dict | None = None) -> str:
    """Writes a plain SavedModel and its manifest into `saved_model_dir` (a fresh
    directory; publish_version makes it a version of a root)."""
    translator = Translator(model, source_model=source_model, target_model=target_model,
                            beam_size=beam_size, alpha=alpha,
                            max_input_length=max_input_length,
                            max_decode_length=max_decode_length, length_ratio=length_ratio,
                            length_offset=length_offset)
    tf.saved_model.save(translator, saved_model_dir,
                        signatures={"serving_default": translator.translate,
                                    NBEST_SIGNATURE: translator.translate_nbest})
    write_manifest(saved_model_dir, {
        "format": SAVED_MODEL_FORMAT,
        "vocabulary": vocabulary_info(model, source_model=source_model,
                                      target_model=target_model),
        "beam_size": beam_size, "alpha": alpha,
        "max_input_length": max_input_length, "max_decode_length": max_decode_length,
        "length_ratio": length_ratio, "length_offset": length_offset, **(info or {})})
    return saved_model_dir


def vocabulary_info(model, *, source_model: bytes, target_model: bytes) -> dict:
    """What a manifest says of the vocabularies the model carries (both SentencePiece
    models are inside the export)."""
    return {"layout": "shared" if source_model == target_model else "separate",
            "source_vocab_size": model.config.source_vocab_size,
            "target_vocab_size": model.config.target_vocab_size}


def write_manifest(directory: str, manifest: dict) -> None:
    """The manifest marks a finished model directory; it is written after the model."""
    tf.io.gfile.makedirs(directory)
    shared_files.write_text_atomically(export_layout.join(directory, MANIFEST),
                                       json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_json(path: str) -> dict:
    with tf.io.gfile.GFile(path) as f:
        return json.loads(f.read())


read_text = shared_files.read_text


def read_pointer(root: str) -> dict | None:
    """The root's pointer record, or None when nothing was published there yet."""
    path = export_layout.join(root, POINTER)
    try:
        return export_layout.parse_pointer(read_text(path), path=path)
    except FileNotFoundError:
        return None


def resolve(path: str) -> str:
    """The plain model directory behind `path`: an export root (follows its pointer) or
    a model directory itself. NotAnExportError says why when it is neither."""
    return export_layout.resolve(path, read_text=read_text, exists=tf.io.gfile.exists)


def read_manifest(path: str) -> dict:
    """The manifest of the model `path` (a root or a model directory) stands for."""
    return read_json(export_layout.join(resolve(path), MANIFEST))


def publish_version(root: str, *, write: Callable[[str], None], step: int | None = None,
                    wait: float = 900.0) -> str:
    """Writes a new version with `write(directory)` (which must leave a manifest), then
    points the root at it and removes versions no pointer needs. One writer per root at a
    time (a lease); a failure at any point leaves the previous version in force.
    Returns the new version's directory."""
    with shared_files.hold(root, wait=wait) as lease:
        staging = export_layout.join(root, export_layout.staging_name())
        write(staging)
        if not tf.io.gfile.exists(export_layout.join(staging, MANIFEST)):
            raise RuntimeError(f"{staging} was written without its {MANIFEST}")
        lease.check()
        version = export_layout.next_version(_names(root))
        directory = export_layout.join(root, version)
        tf.io.gfile.rename(staging, directory)
        previous = read_pointer(root)
        write_pointer(root, version=version, step=step,
                      previous=previous["version"] if previous else None)
        prune(root, keep={version, previous["version"] if previous else version})
    logging.info("%s now points to %s", export_layout.join(root, POINTER), version)
    return directory


def write_pointer(root: str, *, version: str, step: int | None, previous: str | None) -> None:
    """Replaces the pointer in one write: the switch to the new version."""
    record = {"version": version, "step": step, "previous_version": previous,
              "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds")}
    shared_files.write_text_atomically(export_layout.join(root, POINTER),
                                       json.dumps(record, indent=2, sort_keys=True) + "\n")


def prune(root: str, *, keep: set[str]) -> None:
    """Removes versions other than `keep` (the one in force and the one before, which a
    reader may still be loading), the staging directories of crashed writers, and a model
    from before versioning. Runs under the root's lease, so no writer is mid-version."""
    for name in _names(root):
        path = export_layout.join(root, name)
        if (export_layout.is_version(name) and name not in keep) or name.startswith(
                export_layout.STAGING_PREFIX):
            tf.io.gfile.rmtree(path)  # an old version, or one a crashed writer left unfinished
        elif name.startswith(f"{POINTER}.tmp-"):
            tf.io.gfile.remove(path)  # a pointer write that crashed before its rename
    remove_legacy_model(root)


def _names(root: str) -> list[str]:
    return [entry.rstrip("/") for entry in tf.io.gfile.listdir(root)]


def remove_legacy_model(root: str) -> None:
    """A root from before versioning held the SavedModel itself; once the pointer is in
    force that stale model goes, so `tf.saved_model.load(root)` fails instead of loading it."""
    legacy_manifest = export_layout.join(root, MANIFEST)
    if not tf.io.gfile.exists(legacy_manifest):
        return
    tf.io.gfile.remove(legacy_manifest)
    for name in LEGACY_ENTRIES:
        path = export_layout.join(root, name)
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    logging.info("removed the pre-versioning model at the top of %s", root)


def load_translator(path: str, *, signature: str = "serving_default"):
    """A signature of an export (root or model directory; NBEST_SIGNATURE for n-best
    lists), loaded with TensorFlow alone; refuses directories that are not our
    SavedModels, and exports from before that signature existed."""
    directory = resolve(path)
    manifest = read_json(export_layout.join(directory, MANIFEST))
    if manifest.get("format", SAVED_MODEL_FORMAT) != SAVED_MODEL_FORMAT:
        raise NotAnExportError(f"{directory} is a {manifest['format']} export, not a "
                               "SavedModel (a CTranslate2 model loads with "
                               f"ctranslate2.Translator('{directory}'))")
    signatures = tf.saved_model.load(directory).signatures
    if signature not in signatures:
        raise NotAnExportError(f"{directory} has no {signature!r} signature (it has "
                               f"{', '.join(sorted(signatures))}); export it again")
    return signatures[signature]
