"""HTML pieces of the report: the per-sentence analysis of one split, word differences,
and the run's config and data. Every text from a file goes through esc()."""

import difflib
import json

from launch import report_analysis as analysis
from launch import report_svg as svg
from launch.report_svg import esc, fmt

SAMPLES = 10  # worst and best sentences shown per split
LABELS = {"bleu": "BLEU", "chrf": "chrF", "ter": "TER", "rouge1": "ROUGE-1",
          "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "wer": "word error rate (%)",
          "per": "phoneme error rate (%)", "xent": "teacher-forced cross-entropy",
          "token_accuracy": "token accuracy (%)", "loss": "training loss",
          "dev_loss": "dev loss (teacher-forced, trainer)"}
# config.json fields worth seeing without opening the full config
CONFIG_HIGHLIGHTS = ("model.name", "model.num_encoder_layers", "model.num_decoder_layers",
                     "model.d_model", "model.num_heads", "data.tokens_per_batch",
                     "optimizer.learning_rate", "optimizer.schedule", "train.num_steps",
                     "train.mixed_precision", "decode.beam_size", "eval.metrics")


def label(name: str) -> str:
    return LABELS.get(name, name)


def table(headers: list[str], rows: list[list[str]], *, cls: str = "") -> str:
    """A table whose cells are already HTML (callers escape what they put in)."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def diff_html(reference: str, hypothesis: str, *, unit: str = "words") -> tuple[str, str]:
    """(reference, hypothesis) as HTML: reference words the hypothesis lacks in <del>,
    hypothesis words the reference lacks in <ins>; the rest plain. Characters instead of
    words for text without spaces between words."""
    def tokens(text):
        return list(text) if unit == "characters" else text.split()
    joiner = "" if unit == "characters" else " "
    ref, hyp = tokens(reference), tokens(hypothesis)
    ref_html, hyp_html = [], []
    matcher = difflib.SequenceMatcher(None, ref, hyp, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        ref_part, hyp_part = esc(joiner.join(ref[i1:i2])), esc(joiner.join(hyp[j1:j2]))
        if op == "equal":
            ref_html.append(ref_part)
            hyp_html.append(hyp_part)
            continue
        if i2 > i1:
            ref_html.append(f"<del>{ref_part}</del>")
        if j2 > j1:
            hyp_html.append(f"<ins>{hyp_part}</ins>")
    return joiner.join(ref_html), joiner.join(hyp_html)


def length_html(sentences: list, *, split: str) -> str:
    unit = analysis.length_unit([s.source for s in sentences])
    buckets = analysis.scores_by_length(sentences, unit=unit)
    names = list(sentences[0].scores)
    labels = [str(b.low) if b.low == b.high else f"{b.low}-{b.high}" for b in buckets]
    chart = svg.bar_chart(name="length", title=f"{split}: sentence score by source length",
                          labels=labels, series={label(n): [b.means[n] for b in buckets]
                                                 for n in names},
                          y_label="mean sentence score", x_label=f"source {unit}",
                          y_max=100.0)
    rows = [[esc(lab), str(b.count)] + [esc(fmt(b.means[n])) for n in names]
            + [esc(f"{b.length_ratio:.2f}")] for lab, b in zip(labels, buckets)]
    return (f"<h3>By source length</h3>{chart}"
            + table([f"source {unit}", "lines"] + [esc(label(n)) for n in names]
                    + ["output / reference words"], rows, cls="length"))


def frequency_html(sentences: list, *, counts, counted_over: str, split: str) -> str:
    buckets = analysis.frequency_accuracy(sentences, counts)
    chart = svg.bar_chart(
        name="frequency", title=f"{split}: word accuracy by frequency",
        labels=[b.label for b in buckets],
        series={"precision": [b.precision for b in buckets],
                "recall": [b.recall for b in buckets],
                "F": [b.f_measure for b in buckets]},
        y_label="% of words", x_label=f"frequency in {counted_over}", y_max=100.0)
    rows = [[esc(b.label), str(b.reference_words), str(b.hypothesis_words),
             f"{b.precision:.1f}", f"{b.recall:.1f}", f"{b.f_measure:.1f}"] for b in buckets]
    return (f"<h3>By target word frequency</h3><p class=\"hint\">Words counted over "
            f"{esc(counted_over)}; a word is right when the hypothesis and the reference "
            f"of its line both have it.</p>{chart}"
            + table(["frequency", "reference words", "output words", "precision",
                     "recall", "F"], rows, cls="frequency"))


def samples_html(sentences: list, *, kind: str, unit: str) -> str:
    """The sentences as table rows, differences from the reference marked."""
    names = list(sentences[0].scores) if sentences else []
    rows = []
    for s in sentences:
        ref_html, hyp_html = diff_html(s.reference, s.hypothesis, unit=unit)
        name = s.file.replace("\\", "/").rsplit("/", 1)[-1]  # the full path in its tooltip
        where = f"{name}:{s.line}" if name else (str(s.line) if s.line else "")
        scores = " ".join(f"{esc(n)} {esc(fmt(s.scores[n]))}" for n in names)
        rows.append(f'<tr class="sample" data-line="{s.line}"><td class="where" '
                    f'title="{esc(s.file)}">{esc(where)}'
                    f'</td><td class="score">{scores}</td><td>{esc(s.source)}</td>'
                    f'<td class="ref">{ref_html}</td><td class="hyp">{hyp_html}</td></tr>')
    return (f'<table class="samples {esc(kind)}"><thead><tr><th>line</th><th>score</th>'
            '<th>source</th><th>reference</th><th>output</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


def split_html(lines, *, split: str, counts, counted_over: str) -> str:
    """Length, frequency and sample sections of one split's hyp-<step>.tsv."""
    sentences = lines.sentences
    facts = f"{len(sentences)} scored lines"
    if lines.dropped:
        facts += f", {lines.dropped} dropped in preprocessing (not scored)"
    if lines.malformed:
        facts += (f", {len(lines.malformed)} malformed rows skipped (first at line "
                  f"{lines.malformed[0]})")
    head = f'<p class="hint">{esc(lines.path)}: {esc(facts)}.</p>'
    if not sentences:
        return head + '<p class="note">No scored lines.</p>'
    unit = analysis.length_unit([s.reference for s in sentences])
    worst, best = analysis.extremes(sentences, count=SAMPLES)
    legend = ('<p class="hint">In the reference, <del>words the output misses</del>; in the '
              'output, <ins>words the reference does not have</ins>.</p>')
    return (head + '<div class="charts"><div class="panel">'
            + length_html(sentences, split=split) + '</div><div class="panel">'
            + frequency_html(sentences, counts=counts, counted_over=counted_over, split=split)
            + "</div></div>"
            + f"<h3>Worst {len(worst)}</h3>{legend}"
            + samples_html(worst, kind="worst", unit=unit)
            + f"<h3>Best {len(best)}</h3>" + samples_html(best, kind="best", unit=unit))


