"""s2s-translate: lines from a file or stdin -> translations on stdout, line for line.

Lines are read in windows of --window, translated in batches of similar length (a batch
runs until its longest sentence is done, so mixing lengths wastes most of it), and
written back in input order.
"""

import sys

from absl import app, flags

from launch import absl_cli

flags.DEFINE_string("model", None, "An export root (s2s-evaluate's WORKDIR/export/best or "
                    "s2s-export's --export_dir: follows its current.json) or a SavedModel "
                    "directory written by either.")
flags.DEFINE_string("input", "-", "Input file, one sentence per line; '-' reads stdin.")
flags.DEFINE_integer("batch_size", 32, "Sentences per call to the SavedModel.")
flags.DEFINE_integer("window", 1024, "Lines read before translating; they are batched by "
                     "length within it. 1 translates each line as soon as it is read.")
flags.mark_flags_as_required(["model"])
FLAGS = flags.FLAGS


def windows(lines, size: int):
    """The input lines without their newline, `size` at a time."""
    window = []
    for line in lines:
        window.append(line.rstrip("\n"))
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def length_sorted_batches(texts: list[str], size: int) -> list[list[int]]:
    """Indices of `texts` in batches of `size`, shortest first (words as the length)."""
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i].split()), len(texts[i]), i))
    return [order[first:first + size] for first in range(0, len(order), size)]


def translate_window(translate, texts: list[str], batch_size: int) -> list[str]:
    """Translations of `texts`, in their order."""
    import tensorflow as tf

    out = [""] * len(texts)
    for rows in length_sorted_batches(texts, batch_size):
        outputs = translate(inputs=tf.constant([texts[i] for i in rows]))["translations"]
        for index, text in zip(rows, outputs.numpy()):
            out[index] = text.decode("utf-8")
    return out


def main(argv):
    del argv
    from launch import export_lib
    try:
        translate = export_lib.load_translator(FLAGS.model)
    except export_lib.NotAnExportError as error:
        print(f"s2s-translate: error: {error}", file=sys.stderr)
        sys.exit(2)
    try:
        stream = sys.stdin if FLAGS.input == "-" else open(FLAGS.input, encoding="utf-8")
    except OSError as error:
        print(f"s2s-translate: error: cannot read {FLAGS.input}: {error.strerror}",
              file=sys.stderr)
        sys.exit(2)
    with stream:
        for window in windows(stream, max(1, FLAGS.window)):
            translations = translate_window(translate, window, FLAGS.batch_size)
            sys.stdout.write("".join(text + "\n" for text in translations))
            sys.stdout.flush()


def run():
    app.run(main, flags_parser=absl_cli.flags_parser("s2s-translate"))


if __name__ == "__main__":
    run()
