"""s2s-translate: lines from a file or stdin -> translations, line for line, in input order.

Output line i answers input line i (lines end at "\\n" only; a trailing "\\r" is
dropped). With --scores a line is `SCORE<TAB>TRANSLATION`: SCORE is the SavedModel's
"scores", the length-normalized log-probability of the translation (<= 0, higher is
better) with 4 decimals; split at the first tab. A blank input line is not sent to the
model (given "" it decodes from a lone EOS and makes up a sentence): its output is an
empty translation with score 0.0000.

Lines are read in windows of --window, translated in batches of similar length (a batch
runs until its longest sentence is done, so mixing lengths wastes most of it), and
written back in input order. --output=FILE is written to a temp file beside FILE and
renamed onto it at the end, so a failed or interrupted run leaves FILE as it was.

With --nbest=K (at most the export's beam size) each input line gets up to K lines
`LINE<TAB>SCORE<TAB>TRANSLATION`, best first, LINE its 1-based input line number (the
SavedModel's "nbest" signature: the search's finished hypotheses, so sometimes fewer than
K); a blank input line gets one line with an empty translation.

An --input file of more than PROGRESS_MIN_LINES lines gets progress lines on stderr
(`s2s-translate: 1200/5000 lines (85.3 lines/s, ETA 45 s)`) at most every
--progress_seconds, then a summary line; stdin and small files stay quiet.
"""

import contextlib
import os
import sys
import time
import uuid

from absl import app, flags

from launch import absl_cli

PROG = "s2s-translate"
PROGRESS_MIN_LINES = 300  # smaller inputs finish before a progress line would help
EMPTY_SLOT = -1e8  # n-best scores at or below this are slots the search left empty

flags.DEFINE_string("model", None, "An export root (s2s-evaluate's WORKDIR/export/best or "
                    "s2s-export's --export_dir: follows its current.json) or a SavedModel "
                    "directory written by either.")
flags.DEFINE_string("input", "-", "Input file, one sentence per line (UTF-8); '-' reads "
                    "stdin.")
flags.DEFINE_string("output", "-", "Output file, one translation per input line; written "
                    "to a temp file beside it and renamed at the end. '-' writes stdout.")
flags.DEFINE_boolean("scores", False, "Write `SCORE<TAB>TRANSLATION` lines: SCORE is the "
                     "translation's length-normalized log-probability (<= 0, higher is "
                     "better) with 4 decimals; 0.0000 for a blank input line.")
flags.DEFINE_integer("nbest", 0, "Write up to this many hypotheses per input line, "
                     "best first, as `LINE<TAB>SCORE<TAB>TRANSLATION` (LINE: the 1-based "
                     "input line); at most the export's beam size. 0: the best only.",
                     lower_bound=0)
flags.DEFINE_integer("batch_size", 32, "Sentences per call to the SavedModel.", lower_bound=1)
flags.DEFINE_integer("window", 1024, "Lines read before translating; they are batched by "
                     "length within it. 1 translates each line as soon as it is read.",
                     lower_bound=1)
flags.DEFINE_float("progress_seconds", 5.0, "Seconds between progress lines on stderr, "
                   f"shown only for an --input file of more than {PROGRESS_MIN_LINES} "
                   "lines; 0 turns them off.", lower_bound=0)
flags.mark_flags_as_required(["model"])
FLAGS = flags.FLAGS


class InputError(ValueError):
    """A line that cannot be read as text; the message names the file and line."""


def read_lines(stream, *, name: str):
    """The decoded lines of a binary stream without their endings. Splitting on b"\\n"
    alone (not on a lone "\\r" as text mode does) keeps line i of the output on line i of
    what `wc -l` and other tools count."""
    for number, raw in enumerate(stream, 1):
        try:
            yield raw.rstrip(b"\r\n").decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError(f"{name} line {number} is not UTF-8: {error.reason}") from None


def count_lines(path: str) -> int:
    """Lines as read_lines splits them; one fast pass over the bytes."""
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            count, last = count + chunk.count(b"\n"), chunk[-1:]
    return count + (last != b"\n")


def windows(lines, size: int):
    """The lines, `size` at a time."""
    window = []
    for line in lines:
        window.append(line)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def length_sorted_batches(texts: list[str], size: int) -> list[list[int]]:
    """Indices of `texts` in batches of `size`, shortest first (words as the length)."""
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i].split()), len(texts[i]), i))
    return [order[first:first + size] for first in range(0, len(order), size)]


