"""launch/metrics.py: each metric against its reference library; names and directions."""

import ml_collections
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from launch import metrics

HYPS = ["the cat sat on the mat", "a dog barked loudly today"]
REFS = ["the cat sat on a mat", "the dog barked loudly today"]


def test_bleu_chrf_and_ter_match_sacrebleu_on_fixed_strings():
    result = metrics.corpus_scores(HYPS, [[r] for r in REFS], metrics=("bleu", "chrf", "ter"))
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert result["ter"] == pytest.approx(sacrebleu.corpus_ter(HYPS, [REFS]).score)
    assert result["ter"] > 0 and result["bleu_signature"].startswith("nrefs:1|")
    assert result["ter_signature"].startswith("nrefs:1|")
    assert "wer" not in result and "rouge1" not in result


def test_rouge_is_the_mean_sentence_f1_of_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    expected = {name: 100 * sum(scorer.score(r, h)[name].fmeasure
                                for h, r in zip(HYPS, REFS)) / 2
                for name in ("rouge1", "rouge2", "rougeL")}
    result = metrics.corpus_scores(HYPS, [[r] for r in REFS],
                                   metrics=("rouge1", "rouge2", "rougeL"))
    assert {k: result[k] for k in expected} == pytest.approx(expected)
    assert 0 < result["rouge2"] < result["rouge1"] < 100


def test_rouge_takes_the_best_of_several_references():
    refs = [["a mat the cat sat on", "the cat sat on the mat"], ["the dog barked loudly today"]]
    one = metrics.corpus_scores(HYPS, [r[:1] for r in refs], metrics=("rougeL",))
    both = metrics.corpus_scores(HYPS, refs, metrics=("rougeL",))
    assert both["rougeL"] > one["rougeL"]


def test_scores_take_a_varying_number_of_references():
    refs = [["the cat sat on a mat", "the cat sat on the mat"], ["the dog barked loudly today"]]
    result = metrics.corpus_scores(HYPS, refs, metrics=("bleu",))
    streams = [[refs[0][0], refs[1][0]], [refs[0][1], None]]
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, streams).score)
    assert result["bleu"] > sacrebleu.corpus_bleu(HYPS, [streams[0]]).score
    assert result["bleu_signature"].startswith("nrefs:var|")
    assert (result["num_sentences"], result["num_references"]) == (2, 3)


def test_word_and_phoneme_error_rates():
    hyps = ["HH AH L OW", "W ER L D", "K AE T"]
    refs = ["HH AH L OW", "W ER L D Z", "B AE T"]
    result = metrics.corpus_scores(hyps, [[r] for r in refs], metrics=("wer", "per"))
    assert result["wer"] == pytest.approx(100 * 2 / 3)
    assert result["per"] == pytest.approx(100 * 2 / 12)  # one deletion, one substitution


def test_a_word_is_right_when_it_matches_any_pronunciation():
    hyps = ["HH EH L OW", "T AH M EY T OW", "K AE T"]
    refs = [["HH AH L OW", "HH EH L OW"],           # right: the second pronunciation
            ["T AH M AA T OW", "T AH M EY T OW"],   # right
            ["K AE T S", "B AE T"]]                  # wrong: 1 edit to either; ties -> shorter
    result = metrics.corpus_scores(hyps, refs, metrics=("wer", "per"))
    assert result["wer"] == pytest.approx(100 / 3)
    assert result["per"] == pytest.approx(100 * 1 / (4 + 6 + 3))


def test_metric_names_are_checked_and_selection_defaults_to_the_first():
    assert metrics.parse_metrics("wer, per,bleu,wer") == ("wer", "per", "bleu")
    with pytest.raises(metrics.MetricsError, match="rouge is not a metric"):
        metrics.parse_metrics("bleu,rouge")
    assert metrics.selection_metric("", metrics=("ter", "bleu")) == "ter"
    assert metrics.selection_metric("xent", metrics=("bleu",)) == "xent"
    with pytest.raises(metrics.MetricsError, match="'per' is not measured"):
        metrics.selection_metric("per", metrics=("bleu",))
    assert not metrics.HIGHER_IS_BETTER["ter"] and metrics.HIGHER_IS_BETTER["rougeL"]


def test_the_config_chooses_the_metrics_not_the_data_source_name():
    config = ml_collections.ConfigDict({"eval": {"metrics": "wer,per", "select_on": ""}})
    tsv = {"sources": {"train": ["tsv:g2p.tsv"]}}
    assert metrics.run_metrics(config, tsv) == (("wer", "per"), "")
    # A workdir from before config.eval: what the evaluator computed then.
    old = ml_collections.ConfigDict({"model": {}})
    assert metrics.run_metrics(old, tsv) == (("bleu", "chrf"), "")
    assert metrics.run_metrics(old, {"sources": {"train": ["cmudict"]}})[0][0] == "wer"


def test_sentence_scores_match_their_libraries_against_all_references():
    hypotheses, references = ["HH AH L OW", "W ER D"], [["HH EH L OW", "HH AH L OW"],
                                                        ["W ER L D"]]
    g2p = metrics.sentence_scores(hypotheses, references, g2p=True)
    assert g2p == {"wer": [0.0, 100.0], "per": [0.0, 25.0]}
    mt = metrics.sentence_scores(["the cat sat"], [["the cat sat down", "a cat"]], g2p=False)
    assert mt["chrf"][0] == pytest.approx(sacrebleu.sentence_chrf(
        "the cat sat", ["the cat sat down", "a cat"]).score)
