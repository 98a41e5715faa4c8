"""The evaluation job, export and translate CLI on a tiny trained toy model."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import sacrebleu
import tensorflow as tf

import toy_data
from configs import tiny
from launch import evaluator, export, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data_dir, workdir) with checkpoints at steps 200 and 400 of the copy task."""
    root = tmp_path_factory.mktemp("eval")
    data_dir = toy_data.make_toy_data_dir(str(root / "data"))
    config = tiny.get_config()
    config.train.num_steps = 400
    config.train.checkpoint_every_steps = 200
    config.train.label_smoothing = 0.0
    config.optimizer.learning_rate = 1e-2
    # The copy task learns fastest from the static buckets' mixed-length batches.
    config.data.static_shapes = True
    trainer.train(config, workdir=str(root / "work"), data_dir=data_dir,
                  strategy=tf.distribute.get_strategy())
    return data_dir, str(root / "work")


def copy_workdir(trained, tmp_path):
    data_dir, workdir = trained
    copy = tmp_path / "work"
    shutil.copytree(workdir, copy)
    return data_dir, str(copy)


def test_score_matches_sacrebleu_on_fixed_strings():
    hyps = ["the cat sat on the mat", "a dog barked loudly today"]
    refs = ["the cat sat on a mat", "the dog barked loudly today"]
    result = evaluator.score(hyps, [[r] for r in refs], g2p=False)
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert result["bleu_signature"].startswith("nrefs:1|")
    assert "wer" not in result


def test_score_takes_a_varying_number_of_references():
    hyps = ["the cat sat on the mat", "a dog barked loudly today"]
    refs = [["the cat sat on a mat", "the cat sat on the mat"], ["the dog barked loudly today"]]
    result = evaluator.score(hyps, refs, g2p=False)
    streams = [[refs[0][0], refs[1][0]], [refs[0][1], None]]
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score)
    assert result["bleu"] > sacrebleu.corpus_bleu(hyps, [streams[0]]).score
    assert result["bleu_signature"].startswith("nrefs:var|")
    assert (result["num_sentences"], result["num_references"]) == (2, 3)


def test_g2p_word_and_phoneme_error_rates():
    hyps = ["HH AH L OW", "W ER L D", "K AE T"]
    refs = ["HH AH L OW", "W ER L D Z", "B AE T"]
    result = evaluator.score(hyps, [[r] for r in refs], g2p=True)
    assert result["wer"] == pytest.approx(100 * 2 / 3)
    assert result["per"] == pytest.approx(100 * 2 / 12)  # one deletion, one substitution


def test_g2p_word_is_right_when_it_matches_any_pronunciation():
    hyps = ["HH EH L OW", "T AH M EY T OW", "K AE T"]
    refs = [["HH AH L OW", "HH EH L OW"],           # right: the second pronunciation
            ["T AH M AA T OW", "T AH M EY T OW"],   # right
            ["K AE T S", "B AE T"]]                  # wrong: 1 edit to either; ties -> shorter
    result = evaluator.score(hyps, refs, g2p=True)
    assert result["wer"] == pytest.approx(100 / 3)
    assert result["per"] == pytest.approx(100 * 1 / (4 + 6 + 3))


def test_length_batches_group_by_bucket_within_the_token_budget():
    lengths = [3, 9, 2, 17, 3, 8, 30, 40, 5, 3]
    batches = evaluator.length_batches(lengths, boundaries=(4, 8, 16, 32), max_sentences=3,
                                       max_tokens=32, multiple=1)
    assert batches == [([2, 0, 4], 3), ([9], 3),  # bucket 4: 32 // 4 = 8, capped at 3
                       ([8, 5], 3),               # bucket 8: 4, capped at 3
                       ([1], 2),                  # bucket 16: 32 // 16
                       ([3], 1), ([6], 1),        # bucket 32: one each
                       ([7], 1)]                  # beyond the largest: its own length
    assert sorted(i for rows, _ in batches for i in rows) == list(range(len(lengths)))
    with_replicas = evaluator.length_batches(lengths, boundaries=(4, 8, 16, 32),
                                             max_sentences=3, max_tokens=32, multiple=2)
    assert with_replicas == [([2, 0, 4, 9], 4), ([8, 5], 4), ([1], 2), ([3, 6], 2),
                             ([7], 2)]