def translate_window(translate, texts: list[str], *, batch_size: int, nbest: int = 0,
                     on_done=None) -> list[list[tuple[str, float]]]:
    """Per text, in their order, its (translation, score) list: the best only, or with
    `nbest` up to that many (the nbest signature's filled slots). Blank texts skip the
    model. `on_done(count)` hears of lines as they are finished."""
    import tensorflow as tf

    out = [[("", 0.0)] for _ in texts]
    todo = [i for i, text in enumerate(texts) if text.strip()]
    on_done = on_done or (lambda count: None)
    on_done(len(texts) - len(todo))
    for batch in length_sorted_batches([texts[i] for i in todo], batch_size):
        rows = [todo[i] for i in batch]
        result = translate(inputs=tf.constant([texts[i] for i in rows]))
        for index, found, scores in zip(rows, result["translations"].numpy(),
                                        result["scores"].numpy()):
            if nbest:
                out[index] = [(text.decode("utf-8"), float(score))
                              for text, score in zip(found[:nbest], scores[:nbest])
                              if score > EMPTY_SLOT]
            else:
                out[index] = [(found.decode("utf-8"), float(scores))]
        on_done(len(rows))
    return out


def format_lines(number: int, results: list[tuple[str, float]], *, scores: bool,
                 nbest: bool) -> str:
    """The output lines of input line `number` (1-based)."""
    if nbest:
        return "".join(f"{number}\t{score:.4f}\t{text}\n" for text, score in results)
    text, score = results[0]
    return f"{score:.4f}\t{text}\n" if scores else text + "\n"


class Progress:
    """`s2s-translate: DONE/TOTAL lines (R lines/s, ETA S s)` on stderr at most every
    `every` seconds, then a summary: a long file shows it is moving and when it ends."""

    def __init__(self, total: int, *, every: float):
        self.total, self.every, self.done = total, every, 0
        self.began = self.last = time.monotonic()

    def add(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if count and now - self.last >= self.every and self.done < self.total:
            rate = self.done / max(now - self.began, 1e-9)
            print(f"{PROG}: {self.done}/{self.total} lines ({rate:.1f} lines/s, ETA "
                  f"{(self.total - self.done) / max(rate, 1e-9):.0f} s)", file=sys.stderr,
                  flush=True)
            self.last = now

    def finish(self) -> None:
        seconds = time.monotonic() - self.began
        print(f"{PROG}: {self.done} lines in {seconds:.1f} s "
              f"({self.done / max(seconds, 1e-9):.1f} lines/s)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def open_output(path: str):
    """A binary stream for `path` ('-': stdout). A file is written under a temp name in
    its directory and renamed onto `path` only when the block ends without an error."""
    if path == "-":
        yield sys.stdout.buffer
        return
    if os.path.isdir(path):
        raise IsADirectoryError(21, "Is a directory", path)
    temp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(temp, "xb") as f:
            yield f
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)


def translate_stream(translate, lines, *, out, batch_size: int, window: int, scores: bool,
                     nbest: int = 0, progress: Progress | None = None) -> None:
    """Writes the output lines of each of `lines` to `out` (binary), a window at a time."""
    on_done = progress.add if progress else None
    first = 1
    for texts in windows(lines, window):
        results = translate_window(translate, texts, batch_size=batch_size, nbest=nbest,
                                   on_done=on_done)
        out.write("".join(format_lines(first + i, found, scores=scores, nbest=bool(nbest))
                          for i, found in enumerate(results)).encode("utf-8"))
        out.flush()
        first += len(texts)
    if progress:
        progress.finish()


def load(model: str, *, nbest: int):
    """The export's 1-best signature, or its n-best one when `nbest` fits its beam."""
    from launch import export_lib
    if not nbest:
        return export_lib.load_translator(model)
    beam = export_lib.read_manifest(model).get("beam_size", 0)
    if nbest > beam:
        raise export_lib.NotAnExportError(f"--nbest={nbest} is more than {model}'s beam "
                                          f"size {beam}: export with --beam_size={nbest}")
    return export_lib.load_translator(model, signature=export_lib.NBEST_SIGNATURE)


def main(argv):
    del argv
    from launch import export_lib
    stage = f"cannot read {FLAGS.input}"
    try:
        if FLAGS.input == "-":
            source, total = contextlib.nullcontext(sys.stdin.buffer), None
        else:
            source = open(FLAGS.input, "rb")
            total = count_lines(FLAGS.input) if os.path.isfile(FLAGS.input) else None
        stage = f"cannot write {FLAGS.output}"
        with source as stream, open_output(FLAGS.output) as out:
            stage = "cannot load the model"
            translate = load(FLAGS.model, nbest=FLAGS.nbest)
            stage = f"cannot write {FLAGS.output}"
            show = FLAGS.progress_seconds > 0 and (total or 0) > PROGRESS_MIN_LINES
            lines = read_lines(stream, name="stdin" if FLAGS.input == "-" else FLAGS.input)
            translate_stream(translate, lines, out=out, batch_size=FLAGS.batch_size,
                             window=FLAGS.window, scores=FLAGS.scores, nbest=FLAGS.nbest,
                             progress=Progress(total, every=FLAGS.progress_seconds)
                             if show else None)
    except BrokenPipeError:  # a reader such as `head` stopped reading: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except (InputError, export_lib.NotAnExportError) as error:
        absl_cli.fail(PROG, str(error))
    except OSError as error:
        absl_cli.fail(PROG, f"{stage}: {error.strerror or error}")


def run():
    app.run(main, flags_parser=absl_cli.flags_parser(PROG))


if __name__ == "__main__":
    run()
