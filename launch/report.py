"""WORKDIR/eval/report.html: one self-contained page (inline CSS and SVG, no scripts or
network) with the run's curves, each split's latest per-sentence analysis, and its
config and data, so a run can be judged by looking rather than reading logs.

write_report() reads only files (metrics.jsonl, hyp-<step>.tsv, the trainer's events,
config.json, metadata.json); a missing one is a note on the page, never an error.
"""

import datetime
import os

import tensorflow as tf
from absl import logging

from launch import report_analysis as analysis
from launch import report_inputs as inputs
from launch import report_sections as sections
from launch import report_svg as svg
from launch import shared_files
from launch.metrics import HIGHER_IS_BETTER
from launch.report_svg import esc, fmt
from pipeline import features

REPORT_FILE = "report.html"
SETTINGS = ("beam_size", "alpha", "averaged")  # a metrics row's decoding settings

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
 max-width:1400px;padding:16px 24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:4px 0}h2{font-size:18px;border-bottom:1px solid #ccc;
 padding-bottom:4px;margin-top:28px}h3{font-size:15px;margin:18px 0 6px}
.meta,.hint{color:#666}.note{background:#fff4d6;border-left:4px solid #e0a800;padding:6px 10px}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{background:#fff;border:1px solid #ddd;
 border-radius:6px;padding:10px 14px;min-width:180px}.card h3{margin:0 0 6px}
