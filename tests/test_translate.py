"""s2s-translate (launch/translate.py) on a real SavedModel exported from a briefly trained
tiny model: output order and files, scores, progress, and the one-line error contract."""

import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

import toy_data
from configs import tiny
from launch import evaluator, export_lib, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRESS = re.compile(r"s2s-translate: (\d+)/(\d+) lines \(\d+\.\d lines/s, ETA \d+ s\)")
SUMMARY = re.compile(r"s2s-translate: (\d+) lines in \d+\.\d s \(\d+\.\d lines/s\)")


@pytest.fixture(scope="module")
def export(data_dir, tmp_path_factory):
    """An export root holding 300 steps of the copy task (distinct enough outputs that a
    line out of place shows)."""
    root = tmp_path_factory.mktemp("translate")
    config = tiny.get_config()
    config.train.num_steps = config.train.checkpoint_every_steps = 300
    config.train.label_smoothing = 0.0
    config.optimizer.learning_rate = 1e-2
    config.data.static_shapes = True
    trainer.train(config, workdir=str(root / "work"), data_dir=data_dir,
                  strategy=tf.distribute.get_strategy())
    return evaluator.export_checkpoint(workdir=str(root / "work"), data_dir=data_dir,
                                       export_dir=str(root / "export"))


@pytest.fixture(scope="module")
def serve(export):
    return export_lib.load_translator(export)


def direct(serve, lines: list[str]) -> list[tuple[str, float]]:
    """What the signature itself says of each line; a blank line is ('', 0.0)."""
    texts = [line for line in lines if line.strip()]
    out = serve(inputs=tf.constant(texts))
    answers = iter(zip([t.decode() for t in out["translations"].numpy()],
                       out["scores"].numpy().tolist()))
    return [next(answers) if line.strip() else ("", 0.0) for line in lines]


def translate(args, **kwargs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "launch.translate", *args],
                          capture_output=True, text=True, env=env, timeout=300, **kwargs)


def ours(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("s2s-translate:")]


def write_lines(path, lines) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


SMALL = ([s for s, _ in toy_data.make_pairs(30, seed=11)[:14]] + ["", "   "]
         + [s for s, _ in toy_data.make_pairs(30, seed=11)[14:]] + [""])


def test_stdout_and_output_file_hold_the_savedmodels_translations_line_for_line(
        export, serve, tmp_path):
    expected = [text for text, _ in direct(serve, SMALL)]
    assert expected[14:16] == ["", ""] and expected[-1] == ""
    assert len(set(expected)) > 20  # distinct enough that a misplaced line shows
    # stdin, small windows and batches: sorted by length inside, written in input order.
    piped = translate([f"--model={export}", "--batch_size=3", "--window=7"],
                      input="".join(line + "\n" for line in SMALL))
    assert piped.returncode == 0, piped.stderr[-3000:]
    assert piped.stdout.split("\n") == [*expected, ""]
    # A file replaces what was there; nothing on stdout, no temp file left beside it.
    out = tmp_path / "out" / "hyp.txt"
    out.parent.mkdir()
    out.write_text("old content\n")
    infile = write_lines(tmp_path / "small.txt", SMALL)
    to_file = translate([f"--model={export}", f"--input={infile}", f"--output={out}",
                         "--progress_seconds=0.001"])
    assert to_file.returncode == 0, to_file.stderr[-3000:]
    assert to_file.stdout == ""
    assert out.read_text() == piped.stdout
    assert os.listdir(out.parent) == ["hyp.txt"]
    assert ours(to_file.stderr) == []  # a small file: no progress, however often asked


