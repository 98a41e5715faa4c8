"""The evaluation metrics by name: which a run computes (config.eval.metrics), which one
picks the exported checkpoint (config.eval.select_on) and its direction, and how each
corpus score is computed from its reference library (sacreBLEU, rouge-score).

references[i] holds every reference of hypothesis i. WER and PER follow the convention of
published CMUdict results: a word is right when it equals any of its references, and its
phoneme errors are the edits to the closest one, over that reference's length.
"""

import json

# Decoded metrics, computed on request; True where higher is better.
CORPUS_METRICS = {"bleu": True, "chrf": True, "ter": False, "rouge1": True, "rouge2": True,
                  "rougeL": True, "wer": False, "per": False}
# Teacher-forced metrics, computed on every evaluation.
TEACHER_FORCED = {"xent": False, "token_accuracy": True}
HIGHER_IS_BETTER = {**CORPUS_METRICS, **TEACHER_FORCED}
ROUGE = ("rouge1", "rouge2", "rougeL")
# Workdirs trained before config.eval existed: what the evaluator then computed.
LEGACY_DEFAULT, LEGACY_G2P = ("bleu", "chrf"), ("wer", "per", "bleu", "chrf")


class MetricsError(ValueError):
    """An unknown or unmeasured metric; the message names it and the choices."""


def parse_metrics(text) -> tuple[str, ...]:
    """config.eval.metrics ("bleu,chrf,ter", or a sequence) -> its names, checked."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in CORPUS_METRICS]
    if unknown or not names:
        raise MetricsError(f"config.eval.metrics: {', '.join(unknown) or 'nothing'} is not a "
                           f"metric; choose from {', '.join(CORPUS_METRICS)}")
    return tuple(dict.fromkeys(names))


def measured(metrics: tuple[str, ...]) -> tuple[str, ...]:
    """Every metric a metrics row holds: the decoded ones asked for and the teacher-forced."""
    return (*metrics, *TEACHER_FORCED)


def selection_metric(name: str, *, metrics: tuple[str, ...]) -> str:
    """`name` (config.eval.select_on or --best_metric), or by default the first of
    `metrics`; refused unless the evaluator measures it."""
    name = name or metrics[0]
    if name not in HIGHER_IS_BETTER:
        raise MetricsError(f"metric {name!r} is not one of {', '.join(HIGHER_IS_BETTER)}")
    if name not in measured(metrics):
        raise MetricsError(f"metric {name!r} is not measured: add it to config.eval.metrics "
                           f"(now {','.join(metrics)})")
    return name


def run_metrics(config, metadata: dict) -> tuple[tuple[str, ...], str]:
    """(metrics, select_on) of a run: its config.eval, or for a workdir trained before that
    existed, what the evaluator computed then (WER and PER first for CMUdict data)."""
    section = config.get("eval") if hasattr(config, "get") else None
    if section is not None and section.get("metrics"):
        return parse_metrics(section.metrics), section.get("select_on", "")
    legacy = "cmudict" in json.dumps(metadata.get("sources", ""))
    return (LEGACY_G2P if legacy else LEGACY_DEFAULT), ""


def corpus_scores(hypotheses: list[str], references: list[list[str]], *,
                  metrics: tuple[str, ...]) -> dict:
    """The requested corpus scores (0-100), with sacreBLEU signatures, and the counts."""
    result = {"num_sentences": len(references),
              "num_references": sum(len(refs) for refs in references)}
    sacre = [name for name in metrics if name in ("bleu", "chrf", "ter")]
    if sacre:
        import sacrebleu  # the [evaluate] extra
        streams = [[refs[k] if k < len(refs) else None for refs in references]
                   for k in range(max((len(refs) for refs in references), default=1))]
        classes = {"bleu": sacrebleu.metrics.BLEU, "chrf": sacrebleu.metrics.CHRF,
                   "ter": sacrebleu.metrics.TER}
        for name in sacre:
            metric = classes[name]()
            result[name] = metric.corpus_score(hypotheses, streams).score
            result[f"{name}_signature"] = str(metric.get_signature())
    if any(name in ROUGE for name in metrics):
        result.update(rouge(hypotheses, references,
                            names=[n for n in ROUGE if n in metrics]))
    if "wer" in metrics or "per" in metrics:
        result.update({k: v for k, v in edit_rates(hypotheses, references).items()
                       if k in metrics})
    return result


def rouge(hypotheses: list[str], references: list[list[str]], *, names) -> dict:
    """Mean sentence ROUGE F1 (x100), each sentence against its best reference
    (rouge-score's score_multi), without stemming: the text may not be English."""
    from rouge_score import rouge_scorer  # the [evaluate] extra
    scorer = rouge_scorer.RougeScorer(list(names), use_stemmer=False)
    totals = dict.fromkeys(names, 0.0)
    for hypothesis, refs in zip(hypotheses, references):
        scores = scorer.score_multi(refs, hypothesis)
        for name in names:
            totals[name] += scores[name].fmeasure
    return {name: 100.0 * total / max(len(hypotheses), 1) for name, total in totals.items()}


def edit_rates(hypotheses: list[str], references: list[list[str]]) -> dict:
    """Word error rate (a hypothesis is wrong unless it equals a reference) and phoneme
    (token) error rate against the closest reference."""
    wrong = edits = length = 0
    for hypothesis, refs in zip(hypotheses, references):
        distance, closest = closest_edits(hypothesis, refs)
        wrong += distance > 0
        edits += distance
        length += closest
    return {"wer": 100.0 * wrong / max(len(references), 1),
            "per": 100.0 * edits / max(length, 1)}


def sentence_scores(hypotheses: list[str], references: list[list[str]], *,
                    g2p: bool) -> dict[str, list[float]]:
    """Per distinct source, against all its references, as the corpus score counts them:
    sentence chrF; for G2P the word error (0 or 100) and phoneme error rate."""
    if not g2p:
        import sacrebleu  # the [evaluate] extra
        return {"chrf": [sacrebleu.sentence_chrf(h, refs).score
                         for h, refs in zip(hypotheses, references)]}
    edits = [closest_edits(h, refs) for h, refs in zip(hypotheses, references)]
    return {"wer": [100.0 if distance else 0.0 for distance, _ in edits],
            "per": [100.0 * distance / max(length, 1) for distance, length in edits]}


def closest_edits(hypothesis: str, references: list[str]) -> tuple[int, int]:
    """(phoneme edits, reference length) to the closest reference of a G2P hypothesis."""
    phones = hypothesis.split()
    return min((edit_distance(phones, ref), len(ref)) for ref in (r.split() for r in references))


def edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance between two token lists."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]
