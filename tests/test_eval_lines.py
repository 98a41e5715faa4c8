"""The split as input lines: input order, dropped lines and the per-line files."""

import numpy as np

from launch import eval_lines

IDS = np.array([5, 1])


def test_examples_are_put_in_input_order_with_dropped_lines_filled_in():
    examples = [("b.tsv", 2, "y", "Y", IDS), ("a.tsv", 3, "x", "X", IDS),
                ("b.tsv", 1, "z", "Z", IDS), ("a.tsv", 1, "w", "W", IDS)]
    origins = [{"file": "b.tsv", "records": 3}, {"file": "a.tsv", "records": 3}]
    ordered = eval_lines.in_input_order(examples, origins)
    assert [(e[0], e[1], e[2]) for e in ordered] == [
        ("b.tsv", 1, "z"), ("b.tsv", 2, "y"), ("b.tsv", 3, None),
        ("a.tsv", 1, "w"), ("a.tsv", 2, None), ("a.tsv", 3, "x")]


def test_a_carved_split_keeps_its_lines_in_order_without_placeholders():
    examples = [("train.tsv", 40, "y", "Y", IDS), ("train.tsv", 7, "x", "X", IDS)]
    for origins in ([], [{"file": "train.tsv", "records": None}]):  # None: no line count
        ordered = eval_lines.in_input_order(examples, origins)
        assert [e[1] for e in ordered] == [7, 40]


def split_text():
    lines = [eval_lines.InputLine("t.tsv", 1, 0, "A\tB"),
             eval_lines.InputLine("t.tsv", 2, eval_lines.DROPPED, ""),
             eval_lines.InputLine("t.tsv", 3, 0, "other ref")]
    return eval_lines.SplitText(sources=["a b"], references=[["A\tB", "other ref"]],
                                source_ids=[IDS], lines=lines, ordered=True)


def test_the_files_have_a_line_per_input_line_and_tabs_cannot_break_a_row(tmp_path):
    text = split_text()
    txt, tsv = eval_lines.write_hypotheses(str(tmp_path), step=7, text=text,
                                           hypotheses=["A B"], scores={"chrf": [50.0]})
    assert open(txt).read() == "A B\n\nA B\n"
    rows = [line.split("\t") for line in open(tsv).read().splitlines()]
    assert rows == [["file", "line", "source", "reference", "hypothesis", "chrf"],
                    ["t.tsv", "1", "a b", "A B", "A B", "50.00"],
                    ["t.tsv", "2", "", "", "", ""],
                    ["t.tsv", "3", "a b", "other ref", "A B", "50.00"]]
    assert text.dropped == 1
