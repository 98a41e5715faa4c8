"""SavedModel export: a `serving_default` signature from a batch of strings to translations.

Tokenization (tensorflow-text SentencePiece), cached beam search and detokenization all
live in the graph, so the export loads with plain `tf.saved_model.load` after
`import tensorflow_text`, with no project code on the path. Beam size and the maximum
output length are fixed at export time.
"""

import json
import os
import sys

import tensorflow as tf
import tensorflow_text as tf_text
from absl import app, flags, logging

from models import decoding

MANIFEST = "s2s_export.json"  # marks a directory as one of our exports


class Translator(tf.Module):
    """Wraps a trained model and its tokenizer behind one string-to-string function."""

    def __init__(self, model, *, source_model: bytes, target_model: bytes, beam_size: int,
                 alpha: float, max_input_length: int, max_decode_length: int,
                 length_ratio: float, length_offset: int):
        super().__init__()
        self.model = model
        self.source_tokenizer = tf_text.SentencepieceTokenizer(model=source_model)
        self.target_tokenizer = (self.source_tokenizer if target_model == source_model
                                 else tf_text.SentencepieceTokenizer(model=target_model))
        self.beam_size, self.alpha = int(beam_size), float(alpha)
        self.max_input_length = int(max_input_length)
        self.max_decode_length = int(max_decode_length)
        self.length_ratio, self.length_offset = float(length_ratio), int(length_offset)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def translate(self, texts):
        """texts: [batch] string -> {"translations": [batch] string, "scores": [batch]}."""
        config = self.model.config
        pieces = self.source_tokenizer.tokenize(texts)[:, : self.max_input_length - 1]
        eos = tf.fill([pieces.nrows(), 1], tf.cast(config.eos_id, pieces.dtype))
        ids = tf.concat([pieces, eos], axis=1).to_tensor(default_value=config.pad_id)
        tokens, scores = self._search(tf.cast(ids, tf.int32))
        keep = tf.logical_and(tokens != config.pad_id, tokens != config.eos_id)
        ragged = tf.ragged.boolean_mask(tokens, keep)
        return {"translations": self.target_tokenizer.detokenize(ragged), "scores": scores}

    def _search(self, ids):
        """Beam search with buffers for the batch's longest sentence limit (one traced
        decoder for every length): [batch, length] tokens, [batch] scores. Each sentence
        stops at the limit of its own length, as in the evaluator."""
        ids.set_shape([None, None])
        return decoding.length_bounded_beam_search(
            self.model, ids, beam_size=self.beam_size, alpha=self.alpha,
            ratio=self.length_ratio, offset=self.length_offset, cap=self.max_decode_length)


def export_saved_model(model, *, source_model: bytes, target_model: bytes, export_dir: str,
                       beam_size: int, alpha: float, max_input_length: int,
                       max_decode_length: int, length_ratio: float, length_offset: int,
                       info: dict | None = None) -> str:
    """Writes the SavedModel to a temp dir, then swaps it in: readers never see half."""
    translator = Translator(model, source_model=source_model, target_model=target_model,
                            beam_size=beam_size, alpha=alpha,
                            max_input_length=max_input_length,
                            max_decode_length=max_decode_length, length_ratio=length_ratio,
                            length_offset=length_offset)
    tmp = f"{export_dir.rstrip('/')}.tmp-{os.getpid()}"
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    tf.saved_model.save(translator, tmp,
                        signatures={"serving_default": translator.translate})
    manifest = {"format": "s2s-pipeline translator", "beam_size": beam_size, "alpha": alpha,
                "max_input_length": max_input_length,
                "max_decode_length": max_decode_length, "length_ratio": length_ratio,
                "length_offset": length_offset, **(info or {})}
    with tf.io.gfile.GFile(os.path.join(tmp, MANIFEST), "w") as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    old = f"{export_dir.rstrip('/')}.old-{os.getpid()}"
    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rename(export_dir, old)
    tf.io.gfile.rename(tmp, export_dir)
    if tf.io.gfile.exists(old):
        tf.io.gfile.rmtree(old)
    return export_dir


class NotAnExportError(ValueError):
    """The directory is not a SavedModel written by export_saved_model."""


def load_translator(export_dir: str):
    """Loads an export with TensorFlow alone; refuses directories that are not ours."""
    if not tf.io.gfile.exists(os.path.join(export_dir, MANIFEST)):
        raise NotAnExportError(f"{export_dir} is not an s2s-pipeline export (no {MANIFEST})")
    loaded = tf.saved_model.load(export_dir)
    return loaded.signatures["serving_default"]


FLAGS = flags.FLAGS


def main(argv):
    del argv
    from launch import evaluator
    try:
        path = evaluator.export_checkpoint(
            workdir=FLAGS.workdir, data_dir=FLAGS.data_dir, export_dir=FLAGS.export_dir,
            checkpoint=FLAGS.checkpoint, average_last=FLAGS.average_last,
            beam_size=FLAGS.beam_size, alpha=FLAGS.alpha, export_format=FLAGS.format,
            quantization=FLAGS.quantization)
    except (ValueError, evaluator.EvaluationError) as error:
        print(f"s2s-export: error: {error}", file=sys.stderr)
        sys.exit(2)
    logging.info("exported %s", path)
    print(path)


def run():
    flags.DEFINE_string("workdir", None, "s2s-train workdir.")
    flags.DEFINE_string("data_dir", None, "s2s-preprocess output (for the tokenizer).")
    flags.DEFINE_string("export_dir", None, "Where to write the SavedModel.")
    flags.DEFINE_string("checkpoint", "", "Checkpoint path; default: the latest.")
    flags.DEFINE_integer("average_last", 1, "Average the weights of the last N checkpoints.")
    flags.DEFINE_integer("beam_size", None, "Default: the training config's decode.beam_size.")
    flags.DEFINE_float("alpha", None, "Default: the training config's decode.alpha.")
    flags.DEFINE_enum("format", "savedmodel", ["savedmodel", "ctranslate2"],
                      "savedmodel: strings in, strings out, plain TensorFlow. ctranslate2: "
                      "a CTranslate2 model directory (Transformer only; beam size and "
                      "alpha are chosen when translating).")
    flags.DEFINE_string("quantization", None, "--format=ctranslate2: int8, int8_float32, "
                        "bfloat16, ... (default: float32 weights).")
    flags.mark_flags_as_required(["workdir", "data_dir", "export_dir"])
    app.run(main)


if __name__ == "__main__":
    run()

