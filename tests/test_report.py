"""The evaluation report: its pure pieces, then a page from a real tiny run in Chromium."""

import html.parser
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from configs import tiny
from launch import eval_lines, evaluator, report, report_inputs, report_sections, report_svg
from launch import report_analysis as analysis
from launch import trainer

BIN = os.path.dirname(sys.executable)
CHROMIUM = "/usr/bin/chromium"  # Debian's package; `make test` installs it


def sentence(source, reference, hypothesis, line=1, **scores):
    return analysis.Sentence("t.tsv", line, source, reference, hypothesis,
                             scores or {"chrf": 50.0})


# --------------------------------------------------------------------------------------------
# Pure pieces


def test_length_buckets_cut_at_quantiles_and_cover_every_length_once():
    lengths = [1] * 10 + [2] * 10 + [3] * 10 + list(range(4, 34))
    buckets = analysis.length_buckets(lengths, max_buckets=4)
    assert buckets == [(1, 2), (3, 3), (4, 18), (19, 33)]  # 20, 10, 15, 15 lengths
    assert analysis.length_buckets([5, 5, 5]) == [(5, 5)]
    assert analysis.length_buckets([]) == []
    for lengths in ([3, 1, 2], [7, 7, 7, 8], list(range(100)) + [400]):
        buckets = analysis.length_buckets(lengths)
        assert buckets[0][0] == min(lengths) and buckets[-1][1] == max(lengths)
        assert all(a[1] + 1 == b[0] for a, b in zip(buckets, buckets[1:]))
        assert sum(any(lo <= n <= hi for lo, hi in buckets) for n in lengths) == len(lengths)


def test_scores_by_length_average_each_bucket_and_measure_output_length():
    sentences = [sentence("a b", "X Y", "X", chrf=40.0), sentence("c d", "X Y", "X Y Z",
                                                                   chrf=60.0),
                 sentence("a b c d e f", "X Y Z W", "X Y", chrf=10.0)]
    buckets = analysis.scores_by_length(sentences, unit="words", max_buckets=2)
    assert [(b.low, b.high, b.count) for b in buckets] == [(2, 2, 2), (3, 6, 1)]
    assert buckets[0].means == {"chrf": 50.0} and buckets[1].means == {"chrf": 10.0}
    assert buckets[0].length_ratio == pytest.approx(4 / 4)
    assert buckets[1].length_ratio == pytest.approx(2 / 4)


def test_length_unit_is_characters_where_spaces_do_not_separate_words():
    assert analysis.length_unit(["the cat sat", "a dog"]) == "words"
    assert analysis.length_unit(["p i p e", "c a t"]) == "characters"  # spelled-out G2P
    assert analysis.length_unit(["我喜欢猫", "今天很好"]) == "characters"
    assert analysis.text_length("p i p e", "characters") == 4
    assert analysis.text_length("我喜欢猫", "characters") == 4


def test_frequency_buckets_are_log_scale_and_labelled():
    assert [analysis.frequency_bucket(n) for n in (0, 1, 2, 4, 5, 99, 100, 10**6)] == \
        [0, 1, 2, 2, 3, 4, 5, 7]
    assert [analysis.frequency_label(i) for i in range(8)] == \
        ["0", "1", "2-4", "5-9", "10-99", "100-999", "1000-9999", "10000+"]


def test_frequency_accuracy_is_bag_of_words_precision_and_recall_per_bucket():
    counts = {"the": 100, "cat": 1, "sat": 3}  # "mat" and "hat" never seen
    sentences = [sentence("", "the cat sat on the mat", "the cat sat the hat"),
                 sentence("", "the the", "the")]
    buckets = analysis.frequency_accuracy(sentences, counts)
    by_label = {b.label: b for b in buckets}
    assert [b.label for b in buckets] == ["0", "1", "2-4", "100-999"]  # no empty bucket
    # unseen: reference has "on", "mat" (0 matched), output has "hat" (0 matched)
    assert (by_label["0"].reference_words, by_label["0"].hypothesis_words) == (2, 1)
    assert by_label["0"].precision == by_label["0"].recall == by_label["0"].f_measure == 0
    assert (by_label["1"].precision, by_label["1"].recall) == (100.0, 100.0)  # "cat"
    # "the": reference 2 + 2, output 2 + 1, matched min(2,2) + min(2,1) = 3
    the = by_label["100-999"]
    assert (the.reference_words, the.hypothesis_words) == (4, 3)
    assert the.precision == pytest.approx(100.0) and the.recall == pytest.approx(75.0)
    assert the.f_measure == pytest.approx(2 * 100 * 75 / 175)
    assert (by_label["2-4"].precision, by_label["2-4"].recall) == (100.0, 100.0)  # "sat"