def flatten(config: dict, prefix: str = "") -> dict:
    """{"model": {"d_model": 32}} -> {"model.d_model": 32}."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_html(config: dict | None) -> str:
    if config is None:
        return '<p class="note">No config.json.</p>'
    flat = flatten(config)
    def shown(value):
        return value if isinstance(value, str) else json.dumps(value)
    rows = [[esc(key), esc(shown(flat[key]))] for key in CONFIG_HIGHLIGHTS if key in flat]
    every = [[esc(key), esc(shown(value))] for key, value in sorted(flat.items())]
    return (table(["config", "value"], rows, cls="config")
            + f"<details><summary>all {len(every)} config fields</summary>"
            + table(["config", "value"], every, cls="config-all") + "</details>")


def metadata_html(metadata: dict | None, *, data_dir: str | None) -> str:
    if metadata is None:
        return '<p class="note">No data metadata.</p>'
    splits = metadata.get("splits", {})
    rows = []
    for split, counts in splits.items():
        dropped = counts.get("dropped", {})
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(dropped.items()) if v) or "none"
        rows.append([esc(split), esc(counts.get("read", "?")), esc(counts.get("written", "?")),
                     esc(sum(v for v in dropped.values() if isinstance(v, int))),
                     esc(reasons)])
    tokenizer = metadata.get("tokenizer", {})
    facts = [("data dir", data_dir), ("tokenizer", tokenizer.get("path")),
             ("model type", tokenizer.get("model_type")),
             ("shared vocabulary", tokenizer.get("shared")),
             ("vocabulary size (source / target)",
              f"{metadata.get('source_vocab_size', '?')} / "
              f"{metadata.get('target_vocab_size', '?')}"),
             ("sha256", tokenizer.get("sha256")), ("sources", metadata.get("sources")),
             ("created", metadata.get("created_at"))]
    facts_html = table(["data", ""], [[esc(k), esc(v if isinstance(v, str) else
                                                   json.dumps(v))]
                                      for k, v in facts if v is not None], cls="data")
    return (table(["split", "read", "written", "dropped", "dropped by reason"], rows,
                  cls="splits") + facts_html)
