"""launch/eval_records.py: metrics.jsonl rows are added once and never rewritten; "best"."""

import json

import pytest

from launch import eval_records


def row(step, bleu=30.0, **extra):
    return {"step": step, "split": "dev", "beam_size": 4, "alpha": 0.6, "averaged": 1,
            "bleu": bleu, **extra}


def test_a_measurement_is_appended_once_and_earlier_bytes_stay_as_they_were(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    handwritten = '{"step": 100, "bleu": 1.0,   "note": "spacing kept"}\n'
    open(path, "w").write(handwritten)
    assert eval_records.append_metrics(path, row(200))
    assert not eval_records.append_metrics(path, row(200, bleu=99.0))  # same measurement
    assert eval_records.append_metrics(path, row(200, beam_size=8))  # another measurement
    text = open(path).read()
    assert text.startswith(handwritten)
    assert [(r["step"], r["beam_size"], r["bleu"]) for r in
            map(json.loads, text.splitlines()[1:])] == [(200, 4, 30.0), (200, 8, 30.0)]


def test_readers_keep_the_first_row_of_a_repeated_measurement(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in
                            [row(200, bleu=10.0), row(400), row(200, bleu=11.0)]) + "\n")
    assert [(r["step"], r["bleu"]) for r in eval_records.read_metrics(str(path))] == [
        (200, 10.0), (400, 30.0)]
    assert eval_records.read_metrics(str(tmp_path / "absent.jsonl")) == []


def test_a_line_that_is_not_a_row_is_an_error_naming_the_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(row(200)) + "\n" + '{"step": 4' + "\n")
    with pytest.raises(eval_records.MetricsFileError, match=r"metrics.jsonl line 2 "):
        eval_records.read_metrics(str(path))


def test_best_follows_the_metric_direction_and_keeps_the_earliest_of_equals():
    rows = [row(100, bleu=20.0, wer=30.0), row(200, bleu=25.0, wer=28.0),
            row(300, bleu=25.0, wer=28.0), row(400, bleu=24.0, wer=29.0)]
    bleu = eval_records.best_metric(metrics=("bleu", "chrf"))
    wer = eval_records.best_metric(metrics=("wer", "per", "bleu"))
    assert (bleu.name, bleu.higher_is_better, wer.name, wer.higher_is_better) == (
        "bleu", True, "wer", False)
    assert bleu.best(rows)["step"] == 200 and wer.best(rows)["step"] == 200
    xent = eval_records.best_metric("xent", metrics=("bleu",))
    assert xent.best([row(1, xent=2.0), row(2, xent=1.5), row(3)])["step"] == 2
    assert bleu.better(rows[0], None) and bleu.better(rows[0], {"step": 9})
    assert not bleu.better(rows[2], rows[1])
    assert bleu.best([]) is None


def test_unknown_or_unmeasured_best_metrics_are_refused():
    with pytest.raises(ValueError, match="'rouge' is not one of"):
        eval_records.best_metric("rouge", metrics=("bleu",))
    with pytest.raises(ValueError, match="'wer' is not measured: add it to "
                                         "config.eval.metrics"):
        eval_records.best_metric("wer", metrics=("bleu", "chrf"))