def test_worst_and_best_follow_the_metric_direction_and_input_order_on_ties():
    chrf = [sentence("", "", "", line=i, chrf=s) for i, s in enumerate([50, 10, 90, 10], 1)]
    worst, best = analysis.extremes(chrf, count=2)
    assert [s.line for s in worst] == [2, 4] and [s.line for s in best] == [3, 1]
    g2p = [sentence("", "", "", line=i, wer=w, per=p)
           for i, (w, p) in enumerate([(100, 20), (0, 0), (100, 50), (100, 20)], 1)]
    worst, best = analysis.extremes(g2p, count=3)
    assert [s.line for s in worst] == [3, 1, 4] and [s.line for s in best] == [2, 1, 4]


def test_diff_marks_missing_reference_words_and_extra_output_words_escaped():
    ref, hyp = report_sections.diff_html("the cat sat on <the> mat", "the dog sat on <the> mat")
    assert ref == "the <del>cat</del> sat on &lt;the&gt; mat"
    assert hyp == "the <ins>dog</ins> sat on &lt;the&gt; mat"
    ref, hyp = report_sections.diff_html("a b c", "a b c d e")
    assert (ref, hyp) == ("a b c", "a b c <ins>d e</ins>")
    ref, hyp = report_sections.diff_html("猫が好き", "犬が好き", unit="characters")
    assert (ref, hyp) == ("<del>猫</del>が好き", "<ins>犬</ins>が好き")


def test_line_chart_has_a_point_per_measurement_with_its_value():
    chart = report_svg.line_chart(metric="bleu", title="BLEU <&>", y_label="bleu",
                                  series={"dev": [(100, 1.5), (200, 3.0)],
                                          "te<st>": [(200, 2.0)]})
    assert chart.startswith('<svg class="curve" data-metric="bleu"')
    assert chart.count('<circle class="point"') == 3
    assert 'data-series="dev" data-step="200" data-value="3.0"' in chart
    assert "te&lt;st&gt;" in chart and "<st>" not in chart and "BLEU &lt;&amp;&gt;" in chart
    assert report_svg.nice_ticks(0.3, 9.2) == [0, 2, 4, 6, 8, 10]
    assert report_svg.nice_ticks(5, 5) == [4, 4.5, 5, 5.5, 6]


def test_the_tsv_the_evaluator_writes_parses_back_with_dropped_and_malformed_lines(tmp_path):
    lines = [eval_lines.InputLine("in.tsv", 1, 0, "A B"),
             eval_lines.InputLine("in.tsv", 2, eval_lines.DROPPED, ""),
             eval_lines.InputLine("in.tsv", 3, 1, "C")]
    text = eval_lines.SplitText(sources=["a b", "c"], references=[["A B"], ["C"]],
                                source_ids=[np.array([1])] * 2, lines=lines, ordered=True)
    _, tsv = eval_lines.write_hypotheses(str(tmp_path), step=5, text=text,
                                         hypotheses=["A B", "D"],
                                         scores={"wer": [0.0, 100.0], "per": [0.0, 100.0]})
    with open(tsv, "a") as f:
        f.write("in.tsv\t4\tonly three\n")
    parsed = report_inputs.parse_lines_tsv(open(tsv).read(), path=tsv)
    assert parsed.score_names == ["wer", "per"]
    assert parsed.sentences == [analysis.Sentence("in.tsv", 1, "a b", "A B", "A B",
                                                  {"wer": 0.0, "per": 0.0}),
                                analysis.Sentence("in.tsv", 3, "c", "C", "D",
                                                  {"wer": 100.0, "per": 100.0})]
    assert (parsed.dropped, parsed.malformed) == (1, [5])
    with pytest.raises(ValueError, match="line 1"):
        report_inputs.parse_lines_tsv("a\tb\n", path="x.tsv")


def test_training_loss_is_read_from_tensor_summaries_and_a_rewritten_step_keeps_the_last(
        tmp_path):
    for run, losses in enumerate(({10: 5.0, 20: 4.0}, {20: 3.5, 30: 3.0})):
        writer = tf.summary.create_file_writer(str(tmp_path / "train"), filename_suffix=f".{run}")
        with writer.as_default():
            for step, loss in losses.items():
                tf.summary.scalar("loss", loss, step=step)
                tf.summary.scalar("learning_rate", 0.1, step=step)
        writer.close()
    notes = []
    scalars = report_inputs.read_train_scalars(str(tmp_path), notes)
    assert scalars == {"loss": [(10, 5.0), (20, 3.5), (30, 3.0)]} and notes == []