def test_a_repeated_source_is_decoded_once_and_scored_against_all_its_references(
        trained, tmp_path):
    data_dir, workdir = copy_workdir(trained, tmp_path)
    data_copy = str(tmp_path / "data")
    shutil.copytree(data_dir, data_copy)
    pairs = toy_data.make_pairs(32, seed=2)  # the test split
    extra = [(source, target[::-1]) for source, target in pairs[:4]]
    toy_data.write_split(data_copy, "test", pairs + extra)
    row = evaluator.evaluate(workdir=workdir, data_dir=data_copy, split="test")[0]
    grouped = {}  # source -> references, in file order
    for source, target in pairs + extra:
        grouped.setdefault(source, []).append(target)
    assert (row["num_sentences"], row["num_references"]) == (len(grouped), 36)
    hyps = open(os.path.join(workdir, "eval", "test", "hyp-400.txt")).read().splitlines()
    assert len(hyps) == len(grouped) < 36
    refs = list(grouped.values())
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(max(map(len, refs)))]
    assert row["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score)
    assert row["examples"][0] == (pairs[0][0], " | ".join(refs[0]), hyps[0])
    assert len(refs[0]) >= 2


def test_evaluate_latest_writes_metrics_hypotheses_and_best_export(trained, tmp_path):
    data_dir, workdir = copy_workdir(trained, tmp_path)
    rows = evaluator.evaluate(workdir=workdir, data_dir=data_dir, split="dev")
    assert [r["step"] for r in rows] == [400]
    out = os.path.join(workdir, "eval", "dev")
    lines = open(os.path.join(out, evaluator.METRICS_FILE)).read().splitlines()
    row = json.loads(lines[0])
    assert len(lines) == 1 and row["step"] == 400
    assert {"bleu", "chrf", "bleu_signature", "xent", "token_accuracy"} <= set(row)
    hyps = open(os.path.join(out, "hyp-400.txt")).read().splitlines()
    refs = [t for _, t in toy_data.make_pairs(32, seed=1)]
    assert len(hyps) == 32
    assert row["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert row["chrf"] > 50.0  # it learned the copy task (sentences too short for BLEU-4)
    assert tf.io.gfile.exists(os.path.join(workdir, "export", "best", export.MANIFEST))


def test_teacher_forced_scores_are_the_per_token_loss_and_accuracy_of_every_pair(trained):
    data_dir, workdir = trained
    run = evaluator.load_run(workdir=workdir, data_dir=data_dir)
    evaluator.restore(run, [os.path.join(workdir, "checkpoints", "ckpt-400")])
    result = evaluator.teacher_forced_scores(run, split="dev", data_dir=data_dir)
    # One unpadded pair at a time, with numpy: padding in the job's batches changes nothing.
    nats = right = tokens = 0
    for source, target in toy_data.make_pairs(32, seed=1):  # the dev split
        targets = run.target_tokenizer.encode(target)
        logits = run.model({"inputs": tf.constant([run.source_tokenizer.encode(source)]),
                            "targets": tf.constant([targets])}).numpy()[0].astype(np.float64)
        shifted = logits - logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        nats -= log_probs[np.arange(len(targets)), targets].sum()
        right += (logits.argmax(-1) == targets).sum()
        tokens += len(targets)
    assert result["xent"] == pytest.approx(nats / tokens, rel=1e-4)
    assert result["token_accuracy"] == pytest.approx(100 * right / tokens)
    assert result["token_accuracy"] > 80  # it learned the copy task (chance: 1 in 21)


def test_the_best_g2p_checkpoint_is_the_lowest_word_error_rate_not_the_highest_bleu():
    rows = [{"bleu": 80.0, "wer": 30.0}, {"bleu": 79.0, "wer": 28.0}]
    assert max(rows, key=evaluator.selection_score) is rows[1]
    assert max([{"bleu": 20.0}, {"bleu": 25.0}], key=evaluator.selection_score)["bleu"] == 25.0


def test_watch_skips_scored_steps_after_restart(trained, tmp_path):
    data_dir, workdir = copy_workdir(trained, tmp_path)
    first = evaluator.evaluate(workdir=workdir, data_dir=data_dir, split="dev", watch=True,
                               timeout=1)
    assert [r["step"] for r in first] == [400]
    out = os.path.join(workdir, "eval", "dev")
    written = {name: os.stat(os.path.join(out, name)).st_mtime_ns
               for name in (evaluator.METRICS_FILE, "hyp-400.txt")}
    second = evaluator.evaluate(workdir=workdir, data_dir=data_dir, split="dev", watch=True,
                                timeout=1)
    assert second == []
    assert written == {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in written}
    assert len(open(os.path.join(out, evaluator.METRICS_FILE)).readlines()) == 1


def test_watch_survives_a_checkpoint_deleted_before_it_is_read(trained, tmp_path):
    data_dir, workdir = copy_workdir(trained, tmp_path)
    # The trainer's keep-M policy removed ckpt-400 after the watcher learned its name.
    for path in tf.io.gfile.glob(os.path.join(workdir, "checkpoints", "ckpt-400*")):
        os.remove(path)
    rows = evaluator.evaluate(workdir=workdir, data_dir=data_dir, split="dev", watch=True,
                              timeout=1)
    assert rows == []
    assert not os.path.exists(os.path.join(workdir, "eval", "dev", evaluator.METRICS_FILE))


def test_average_of_checkpoints_is_the_mean_of_their_weights(trained):
    data_dir, workdir = trained
    run = evaluator.load_run(workdir=workdir, data_dir=data_dir)
    paths = evaluator.recent_checkpoints(workdir, upto=os.path.join(
        workdir, "checkpoints", "ckpt-400"), count=2)
    assert [evaluator.checkpoint_step(p) for p in paths] == [200, 400]
    evaluator.restore(run, paths)
    readers = [tf.train.load_checkpoint(p) for p in paths]
    for index, variable in enumerate(run.model.weights[:5]):
        key = f"model/{index:05d}/.ATTRIBUTES/VARIABLE_VALUE"
        mean = (readers[0].get_tensor(key) + readers[1].get_tensor(key)) / 2
        np.testing.assert_allclose(variable.numpy(), mean, rtol=1e-6)
        assert not np.allclose(readers[0].get_tensor(key), readers[1].get_tensor(key))


def test_average_last_scores_the_averaged_weights(trained, tmp_path):
    data_dir, workdir = copy_workdir(trained, tmp_path)
    [row] = evaluator.evaluate(workdir=workdir, data_dir=data_dir, split="dev",
                               average_last=2, export_best=False)
    assert row["step"] == 400 and row["averaged"] == 2
    run = evaluator.load_run(workdir=workdir, data_dir=data_dir)
    search = evaluator.make_search(run, beam_size=row["beam_size"], alpha=row["alpha"])

    def decode(paths):
        evaluator.restore(run, paths)
        return evaluator.decode_split(run, split="dev", data_dir=data_dir, search=search)[2]

    hyps = open(os.path.join(workdir, "eval", "dev", "hyp-400.txt")).read().splitlines()
    assert hyps == decode(evaluator.recent_checkpoints(workdir, upto=row["checkpoint"],
                                                       count=2))
    # ckpt-400 alone decodes differently, so the test can tell the two apart.
    assert hyps != decode([row["checkpoint"]])
    with pytest.raises(evaluator.EvaluationError, match="average_last must be at least 1"):
        evaluator.evaluate(workdir=workdir, data_dir=data_dir, average_last=0)


def test_bad_inputs_are_clear_errors(trained, tmp_path):
    data_dir, _ = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(evaluator.EvaluationError, match="not an s2s-train workdir"):
        evaluator.evaluate(workdir=str(empty), data_dir=data_dir)
    _, workdir = copy_workdir(trained, tmp_path)
    shutil.rmtree(os.path.join(workdir, "checkpoints"))
    with pytest.raises(evaluator.EvaluationError, match="no checkpoint"):
        evaluator.evaluate(workdir=workdir, data_dir=data_dir)
    other = toy_data.make_toy_data_dir(str(tmp_path / "other"), num_train=8)
    metadata_path = os.path.join(other, "metadata.json")
    metadata = json.load(open(metadata_path))
    metadata["tokenizer"]["sha256"] = "0" * 64
    json.dump(metadata, open(metadata_path, "w"))
    with pytest.raises(evaluator.EvaluationError, match="tokenizer sha256"):
        evaluator.evaluate(workdir=workdir, data_dir=other)


def run_cli(args, **kwargs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=300, **kwargs)


def test_export_round_trip_in_a_fresh_process_matches_the_evaluator(trained, tmp_path):
    data_dir, workdir = copy_workdir(trained, tmp_path)
    row = evaluator.evaluate(workdir=workdir, data_dir=data_dir, split="dev")[0]
    sources = [s for s, _ in toy_data.make_pairs(32, seed=1)]
    references = [t for _, t in toy_data.make_pairs(32, seed=1)]
    script = ("import json, sys, tensorflow as tf, tensorflow_text\n"
              "serve = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
              "out = serve(inputs=tf.constant(json.loads(sys.argv[2])))\n"
              "print(json.dumps([t.decode() for t in out['translations'].numpy()]))\n")
    # No project code on the path: run from an empty directory with a clean PYTHONPATH.
    env = dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", script, os.path.join(workdir, "export", "best"),
         json.dumps(sources)], capture_output=True, text=True, env=env, cwd=str(tmp_path),
        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    translations = json.loads(result.stdout.strip().splitlines()[-1])
    hyps = open(os.path.join(workdir, "eval", "dev", "hyp-400.txt")).read().splitlines()
    assert translations == hyps
    assert sacrebleu.corpus_bleu(translations, [references]).score == pytest.approx(row["bleu"])


@pytest.mark.parametrize("flags", [["--strategy=mirrored", "--cpu_devices=2"],
                                   ["--jit_compile"]], ids=["mirrored", "jit"])
def test_data_parallel_and_compiled_decoding_give_the_one_device_hypotheses(trained, tmp_path,
                                                                           flags):
    data_dir, workdir = copy_workdir(trained, tmp_path)
    hyps, rows = {}, {}
    for name, extra in (("one", []), ("other", flags)):
        result = run_cli(["-m", "launch.evaluate", f"--workdir={workdir}",
                          f"--data_dir={data_dir}", "--split=dev", "--noexport_best", *extra])
        assert result.returncode == 0, result.stderr[-3000:]
        rows[name] = evaluator.read_metrics(os.path.join(workdir, "eval", "dev",
                                                         evaluator.METRICS_FILE))[-1]
        hyps[name] = open(os.path.join(workdir, "eval", "dev", "hyp-400.txt")).read()
    assert (rows["one"]["replicas"], rows["other"]["replicas"]) == (
        1, 2 if "--strategy=mirrored" in flags else 1)
    assert hyps["other"] == hyps["one"] and len(hyps["one"].splitlines()) == 32
    assert rows["other"]["bleu"] == rows["one"]["bleu"]


def test_ctranslate2_export_decodes_greedily_as_our_decoder(trained, tmp_path):
    """The converted weights compute what ours do: CTranslate2's greedy search returns
    our greedy search's pieces for every dev source."""
    import ctranslate2
    import sentencepiece as spm

    from models import decoding

    data_dir, workdir = trained
    export_dir = str(tmp_path / "ct2")
    result = run_cli(["-m", "launch.export", f"--workdir={workdir}", f"--data_dir={data_dir}",
                      f"--export_dir={export_dir}", "--format=ctranslate2"])
    assert result.returncode == 0, result.stderr[-3000:]
    run = evaluator.load_run(workdir=workdir, data_dir=data_dir)
    evaluator.restore(run, [tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))])
    sources, _, source_ids = evaluator.read_split(run, split="dev", data_dir=data_dir)
    pieces = spm.SentencePieceProcessor(model_proto=run.source_tokenizer.model)
    translator = ctranslate2.Translator(export_dir, device="cpu", intra_threads=1)
    theirs = translator.translate_batch([pieces.encode(s, out_type=str) for s in sources],
                                        beam_size=1, max_decoding_length=16)
    ours, _ = decoding.greedy_decode(run.model, evaluator.padded_batch(
        source_ids, size=len(source_ids), boundaries=(), pad_id=0, eos_id=1),
        max_decode_length=16)
    target = spm.SentencePieceProcessor(model_proto=run.target_tokenizer.model)
    expected = [[target.id_to_piece(int(t)) for t in row if t not in (0, 1)]
                for row in ours.numpy()]
    assert [r.hypotheses[0] for r in theirs] == expected
    assert len(expected) == 32 and all(expected)


