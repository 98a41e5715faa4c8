"""s2s-translate: lines from a file or stdin -> translations on stdout, in batches."""

import sys

from absl import app, flags

flags.DEFINE_string("model", None, "Export directory (s2s-evaluate's export/best or "
                    "s2s-export's --export_dir).")
flags.DEFINE_string("input", "-", "Input file, one sentence per line; '-' reads stdin.")
flags.DEFINE_integer("batch_size", 32, "Sentences per call to the SavedModel.")
flags.mark_flags_as_required(["model"])
FLAGS = flags.FLAGS


def batches(lines, size: int):
    batch = []
    for line in lines:
        batch.append(line.rstrip("\n"))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def main(argv):
    del argv
    import tensorflow as tf

    from launch import export
    try:
        translate = export.load_translator(FLAGS.model)
    except export.NotAnExportError as error:
        print(f"s2s-translate: error: {error}", file=sys.stderr)
        sys.exit(2)
    try:
        stream = sys.stdin if FLAGS.input == "-" else open(FLAGS.input, encoding="utf-8")
    except OSError as error:
        print(f"s2s-translate: error: cannot read {FLAGS.input}: {error.strerror}",
              file=sys.stderr)
        sys.exit(2)
    with stream:
        for batch in batches(stream, FLAGS.batch_size):
            outputs = translate(inputs=tf.constant(batch))["translations"].numpy()
            sys.stdout.write("".join(text.decode("utf-8") + "\n" for text in outputs))
            sys.stdout.flush()


def run():
    app.run(main)


if __name__ == "__main__":
    run()