def write_fake_run(workdir, *, hostile="<script>alert(1)</script>"):
    """A workdir with config, dev metrics at two steps, a tsv for the latest and a test
    split evaluated before per-line files existed."""
    os.makedirs(workdir / "eval" / "dev")
    os.makedirs(workdir / "eval" / "test")
    (workdir / "config.json").write_text(json.dumps({"model": {"name": hostile}}))
    rows = [{"step": s, "split": "dev", "beam_size": 4, "alpha": 0.6, "bleu": b, "chrf": c,
             "xent": x} for s, b, c, x in ((100, 1.0, 20.0, 3.0), (200, 5.0, 40.0, 2.0))]
    (workdir / "eval" / "dev" / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
    (workdir / "eval" / "dev" / "hyp-200.tsv").write_text(
        "file\tline\tsource\treference\thypothesis\tchrf\n"
        f"f\t1\t{hostile}\tthe cat\tthe dog\t30.00\nf\t2\t\t\t\t\nf\t3\tb c\tB C\tB C\t100.00\n")
    (workdir / "eval" / "test" / "metrics.jsonl").write_text(json.dumps(
        {"step": 200, "split": "test", "bleu": 4.0}) + "\n")
    (workdir / "eval" / "test" / "hyp-200.txt").write_text("x\n")


def test_every_file_text_is_escaped_and_missing_inputs_are_notes(tmp_path):
    workdir = tmp_path / "work"
    write_fake_run(workdir)
    page = open(report.write_report(workdir=str(workdir))).read()
    assert "<script" not in page and page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 2
    assert not re.search(r"\b(src|href)=|url\(|@import|<link", page)  # self-contained
    assert 'data-metric="bleu"' in page and 'data-metric="xent"' in page
    assert "no training summaries" in page  # no events: a note, the page still written
    assert "config.json records none" in page
    assert "No hyp-200.tsv (only hyp-200.txt" in page  # the older test split
    assert page.count('class="sample"') == 4  # 2 scored lines, in worst and in best
    assert "1 dropped in preprocessing" in page


def test_the_data_dir_recorded_in_config_is_read_and_a_failed_refresh_only_warns(
        tmp_path, caplog):
    workdir, data = tmp_path / "work", tmp_path / "data"
    write_fake_run(workdir)
    data.mkdir()
    (data / "metadata.json").write_text(json.dumps({
        "splits": {"dev": {"read": 7, "written": 5, "dropped": {"empty": 2, "too_long": 0}}},
        "tokenizer": {"path": "spm<1>.model", "model_type": "unigram"}}))
    (workdir / "config.json").write_text(json.dumps({"data_dir": str(data)}))
    page = open(report.refresh(workdir=str(workdir))).read()
    assert "config.json records none" not in page and "no data metadata" not in page.lower()
    assert "<td>dev</td><td>7</td><td>5</td><td>2</td><td>empty 2</td>" in page
    assert "spm&lt;1&gt;.model" in page
    with caplog.at_level("WARNING"):
        assert report.refresh(workdir=str(tmp_path / "missing")) is None
    assert "could not write the evaluation report" in caplog.text


def test_a_diverged_value_is_left_off_the_chart():
    chart = report_svg.line_chart(metric="loss", title="loss", y_label="nats",
                                  series={"loss": [(1, 2.0), (2, float("nan")), (3, 1.0)]})
    assert chart.count("<circle") == 2 and "nan" not in chart


def test_report_cli_writes_the_page_and_prints_its_path(tmp_path):
    workdir = tmp_path / "work"
    write_fake_run(workdir)
    result = run_cli([f"--workdir={workdir}"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(workdir / "eval" / "report.html")
    assert (workdir / "eval" / "report.html").exists()


@pytest.mark.parametrize("argv, message", [
    (["--workdir=/nonexistent/s2s/w"], "workdir /nonexistent/s2s/w does not exist"),
    ([], "--workdir"),
    (["--workdir=/tmp", "--no_such_flag=1"], "no_such_flag"),
    (["--workdir=/tmp", "stray"], "unexpected argument(s): stray"),
])
def test_report_cli_mistakes_are_one_line_and_exit_2(argv, message):
    result = run_cli(argv)
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith("s2s-report: error: ")
    assert message in errors[0] and "Traceback" not in result.stderr


def run_cli(argv):
    return subprocess.run([os.path.join(BIN, "s2s-report"), *argv], capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


# --------------------------------------------------------------------------------------------
# A real run, rendered by a browser


@pytest.fixture(scope="module")
def evaluated(data_dir, tmp_path_factory):
    """A tiny model trained 60 steps on the toy data (conftest), dev scored at steps 30
    and 60 and test at 60 by the real evaluator; returns (data_dir, workdir)."""
    workdir = str(tmp_path_factory.mktemp("report") / "work")
    config = tiny.get_config()
    config.train.num_steps = 60
    config.train.checkpoint_every_steps = 30
    config.train.log_every_steps = 10
    trainer.train(config, workdir=workdir, data_dir=data_dir,
                  strategy=tf.distribute.get_strategy())
    for split, step in (("dev", 30), ("dev", 60), ("test", 60)):
        evaluator.evaluate(workdir=workdir, data_dir=data_dir, split=split, export_best=False,
                           checkpoint=os.path.join(workdir, "checkpoints", f"ckpt-{step}"))
    return data_dir, workdir


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []
        self.text = ""

    def find_all(self, tag, **attrs):
        found = []
        for child in self.children:
            if child.tag == tag and all(child.attrs.get(k.replace("_", "-")) == v
                                        for k, v in attrs.items()):
                found.append(child)
            found += child.find_all(tag, **attrs)
        return found

    def classes(self):
        return self.attrs.get("class", "").split()


class DomTree(html.parser.HTMLParser):
    """The element tree of Chromium's serialized DOM."""
    VOID = {"meta", "br", "hr", "img", "input", "link", "wbr", "col", "source"}

    def __init__(self, text):
        super().__init__()
        self.root = self.current = Node("#root", {}, None)
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, attrs, self.current)
        self.current.children.append(node)
        if tag not in self.VOID:
            self.current = node

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None:
            self.current = node.parent

    def handle_data(self, data):
        self.current.text += data


def rendered_dom(path: str) -> Node:
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--dump-dom", f"file://{path}"],
                            capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and "</html>" in result.stdout, result.stderr[-2000:]
    return DomTree(result.stdout).root


def test_report_of_a_real_run_renders_curves_with_their_points_and_sample_rows(evaluated):
    data_dir, workdir = evaluated
    path = report.write_report(workdir=workdir, data_dir=data_dir)
    assert path == os.path.join(workdir, "eval", "report.html")
    dom = rendered_dom(path)
    curves = {svg.attrs["data-metric"]: svg for svg in dom.find_all("svg")
              if "curve" in svg.classes()}
    assert {"loss", "bleu", "chrf", "xent", "token_accuracy"} <= set(curves)
    loss_points = curves["loss"].find_all("circle")
    assert [p.attrs["data-step"] for p in loss_points] == [str(s) for s in range(10, 61, 10)]
    bleu = curves["bleu"].find_all("circle")
    assert sorted((p.attrs["data-series"], p.attrs["data-step"]) for p in bleu) == \
        [("dev", "30"), ("dev", "60"), ("test", "60")]
    rows = {json.loads(line)["step"]: json.loads(line) for line in
            open(os.path.join(workdir, "eval", "dev", "metrics.jsonl"))}
    for point in curves["chrf"].find_all("circle", data_series="dev"):
        assert float(point.attrs["data-value"]) == pytest.approx(
            rows[int(point.attrs["data-step"])]["chrf"])
        assert 0 <= float(point.attrs["cx"]) <= report_svg.WIDTH
    for split in ("dev", "test"):
        section = dom.find_all("section", data_split=split)[0]
        worst = [t for t in section.find_all("table") if "worst" in t.classes()][0]
        samples = worst.find_all("tr", **{"class": "sample"})
        assert len(samples) == report_sections.SAMPLES  # 32 toy lines, 10 shown
        cells = samples[0].find_all("td")
        assert len(cells) == 5 and cells[2].text.strip()  # its source is there
        bars = [s for s in section.find_all("svg") if "bars" in s.classes()]
        assert {b.attrs["data-analysis"] for b in bars} == {"length", "frequency"}
        assert all(b.find_all("rect", **{"class": "bar"}) for b in bars)
    # Word frequencies from the toy data's 512 training targets, not the references.
    assert "512 training targets" in open(path).read()