def test_ctranslate2_export_refuses_the_lstm(tmp_path):
    from launch import ctranslate2_export
    model = evaluator.models.build_model(
        dict(name="lstm_attention", num_encoder_layers=1, num_decoder_layers=1, embed_dim=8,
             hidden_dim=8), vocab_size=11, pad_id=0, eos_id=1, bos_id=3)
    with pytest.raises(ctranslate2_export.ConversionError, match="only the Transformer"):
        ctranslate2_export.transformer_spec(model, source_pieces=[], target_pieces=[],
                                            bos="<s>", eos="</s>", unk="<unk>")


def test_translate_cli_reads_stdin(trained, tmp_path):
    data_dir, workdir = copy_workdir(trained, tmp_path)
    export_dir = str(tmp_path / "exported")
    result = run_cli(["-m", "launch.export", f"--workdir={workdir}", f"--data_dir={data_dir}",
                      f"--export_dir={export_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    inputs = ["a b c d e f", "h a g", "b e d c a b", "c", "a b"]
    result = run_cli(["-m", "launch.translate", f"--model={export_dir}", "--batch_size=2"],
                     input="".join(line + "\n" for line in inputs))
    assert result.returncode == 0, result.stderr[-3000:]
    # Batched by length, written back in input order: line i translates input line i.
    serve = export.load_translator(export_dir)
    alone = [serve(inputs=tf.constant([line]))["translations"].numpy()[0].decode()
             for line in inputs]
    assert result.stdout.splitlines() == alone
    assert len(set(alone)) == len(inputs)  # distinct outputs: a misplaced line would show


def test_translate_cli_refuses_a_directory_that_is_not_an_export(tmp_path):
    result = run_cli(["-m", "launch.translate", f"--model={tmp_path}"], input="abc\n")
    assert result.returncode == 2
    assert "is not an s2s-pipeline export" in result.stderr
    assert "Traceback" not in result.stderr