.card .value{font-size:20px;font-weight:600}.card .name{color:#666;font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:14px}svg{background:#fff;border:1px solid #ddd;
 border-radius:6px}.chart-title{font-size:13px;font-weight:600}.tick,.legend{font-size:10px;
 fill:#555}.axis-label{font-size:11px;fill:#333}.axis{stroke:#888}.gridline{stroke:#eee}
.empty{fill:#999;font-size:12px}
table{border-collapse:collapse;margin:8px 0;background:#fff}th,td{border:1px solid #ddd;
 padding:3px 8px;text-align:left;vertical-align:top}th{background:#f0f0f0}
table.samples td{max-width:360px;word-wrap:break-word}td.where,td.score{white-space:nowrap;
 color:#555;font-size:12px}
del{background:#ffd6d6;color:#900;text-decoration:line-through}
ins{background:#ffe2b3;color:#7a4a00;text-decoration:none}
.panel{flex:1 1 440px;max-width:680px}details{margin:6px 0}
.delta{font-size:12px;margin-left:4px}.delta.good{color:#1a7f37}.delta.bad{color:#c62828}
"""


class ReportError(ValueError):
    """No report can be written (the workdir does not exist); the message says why."""


def series_name(split: str, row: dict, *, several: bool) -> str:
    """The split, plus the decoding settings when a split was scored with several."""
    if not several:
        return split
    extra = f" avg{row['averaged']}" if row.get("averaged", 1) > 1 else ""
    return f"{split} beam{row.get('beam_size')} a{row.get('alpha')}{extra}"


def metric_series(metrics: dict[str, list[dict]]) -> dict[str, dict[str, list]]:
    """metric -> series name -> [(step, value)], for every metric some row holds."""
    result: dict[str, dict[str, list]] = {}
    for split, rows in metrics.items():
        several = len({tuple(r.get(k) for k in SETTINGS) for r in rows}) > 1
        for row in rows:
            for name in HIGHER_IS_BETTER:
                if isinstance(row.get(name), (int, float)):
                    name_series = result.setdefault(name, {})
                    name_series.setdefault(series_name(split, row, several=several), []) \
                        .append((row["step"], float(row[name])))
    return {name: result[name] for name in HIGHER_IS_BETTER if name in result}


def curves_html(metrics: dict[str, list[dict]], train: dict[str, list]) -> str:
    """The training loss, then a chart per evaluation metric, each over steps."""
    charts = [svg.line_chart(metric=tag, title=sections.label(tag), series={tag: points},
                             y_label="nats per token") for tag, points in train.items()]
    for name, series in metric_series(metrics).items():
        direction = "higher is better" if HIGHER_IS_BETTER[name] else "lower is better"
        charts.append(svg.line_chart(metric=name, title=f"{sections.label(name)} ({direction})",
                                     series=series, y_label=name))
    if not charts:
        return '<p class="note">Nothing measured yet: no training summaries or metrics.</p>'
    return f'<div class="charts">{"".join(charts)}</div>'


def delta_html(name: str, latest: dict, previous: dict | None) -> str:
    """The change since the previous evaluation, green when it improved."""
    if previous is None or not isinstance(previous.get(name), (int, float)):
        return ""
    change = latest[name] - previous[name]
    better = change > 0 if HIGHER_IS_BETTER[name] else change < 0
    kind = "good" if better else ("bad" if change else "same")
    return (f'<span class="delta {kind}" title="since step {esc(previous["step"])}">'
            f'{"+" if change >= 0 else ""}{esc(fmt(round(change, 4)))}</span>')


def cards_html(metrics: dict[str, list[dict]]) -> str:
    """Per split: the latest step's scores at a glance, and their change since the
    evaluation before it (same decoding settings)."""
    cards = []
    for split, rows in metrics.items():
        if not rows:
            continue
        latest = max(rows, key=lambda r: r["step"])
        earlier = [r for r in rows if r["step"] < latest["step"]
                   and all(r.get(k) == latest.get(k) for k in SETTINGS)]
        previous = max(earlier, key=lambda r: r["step"]) if earlier else None
        values = "".join(f'<div><span class="value">{esc(fmt(latest[n]))}</span>'
                         f'{delta_html(n, latest, previous)} '
                         f'<span class="name">{esc(sections.label(n))}</span></div>'
                         for n in HIGHER_IS_BETTER if isinstance(latest.get(n), (int, float)))
        cards.append(f'<div class="card" data-split="{esc(split)}"><h3>{esc(split)}, step '
                     f'{esc(latest["step"])}</h3>{values}</div>')
    return f'<div class="cards">{"".join(cards)}</div>' if cards else ""


def latest_step(rows: list[dict], files: dict[int, set]) -> int | None:
    """The latest evaluated step: of the metrics rows, else of the hypothesis files."""
    steps = [r["step"] for r in rows] or list(files)
    return max(steps) if steps else None


def word_frequencies(data_dir: str | None, sentences: list, cache: dict):
    """(counts, what they were counted over): the training targets where the data dir
    has them (read once per report), else this split's references."""
    if "train" not in cache:
        cache["train"] = inputs.read_train_targets(data_dir) if data_dir else []
    if cache["train"]:
        if "counts" not in cache:
            cache["counts"] = analysis.word_counts(cache["train"])
        first = "the first " if len(cache["train"]) >= inputs.MAX_TRAIN_TARGETS else ""
        return cache["counts"], f"{first}{len(cache['train'])} training targets"
    return analysis.word_counts(s.reference for s in sentences), "this split's references"


def split_section(*, workdir: str, split: str, rows: list[dict], data_dir: str | None,
                  cache: dict, notes: list[str]) -> str:
    """The per-sentence analysis of one split's latest evaluated step."""
    files = inputs.hypothesis_steps(workdir, split)
    step = latest_step(rows, files)
    head = f'<section class="split" id="split-{esc(split)}" data-split="{esc(split)}">'
    if step is None:
        return (f"{head}<h2>{esc(split)}</h2><p class=\"note\">No evaluation of this split "
                "yet.</p></section>")
    title = f"<h2>{esc(split)}: output at step {esc(step)}</h2>"
    if "tsv" not in files.get(step, set()):
        txt = ("only hyp-{0}.txt, written before per-line scores existed; run s2s-evaluate "
               "again on this checkpoint for the analysis" if "txt" in files.get(step, set())
               else "no hypothesis file").format(step)
        return (f'{head}{title}<p class="note">No hyp-{esc(step)}.tsv ({esc(txt)}): no '
                "per-sentence analysis for this split.</p></section>")
    lines = inputs.read_lines_tsv(os.path.join(workdir, inputs.EVAL_DIR, split,
                                               f"hyp-{step}.tsv"), notes)
    if lines is None:
        return f'{head}{title}<p class="note">hyp-{esc(step)}.tsv is unreadable.</p></section>'
    counts, over = word_frequencies(data_dir, lines.sentences, cache)
    return (head + title + sections.split_html(lines, split=split, counts=counts,
                                               counted_over=over) + "</section>")


def build_page(*, workdir: str, data_dir: str | None) -> str:
    """The whole report as one HTML string."""
    notes: list[str] = []
    config = inputs.read_json(os.path.join(workdir, "config.json"), notes,
                              what="run config")
    data_dir = data_dir or inputs.recorded_data_dir(config)
    metadata = None
    if data_dir:
        metadata = inputs.read_json(os.path.join(data_dir, features.METADATA_FILE), notes,
                                    what="data metadata")
    else:
        notes.append("no data dir given (--data_dir) and config.json records none: the "
                     "data's metadata is missing and word frequencies come from references")
    splits = inputs.eval_splits(workdir)
    if not splits:
        notes.append(f"no evaluations under {os.path.join(workdir, inputs.EVAL_DIR)}: run "
                     "s2s-evaluate")
    metrics = {split: inputs.read_split_metrics(workdir, split, notes) for split in splits}
    train = inputs.read_train_scalars(workdir, notes)
    cache: dict = {}
    split_parts = [split_section(workdir=workdir, split=split, rows=metrics[split],
                                 data_dir=data_dir, cache=cache, notes=notes)
                   for split in splits]
    notes_part = ('<ul class="notes">' + "".join(f'<li class="note">{esc(n)}</li>'
                                                 for n in notes) + "</ul>") if notes else ""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>s2s report: {esc(workdir)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>Evaluation report</h1><p class=\"meta\">workdir {esc(workdir)}"
            f"{' · data ' + esc(data_dir) if data_dir else ''} · written {esc(now)}</p>"
            f"</header>{notes_part}{cards_html(metrics)}"
            f'<section id="curves"><h2>Over training</h2>{curves_html(metrics, train)}'
            f"</section>{''.join(split_parts)}"
            f'<section id="run"><h2>Run</h2><div class="charts"><div class="panel">'
            f"{sections.config_html(config)}</div><div class=\"panel\">"
            f"{sections.metadata_html(metadata, data_dir=data_dir)}</div></div></section>"
            "</body></html>\n")


def write_report(*, workdir: str, data_dir: str | None = None) -> str:
    """Writes WORKDIR/eval/report.html atomically (a browser refreshing it never sees
    half a page) and returns its path; data_dir defaults to the one config.json records."""
    if not tf.io.gfile.isdir(workdir):
        raise ReportError(f"workdir {workdir} does not exist")
    page = build_page(workdir=workdir, data_dir=data_dir)
    directory = os.path.join(workdir, inputs.EVAL_DIR)
    tf.io.gfile.makedirs(directory)
    path = os.path.join(directory, REPORT_FILE)
    shared_files.write_text_atomically(path, page)
    return path


def refresh(*, workdir: str, data_dir: str | None = None) -> str | None:
    """write_report for the evaluator: the report is a view of the results, so a failure
    to write it is a warning, never a failed evaluation. Returns the path, or None."""
    try:
        return write_report(workdir=workdir, data_dir=data_dir)
    except Exception as error:  # pylint: disable=broad-except
        logging.warning("could not write the evaluation report in %s: %s", workdir, error)
        return None
