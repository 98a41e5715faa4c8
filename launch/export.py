"""s2s-export: a checkpoint (or an average of the last N) as a new version of an export root.

    s2s-export --workdir=W --data_dir=D --export_dir=ROOT [--format=ctranslate2]
    s2s-export --resolve=ROOT      # prints the plain SavedModel directory ROOT points to

The export library is launch/export_lib.py (the layout: launch/export_layout.py); the
checkpoint loading is the evaluator's (launch/evaluator.py:export_checkpoint).
"""

import sys

from absl import app, flags, logging

from launch import absl_cli, extras

REQUIRED = ("workdir", "data_dir", "export_dir")

FLAGS = flags.FLAGS


def fail(message: str) -> None:
    print(f"s2s-export: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv):
    del argv  # absl_cli refuses stray arguments
    if FLAGS.format == "ctranslate2":
        extras.require("s2s-export", "ctranslate2")
    from launch import evaluator, export_lib
    if FLAGS.resolve:
        try:
            print(export_lib.resolve(FLAGS.resolve))
        except export_lib.NotAnExportError as error:
            fail(str(error))
        return
    missing = [f"--{name}" for name in REQUIRED if not FLAGS[name].value]
    if missing:
        fail(f"{', '.join(missing)} required (or --resolve=ROOT)")
    try:
        path = evaluator.export_checkpoint(
            workdir=FLAGS.workdir, data_dir=FLAGS.data_dir, export_dir=FLAGS.export_dir,
            checkpoint=FLAGS.checkpoint, average_last=FLAGS.average_last,
            beam_size=FLAGS.beam_size, alpha=FLAGS.alpha, export_format=FLAGS.format,
            quantization=FLAGS.quantization)
    except (ValueError, evaluator.EvaluationError) as error:
        fail(str(error))
    logging.info("exported %s", path)
    print(path)


def define_flags():
    """Defined when run, not on import, so importing this module defines no flags."""
    flags.DEFINE_string("workdir", None, "s2s-train workdir.")
    flags.DEFINE_string("data_dir", None, "s2s-preprocess output (for the tokenizer).")
    flags.DEFINE_string("export_dir", None, "Export root: each run adds a version directory and "
                        "points ROOT/current.json at it (s2s-translate --model=ROOT follows it).")
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
    flags.DEFINE_string("resolve", None, "Print the model directory that this export root (or "
                        "s2s-evaluate's WORKDIR/export/best) points to, and exit.")


def run():
    define_flags()
    app.run(main, flags_parser=absl_cli.flags_parser("s2s-export"))


if __name__ == "__main__":
    run()