def test_scores_and_progress_on_a_long_file(export, serve, tmp_path):
    lines = [s for s, _ in toy_data.make_pairs(400, seed=12)]
    lines.insert(200, "")
    result = translate([f"--model={export}", f"--input={write_lines(tmp_path / 'in', lines)}",
                        "--scores", "--window=50", "--progress_seconds=0.001"])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = result.stdout.split("\n")
    assert rows.pop() == "" and len(rows) == len(lines)
    for row, (text, score) in zip(rows, direct(serve, lines)):
        shown, translation = row.split("\t", 1)
        assert re.fullmatch(r"-?\d+\.\d{4}", shown), row
        assert translation == text
        assert abs(float(shown) - score) <= 6e-5, (row, score)
    assert rows[200] == "0.0000\t"
    assert "s2s-translate" not in result.stdout
    progress = ours(result.stderr)
    assert len(progress) >= 3, result.stderr[-3000:]
    counts = [PROGRESS.fullmatch(line).groups() for line in progress[:-1]]
    assert all(total == "401" for _, total in counts)
    assert [int(done) for done, _ in counts] == sorted({int(done) for done, _ in counts})
    assert SUMMARY.fullmatch(progress[-1]).group(1) == "401"


def test_a_failed_run_leaves_the_output_file_as_it_was(export, tmp_path):
    out = tmp_path / "out" / "hyp.txt"
    out.parent.mkdir()
    out.write_text("old content\n")
    infile = tmp_path / "bad.txt"
    infile.write_bytes(b"a b c\n" * 30 + b"ab \xff cd\n" + b"a b\n" * 5)
    result = translate([f"--model={export}", f"--input={infile}", f"--output={out}",
                        "--window=10"])
    assert result.returncode == 2
    assert ours(result.stderr) == [f"s2s-translate: error: {infile} line 31 is not UTF-8: "
                                   "invalid start byte"]
    assert out.read_text() == "old content\n"
    assert os.listdir(out.parent) == ["hyp.txt"]


@pytest.mark.parametrize("flag,message", [
    ("--output=/nonexistent/s2s/hyp.txt",
     "cannot write /nonexistent/s2s/hyp.txt: No such file or directory"),
    ("--output={tmp}", "cannot write {tmp}: Is a directory"),
    ("--batch_size=0", "flag --batch_size=0: 0 is not a positive integer"),
    ("--window=-3", "flag --window=-3: -3 is not a positive integer"),
])
def test_a_bad_flag_is_one_error_line_and_exit_2(export, tmp_path, flag, message):
    result = translate([f"--model={export}", flag.format(tmp=tmp_path)], input="a b\n")
    assert result.returncode == 2, result.stderr[-3000:]
    assert ours(result.stderr) == [f"s2s-translate: error: {message.format(tmp=tmp_path)}"]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert os.listdir(tmp_path) == []


def test_nbest_lists_each_lines_hypotheses_best_first_numbered_by_input_line(export, tmp_path):
    nbest = export_lib.load_translator(export, signature=export_lib.NBEST_SIGNATURE)
    lines = SMALL[:3] + [""] + SMALL[3:5]
    beam = export_lib.read_manifest(export)["beam_size"]
    result = translate([f"--model={export}", f"--nbest={beam}", "--batch_size=2"],
                       input="".join(line + "\n" for line in lines))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    numbers = [int(number) for number, _, _ in rows]
    assert sorted(set(numbers)) == list(range(1, len(lines) + 1)) and numbers == sorted(numbers)
    assert [row[1:] for row in rows if row[0] == "4"] == [["0.0000", ""]]  # the blank line
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        expected = nbest(inputs=tf.constant([line]))
        want = [(t.decode(), round(float(s), 4)) for t, s in
                zip(expected["translations"].numpy()[0], expected["scores"].numpy()[0])
                if s > -1e8]
        got = [(text, float(score)) for n, score, text in rows if int(n) == number]
        assert [t for t, _ in got] == [t for t, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-4)
        assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
    assert len(rows) > len(lines)  # some line has more than one hypothesis
    too_many = translate([f"--model={export}", "--nbest=9"], input="abc\n")
    assert too_many.returncode == 2 and ours(too_many.stderr) == [
        f"s2s-translate: error: --nbest=9 is more than {export}'s beam size {beam}: export "
        "with --beam_size=9"]
