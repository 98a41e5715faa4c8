"""The model card published beside each model: data, configuration, metrics, date."""

import json

METRIC_NAMES = {"bleu": "BLEU", "chrf": "chrF", "wer": "WER (%)", "per": "PER (%)"}


def metrics_table(rows: dict[str, dict]) -> str:
    """rows: split -> metrics.jsonl row. One markdown row per split, one column per metric."""
    keys = [k for k in METRIC_NAMES if any(k in row for row in rows.values())]
    lines = ["| split | step | " + " | ".join(METRIC_NAMES[k] for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for split, row in rows.items():
        cells = [f"{row[k]:.2f}" if k in row else "n/a" for k in keys]
        lines.append(f"| {split} | {row.get('step', '?')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def data_section(*, data_dir: str, metadata: dict | None) -> str:
    if metadata is None:
        return f"Preprocessed data: `{data_dir or 'unknown'}` (metadata.json not available)."
    lines = [f"Preprocessed data: `{data_dir}`"]
    if metadata.get("sources"):
        lines.append(f"- Sources: `{json.dumps(metadata['sources'], sort_keys=True)}`")
    tokenizer = metadata.get("tokenizer", {})
    if tokenizer.get("shared", True):
        vocabulary = f"{metadata.get('vocab_size', '?')} SentencePiece pieces, shared"
    else:
        vocabulary = (f"separate SentencePiece models, source "
                      f"{metadata.get('source_vocab_size', '?')} and target "
                      f"{metadata.get('target_vocab_size', '?')} pieces")
    lines.append(f"- Vocabulary: {vocabulary}, tokenizer sha256 "
                 f"`{tokenizer.get('sha256', '?')}`")
    splits = metadata.get("splits", {})
    if splits:
        lines += ["", "| split | read | written | dropped |", "|---|---|---|---|"]
        for name, counts in splits.items():
            dropped = sum((counts.get("dropped") or {}).values())
            lines.append(f"| {name} | {counts.get('read', '?')} | {counts.get('written', '?')} "
                         f"| {dropped} |")
    return "\n".join(lines)


def render(*, version: str, published_at: str, workdir: str, data_dir: str,
           metadata: dict | None, config: dict, metrics: dict[str, dict], metric: str,
           previous: dict | None) -> str:
    """Markdown. `metrics`: split -> row; `previous`: the pointer this model replaces."""
    dev = metrics["dev"]
    name = METRIC_NAMES.get(metric, metric)
    if previous:
        why = (f"Its dev {name} {dev[metric]:.2f} beats {previous['metrics']['dev'][metric]:.2f} "
               f"of the model it replaces (`{previous['version']}`).")
    else:
        why = f"It is the first published model (dev {name} {dev[metric]:.2f})."
    signatures = sorted({row["bleu_signature"] for row in metrics.values()
                         if row.get("bleu_signature")})
    model = config.get("model", {})
    train = config.get("train", {})
    return "\n".join([
        f"# s2s-pipeline model `{version}`",
        "",
        f"Published {published_at} from `{workdir}` (checkpoint step {dev.get('step', '?')}). "
        + why,
        "",
        "## Data",
        "",
        data_section(data_dir=data_dir, metadata=metadata),
        "",
        "## Configuration",
        "",
        f"- Model: {model.get('name', '?')}; trained for {train.get('num_steps', '?')} steps",
        "",
        "```json",
        json.dumps(config, indent=2, sort_keys=True),
        "```",
        "",
        "## Metrics",
        "",
        metrics_table(metrics),
        "",
        *[f"sacreBLEU signature: `{s}`" for s in signatures],
        "",
        "## Files",
        "",
        "- `saved_model.pb`, `variables/`: TensorFlow SavedModel, strings in and out "
        "(`import tensorflow_text`, then `tf.saved_model.load(...)"
        ".signatures['serving_default'](inputs=tf.constant([...]))`); the directory above "
        "this version is a TF Serving `--model_base_path`",
        "- `warm_start/`: weights, config and tokenizers for "
        "`--config.train.init_from` (fine-tuning, retraining)",
        "- `metrics.json`: the metrics above, as JSON",
        "",
    ])
