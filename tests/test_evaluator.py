"""The evaluation job, export and translate CLI on a tiny trained toy model."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import sacrebleu
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2

import models
import toy_data
from configs import tiny
from launch import (eval_lines, eval_records, evaluator, export_layout, export_lib, shared_files,
                    teacher_forcing, trainer)

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


def copy_workdir(trained, tmp_path, name="work"):
    data_dir, workdir = trained
    copy = tmp_path / name
    shutil.copytree(workdir, copy)
    return data_dir, str(copy)


def metrics(workdir, split="dev") -> list[dict]:
    return eval_records.read_metrics(os.path.join(workdir, "eval", split,
                                                  eval_records.METRICS_FILE))


def checkpoint(workdir, step) -> str:
    return os.path.join(workdir, "checkpoints", f"ckpt-{step}")


def leftovers(workdir) -> list[str]:
    """Lease claims and temp files anywhere in the workdir (none once writers are done)."""
    return [name for _, _, names in os.walk(workdir) for name in names
            if name.startswith(shared_files.export_layout.LEASE_PREFIX) or ".tmp-" in name]


def versions(workdir) -> list[str]:
    root = evaluator.export_root(workdir)
    return sorted(n for n in os.listdir(root) if export_layout.is_version(n))


def score_by_step(monkeypatch):
    """BLEU = step / 10, so the best checkpoint is known whatever the model learned."""
    real = evaluator.Evaluator._score

    def score(self, path, **kwargs):
        return {**real(self, path, **kwargs), "bleu": evaluator.checkpoint_step(path) / 10}
    monkeypatch.setattr(evaluator.Evaluator, "_score", score)


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
    lines = open(os.path.join(workdir, "eval", "test", "hyp-400.txt")).read().splitlines()
    assert len(lines) == 36 > len(grouped)  # a line per input line
    first = {}  # source -> its hypothesis, written on each of its lines
    for (source, _), hypothesis in zip(pairs + extra, lines):
        assert first.setdefault(source, hypothesis) == hypothesis
    hyps = list(first.values())
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
    lines = open(os.path.join(out, eval_records.METRICS_FILE)).read().splitlines()
    row = json.loads(lines[0])
    assert len(lines) == 1 and row["step"] == 400
    assert {"bleu", "chrf", "bleu_signature", "xent", "token_accuracy"} <= set(row)
    hyps = open(os.path.join(out, "hyp-400.txt")).read().splitlines()
    refs = [t for _, t in toy_data.make_pairs(32, seed=1)]
    assert len(hyps) == 32
    assert row["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert row["chrf"] > 50.0  # it learned the copy task (sentences too short for BLEU-4)
    root = evaluator.export_root(workdir)
    manifest = export_lib.read_manifest(root)
    assert (manifest["step"], manifest["split"], manifest["best_metric"]) == (400, "dev", "bleu")
    assert rows[0]["exported"] == export_lib.resolve(root) != root
    assert os.path.dirname(rows[0]["exported"]) == root


def test_exports_have_tf_servings_layout_and_a_string_signature(trained, tmp_path,
                                                                monkeypatch):
    """What tensorflow_model_server --model_base_path=ROOT reads: the highest integer
    directory's saved_model.pb, whose serving_default maps strings to strings (checked on
    the protocol buffer itself, as saved_model_cli shows it)."""
    data_dir, workdir = copy_workdir(trained, tmp_path)
    score_by_step(monkeypatch)
    evaluator.evaluate(workdir=workdir, data_dir=data_dir, split="dev",
                       checkpoint=checkpoint(workdir, 200))
    evaluator.evaluate(workdir=workdir, data_dir=data_dir, split="dev")  # a better one
    root = evaluator.export_root(workdir)
    numbered = [n for n in os.listdir(root) if n.isdigit()]
    assert len(numbered) == 2 and set(os.listdir(root)) == {*numbered, export_lib.POINTER}
    highest = max(numbered, key=int)
    assert export_lib.read_pointer(root)["version"] == highest
    assert export_lib.read_manifest(root)["step"] == 400
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(root, highest, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    signature = saved_model.meta_graphs[0].signature_def["serving_default"]
    assert {name: (t.dtype, [d.size for d in t.tensor_shape.dim])
            for name, t in signature.inputs.items()} == {"inputs": (types_pb2.DT_STRING, [-1])}
    assert {name: (t.dtype, [d.size for d in t.tensor_shape.dim])
            for name, t in signature.outputs.items()} == {
        "translations": (types_pb2.DT_STRING, [-1]), "scores": (types_pb2.DT_FLOAT, [-1])}
    served = tf.saved_model.load(os.path.join(root, highest)).signatures["serving_default"]
    assert served(inputs=tf.constant(["abc"]))["translations"].numpy().tolist() == [b"ABC"]
    nbest = saved_model.meta_graphs[0].signature_def[export_lib.NBEST_SIGNATURE]
    beam = export_lib.read_manifest(root)["beam_size"]  # one list entry per beam
    assert {name: (t.dtype, [d.size for d in t.tensor_shape.dim])
            for name, t in nbest.outputs.items()} == {
        "translations": (types_pb2.DT_STRING, [-1, beam]), "scores": (types_pb2.DT_FLOAT,
                                                                  [-1, beam])}


def test_the_nbest_signature_lists_distinct_hypotheses_best_first(trained, tmp_path):
    data_dir, workdir = trained
    export = evaluator.export_checkpoint(workdir=workdir, data_dir=data_dir,
                                         export_dir=str(tmp_path / "export"), beam_size=4)
    best = export_lib.load_translator(export)
    nbest = export_lib.load_translator(export, signature=export_lib.NBEST_SIGNATURE)
    inputs = tf.constant(["abc", "hg fe", "a"])
    one, lists = best(inputs=inputs), nbest(inputs=inputs)
    assert lists["translations"].shape == lists["scores"].shape == [3, 4]
    np.testing.assert_array_equal(lists["translations"][:, 0], one["translations"])
    np.testing.assert_allclose(lists["scores"][:, 0], one["scores"], rtol=1e-6)
    for texts, scores in zip(lists["translations"].numpy(), lists["scores"].numpy()):
        real = [t for t, s in zip(texts, scores) if s > -1e8]
        assert len(set(real)) == len(real) >= 1
        assert list(scores) == sorted(scores, reverse=True)


def test_teacher_forced_scores_are_the_per_token_loss_and_accuracy_of_every_pair(trained):
    data_dir, workdir = trained
    run = evaluator.load_run(workdir=workdir, data_dir=data_dir)
    evaluator.restore(run, [os.path.join(workdir, "checkpoints", "ckpt-400")])
    result = teacher_forcing.split_scores(run.model, config=run.config, split="dev",
                                          data_dir=data_dir)
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


def test_watch_skips_scored_steps_after_restart(trained, tmp_path):
    data_dir, workdir = copy_workdir(trained, tmp_path)
    first = evaluator.evaluate(workdir=workdir, data_dir=data_dir, split="dev", watch=True,
                               timeout=1)
    assert [r["step"] for r in first] == [400]
    out = os.path.join(workdir, "eval", "dev")
    written = {name: os.stat(os.path.join(out, name)).st_mtime_ns
               for name in (eval_records.METRICS_FILE, "hyp-400.txt")}
    second = evaluator.evaluate(workdir=workdir, data_dir=data_dir, split="dev", watch=True,
                                timeout=1)
    assert second == []
    assert written == {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in written}
    assert len(open(os.path.join(out, eval_records.METRICS_FILE)).readlines()) == 1


def test_watch_skips_a_checkpoint_whose_data_file_vanishes_between_listing_and_restore(
        trained, tmp_path, monkeypatch, caplog):
    """The watcher has read ckpt-200's name; then the trainer writes ckpt-400 and its keep-1
    policy deletes ckpt-200's data file before the restore reads it."""
    data_dir, workdir = copy_workdir(trained, tmp_path)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    tf.compat.v1.train.update_checkpoint_state(
        ckpt_dir, checkpoint(workdir, 200), all_model_checkpoint_paths=[checkpoint(workdir, 200)])
    real_restore = evaluator.restore

    def restore_after_deletion(run, paths):
        if paths == [checkpoint(workdir, 200)]:
            for data in tf.io.gfile.glob(checkpoint(workdir, 200) + ".data-*"):
                os.remove(data)
            tf.compat.v1.train.update_checkpoint_state(
                ckpt_dir, checkpoint(workdir, 400),
                all_model_checkpoint_paths=[checkpoint(workdir, 400)])
        real_restore(run, paths)
    monkeypatch.setattr(evaluator, "restore", restore_after_deletion)
    rows = evaluator.evaluate(workdir=workdir, data_dir=data_dir, split="dev", watch=True,
                              timeout=30)
    assert [r["step"] for r in rows] == [400]
    assert [r["step"] for r in metrics(workdir)] == [400]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"checkpoint {checkpoint(workdir, 200)} was deleted" in w for w in warnings)
    assert export_lib.read_manifest(evaluator.export_root(workdir))["step"] == 400
    # Scoring that checkpoint by name is a clear error instead.
    with pytest.raises(evaluator.EvaluationError, match="ckpt-200 was deleted before"):
        evaluator.evaluate(workdir=workdir, data_dir=data_dir, split="dev",
                           checkpoint=checkpoint(workdir, 200))


def test_watch_that_times_out_before_the_final_step_exits_3_with_a_message(trained, tmp_path):
    data_dir, workdir = copy_workdir(trained, tmp_path)
    config_path = os.path.join(workdir, "config.json")
    config = json.load(open(config_path))
    config["train"]["num_steps"] = 600  # the trainer has not reached its last step
    json.dump(config, open(config_path, "w"))
    result = run_cli(["-m", "launch.evaluate", f"--workdir={workdir}", f"--data_dir={data_dir}",
                      "--watch", "--timeout=1", "--noexport_best"])
    assert result.returncode == 3, result.stderr[-3000:]
    assert "dev set, step 400" in result.stdout  # what was scored is still reported
    assert ("s2s-evaluate: error: no checkpoint at step 600 (config.train.num_steps) appeared "
            "within 1 s of the last one (step 400); the last scored step is 400") in result.stderr
    assert "Traceback" not in result.stderr
    # The final checkpoint gone before it could be read is an error too, not a silent stop.
    shutil.rmtree(os.path.join(workdir, "eval"))
    for path in tf.io.gfile.glob(checkpoint(workdir, 400) + ".data-*"):
        os.remove(path)
    config["train"]["num_steps"] = 400
    json.dump(config, open(config_path, "w"))
    with pytest.raises(evaluator.WatchTimeout, match="the final checkpoint .step 400. was "
                                                     "deleted before it could be scored"):
        evaluator.evaluate(workdir=workdir, data_dir=data_dir, watch=True, timeout=1,
                           export_best=False)


class Crash(BaseException):
    """Stands for the process dying: no handler catches it."""


def crash_after(patch, module, name, point):
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        original(*args, **kwargs)
        raise Crash(point)
    patch.setattr(module, name, wrapped)


def inject_crash(patch, point: str) -> None:
    """Makes the evaluator die at `point` of recording and exporting a checkpoint."""
    def crash(*args, **kwargs):
        raise Crash(point)

    def half_written(model, *, saved_model_dir, **kwargs):
        original(model, saved_model_dir=saved_model_dir, **kwargs)
        os.remove(os.path.join(saved_model_dir, export_lib.MANIFEST))
        raise Crash(point)

    def die_holding_the_lease(self):
        if not dead and not self.directory.endswith(os.path.join("export", "best")):
            return release(self)  # the evaluator's lease before scoring; die at the export's
        dead.append(self.id)  # then the evaluator's lease is never released either
        shared_files._HELD.discard(self.id)  # the process, and its memory, are gone
        raise Crash(point)

    original, release, dead = export_lib.save_translator, shared_files.Lease.release, []
    if point == "before_metrics_row":
        patch.setattr(eval_records, "append_metrics", crash)
    elif point == "after_metrics_row":
        crash_after(patch, eval_records, "append_metrics", point)
    elif point == "saved_model_half_written":
        patch.setattr(export_lib, "save_translator", half_written)
    elif point == "before_pointer":
        crash_after(patch, export_lib, "save_translator", point)
    elif point == "after_pointer":
        patch.setattr(export_lib, "prune", crash)
    else:
        patch.setattr(shared_files.Lease, "release", die_holding_the_lease)


@pytest.fixture(scope="module")
def scored_200(trained, tmp_path_factory):
    """A workdir whose dev evaluator scored and exported ckpt-200 (BLEU = step / 10)."""
    data_dir, workdir = copy_workdir(trained, tmp_path_factory.mktemp("scored"))
    with pytest.MonkeyPatch.context() as patch:
        score_by_step(patch)
        evaluator.evaluate(workdir=workdir, data_dir=data_dir, checkpoint=checkpoint(workdir, 200))
    return data_dir, workdir


@pytest.mark.parametrize("point", ["before_metrics_row", "after_metrics_row",
                                   "saved_model_half_written", "before_pointer",
                                   "after_pointer", "lease_never_released"])
def test_a_crash_at_any_point_leaves_a_loadable_best_and_a_restart_exports_the_best_step(
        scored_200, tmp_path, monkeypatch, point):
    data_dir, workdir = copy_workdir(scored_200, tmp_path)
    score_by_step(monkeypatch)
    root = evaluator.export_root(workdir)
    with pytest.MonkeyPatch.context() as patch:
        inject_crash(patch, point)
        with pytest.raises(Crash):
            evaluator.evaluate(workdir=workdir, data_dir=data_dir, split="dev")
    # Right after the crash: export/best loads and names a step that metrics.jsonl holds.
    exported = export_lib.read_manifest(root)["step"]
    assert exported in {r["step"] for r in metrics(workdir)}
    assert exported == (400 if point in ("after_pointer", "lease_never_released") else 200)
    translations = export_lib.load_translator(root)(inputs=tf.constant(["a b c"]))
    assert translations["translations"].shape == [1]
    # A restarted evaluator makes the export the best row, and cleans up.
    evaluator.evaluate(workdir=workdir, data_dir=data_dir, split="dev", watch=True, timeout=1)
    rows = metrics(workdir)
    assert sorted(r["step"] for r in rows) == [200, 400]
    assert export_lib.read_manifest(root)["step"] == max(rows, key=lambda r: r["bleu"])["step"]
    # A dead writer's claim on export/best waits for the next export, but blocks nothing.
    claims = [os.path.join(root, n) for n in leftovers(workdir) if n.startswith("_lease-")]
    assert all(shared_files.is_stale(shared_files.read_claim(c)) for c in claims)
    assert len(claims) == (point == "lease_never_released")
    assert [n for n in leftovers(workdir) if not n.startswith("_lease-")] == []
    assert len(versions(workdir)) <= 2


def test_two_evaluators_on_one_workdir_keep_every_row_and_export_the_best(
        trained, tmp_path, monkeypatch):
    """Two evaluators in one process (so with one PID, like two containers' PID 1) score
    different checkpoints at once; each dwells in the metrics append, where two writers
    without a lease would read the same file and one row would be lost."""
    data_dir, workdir = copy_workdir(trained, tmp_path)
    score_by_step(monkeypatch)
    inside, peak, guard = [0], [0], threading.Lock()
    real_append = eval_records.append_metrics

    def slow_append(path, row):
        with guard:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        time.sleep(1.0)
        try:
            return real_append(path, row)
        finally:
            with guard:
                inside[0] -= 1
    monkeypatch.setattr(eval_records, "append_metrics", slow_append)
    errors = []

    def run(step):
        try:
            evaluator.evaluate(workdir=workdir, data_dir=data_dir, split="dev",
                               checkpoint=checkpoint(workdir, step))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(step,)) for step in (400, 200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert errors == [] and peak[0] == 1
    assert sorted(r["step"] for r in metrics(workdir)) == [200, 400]
    assert export_lib.read_manifest(evaluator.export_root(workdir))["step"] == 400
    assert leftovers(workdir) == []
    assert all(os.path.exists(os.path.join(evaluator.export_root(workdir), v,
                                           export_lib.MANIFEST)) for v in versions(workdir))


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
        text, hypotheses = evaluator.decode_split(run, split="dev", data_dir=data_dir,
                                                  search=search)
        return eval_lines.line_hypotheses(text, hypotheses)

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
    with pytest.raises(evaluator.EvaluationError, match="'wer' is not measured"):
        evaluator.evaluate(workdir=workdir, data_dir=data_dir, best_metric="wer")
    metrics_path = os.path.join(workdir, "eval", "dev", eval_records.METRICS_FILE)
    os.makedirs(os.path.dirname(metrics_path))
    open(metrics_path, "w").write('{"step": 200}\n{"step": 4\n')
    with pytest.raises(eval_records.MetricsFileError, match="metrics.jsonl line 2 is not"):
        evaluator.evaluate(workdir=workdir, data_dir=data_dir)


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
    # No project code on the path: run from an empty directory with a clean PYTHONPATH,
    # on the plain SavedModel directory that export/best points to.
    saved_model = export_lib.resolve(evaluator.export_root(workdir))
    assert saved_model == row["exported"]
    env = dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", script, saved_model, json.dumps(sources)], capture_output=True,
        text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    translations = json.loads(result.stdout.strip().splitlines()[-1])
    hyps = open(os.path.join(workdir, "eval", "dev", "hyp-400.txt")).read().splitlines()
    assert translations == hyps
    assert sacrebleu.corpus_bleu(translations, [references]).score == pytest.approx(row["bleu"])


@pytest.mark.parametrize("flags", [["--strategy=mirrored", "--cpu_devices=2"],
                                   ["--jit_compile"]], ids=["mirrored", "jit"])
def test_data_parallel_and_compiled_decoding_give_the_one_device_hypotheses(trained, tmp_path,
                                                                           flags):
    hyps, rows = {}, {}
    for name, extra in (("one", []), ("other", flags)):
        # One workdir each: the same step and settings are one measurement, recorded once.
        data_dir, workdir = copy_workdir(trained, tmp_path, name)
        result = run_cli(["-m", "launch.evaluate", f"--workdir={workdir}",
                          f"--data_dir={data_dir}", "--split=dev", "--noexport_best", *extra])
        assert result.returncode == 0, result.stderr[-3000:]
        [rows[name]] = metrics(workdir)
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
    model_dir = result.stdout.strip().splitlines()[-1]
    assert model_dir == export_lib.resolve(export_dir) != export_dir
    assert export_lib.read_manifest(export_dir)["format"] == "ctranslate2"
    run = evaluator.load_run(workdir=workdir, data_dir=data_dir)
    evaluator.restore(run, [tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))])
    text = evaluator.read_split(run, split="dev", data_dir=data_dir)
    sources, source_ids = text.sources, text.source_ids
    pieces = spm.SentencePieceProcessor(model_proto=run.source_tokenizer.model)
    translator = ctranslate2.Translator(model_dir, device="cpu", intra_threads=1)
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
    model = models.build_model(
        dict(name="lstm_attention", num_encoder_layers=1, num_decoder_layers=1, embed_dim=8,
             hidden_dim=8), source_vocab_size=11, target_vocab_size=11, pad_id=0, eos_id=1,
        bos_id=3)
    with pytest.raises(ctranslate2_export.ConversionError, match="only the Transformer"):
        ctranslate2_export.transformer_spec(model, source_pieces=[], target_pieces=[],
                                            bos="<s>", eos="</s>", unk="<unk>")


def test_translate_cli_reads_stdin(trained, tmp_path):
    data_dir, workdir = copy_workdir(trained, tmp_path)
    export_dir = str(tmp_path / "exported")
    result = run_cli(["-m", "launch.export", f"--workdir={workdir}", f"--data_dir={data_dir}",
                      f"--export_dir={export_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    saved_model = result.stdout.strip().splitlines()[-1]
    assert os.path.exists(os.path.join(saved_model, "saved_model.pb"))
    resolved = run_cli(["-m", "launch.export", f"--resolve={export_dir}"])
    assert (resolved.returncode, resolved.stdout.strip()) == (0, saved_model)
    inputs = ["a b c d e f", "h a g", "b e d c a b", "c", "a b"]
    result = run_cli(["-m", "launch.translate", f"--model={export_dir}", "--batch_size=2"],
                     input="".join(line + "\n" for line in inputs))
    assert result.returncode == 0, result.stderr[-3000:]
    # Batched by length, written back in input order: line i translates input line i.
    serve = export_lib.load_translator(saved_model)
    alone = [serve(inputs=tf.constant([line]))["translations"].numpy()[0].decode()
             for line in inputs]
    assert result.stdout.splitlines() == alone
    assert len(set(alone)) == len(inputs)  # distinct outputs: a misplaced line would show


def test_translate_cli_refuses_a_directory_that_is_not_an_export(tmp_path):
    result = run_cli(["-m", "launch.translate", f"--model={tmp_path}"], input="abc\n")
    assert result.returncode == 2
    assert "is not an s2s-pipeline export" in result.stderr
    assert "Traceback" not in result.stderr


def test_export_cli_refuses_the_evaluators_root_and_missing_flags(trained, tmp_path):
    data_dir, workdir = trained
    result = run_cli(["-m", "launch.export", f"--workdir={workdir}", f"--data_dir={data_dir}",
                      f"--export_dir={os.path.join(workdir, 'export', 'best')}/"])
    assert result.returncode == 2
    assert "is where s2s-evaluate keeps the best-scoring model" in result.stderr
    result = run_cli(["-m", "launch.export", f"--workdir={workdir}"])
    assert result.returncode == 2
    assert "--data_dir, --export_dir required (or --resolve=ROOT)" in result.stderr
    result = run_cli(["-m", "launch.export", f"--resolve={tmp_path}"])
    assert result.returncode == 2 and "is not an s2s-pipeline export" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------------
# Outputs in input order (launch/eval_lines.py), on data written by the real preprocess job


@pytest.fixture(scope="module")
def preprocessed_in_order(trained, tmp_path_factory):
    """The trained model's tokenizer over TSV dev/test files through s2s-preprocess, 3
    shards each so shard order is not file order; returns (data_dir, dev and test lines).

    dev: two files, single references. test: a source on two lines with different
    targets, an identical pair on two lines, an empty line and a malformed one."""
    from pipeline import preprocess
    data_dir, _ = trained
    root = tmp_path_factory.mktemp("ordered")
    pairs = toy_data.make_pairs(40, seed=7)
    dev_a, dev_b, test = pairs[:12], pairs[12:20], pairs[20:32]
    test_lines = ([f"{s}\t{t}" for s, t in test[:5]] + [f"{test[0][0]}\t{test[0][1][::-1]}",
                  "", f"{test[5][0]}\t{test[5][1]}", "no tab here"]
                  + [f"{s}\t{t}" for s, t in test[5:]])
    files = {"train.tsv": [f"{s}\t{t}" for s, t in pairs[32:]],
             "dev_a.tsv": [f"{s}\t{t}" for s, t in dev_a],
             "dev_b.tsv": [f"{s}\t{t}" for s, t in dev_b], "test.tsv": test_lines}
    for name, lines in files.items():
        (root / name).write_text("".join(line + "\n" for line in lines))
    out = str(root / "data")
    preprocess.preprocess(
        pipeline_options=preprocess.pipeline_options_from_argv([]), output_dir=out,
        train=[f"tsv:{root / 'train.tsv'}"],
        dev=[f"tsv:{root / 'dev_a.tsv'}", f"tsv:{root / 'dev_b.tsv'}"],
        test=[f"tsv:{root / 'test.tsv'}"], num_shards=3,
        tokenizer_model=os.path.join(data_dir, "spm.model"))
    return out, {"dev": files["dev_a.tsv"] + files["dev_b.tsv"], "test": test_lines}


def test_hypothesis_line_i_is_the_savedmodel_translation_of_input_line_i(
        trained, preprocessed_in_order, tmp_path):
    _, workdir = copy_workdir(trained, tmp_path)
    data_dir, lines = preprocessed_in_order
    row = evaluator.evaluate(workdir=workdir, data_dir=data_dir, split="test",
                             export_best=False)[0]
    out = os.path.join(workdir, "eval", "test")
    hyps = open(os.path.join(out, "hyp-400.txt")).read().split("\n")[:-1]
    assert len(hyps) == len(lines["test"]) == 16
    export = evaluator.export_checkpoint(workdir=workdir, data_dir=data_dir,
                                         export_dir=str(tmp_path / "export"))
    translate = export_lib.load_translator(export)
    for hyp, line in zip(hyps, lines["test"]):
        if "\t" not in line:  # the empty and the malformed line: dropped, so empty
            assert hyp == ""
            continue
        expected = translate(inputs=tf.constant([line.split("\t")[0]]))["translations"]
        assert hyp == expected.numpy()[0].decode()
    # A repeated source is decoded once (12 distinct of 14 pairs) and written on each line.
    assert (row["num_sentences"], row["num_references"]) == (12, 14)
    assert hyps[0] == hyps[5] and hyps[7] == hyps[9]
    rows = [line.split("\t") for line in
            open(os.path.join(out, "hyp-400.tsv")).read().splitlines()]
    assert rows[0] == ["file", "line", "source", "reference", "hypothesis", "chrf"]
    assert [int(r[1]) for r in rows[1:]] == list(range(1, 17))
    assert all(r[0].endswith("test.tsv") for r in rows[1:])
    assert [r[4] for r in rows[1:]] == hyps
    assert rows[6][2:4] == [lines["test"][5].split("\t")[0], lines["test"][5].split("\t")[1]]
    assert rows[7][2:] == ["", "", "", ""] and rows[9][2:] == ["", "", "", ""]
    assert float(rows[1][5]) == pytest.approx(sacrebleu.sentence_chrf(
        hyps[0], [lines["test"][0].split("\t")[1], lines["test"][5].split("\t")[1]]).score,
        abs=0.01)


def test_sacrebleu_on_the_hypothesis_file_and_the_targets_in_file_order_is_the_recorded_bleu(
        trained, preprocessed_in_order, tmp_path):
    _, workdir = copy_workdir(trained, tmp_path)
    data_dir, lines = preprocessed_in_order
    row = evaluator.evaluate(workdir=workdir, data_dir=data_dir, split="dev",
                             export_best=False)[0]
    hyps = open(os.path.join(workdir, "eval", "dev", "hyp-400.txt")).read().splitlines()
    targets = [line.split("\t")[1] for line in lines["dev"]]  # dev_a.tsv, then dev_b.tsv
    assert len(hyps) == len(targets) == 20
    assert sacrebleu.corpus_bleu(hyps, [targets]).score == pytest.approx(row["bleu"])
    assert sacrebleu.corpus_chrf(hyps, [targets]).score == pytest.approx(row["chrf"])
    # Order matters: the same lines against the targets one line off score lower.
    shifted = targets[1:] + targets[:1]
    assert sacrebleu.corpus_chrf(hyps, [shifted]).score < row["chrf"] - 10


def test_data_without_recorded_origins_still_evaluates_with_a_warning(trained, tmp_path,
                                                                     caplog):
    data_dir, workdir = copy_workdir(trained, tmp_path)
    with caplog.at_level("WARNING"):
        row = evaluator.evaluate(workdir=workdir, data_dir=data_dir, split="dev",
                                 export_best=False)[0]
    assert "before input order was recorded" in caplog.text
    hyps = open(os.path.join(workdir, "eval", "dev", "hyp-400.txt")).read().splitlines()
    assert len(hyps) == row["num_sentences"] == 32


def test_each_evaluation_puts_sample_translations_in_tensorboard(trained, tmp_path):
    data_dir, workdir = copy_workdir(trained, tmp_path)
    row = evaluator.evaluate(workdir=workdir, data_dir=data_dir, split="dev",
                             export_best=False)[0]
    texts = []
    for path in tf.io.gfile.glob(os.path.join(workdir, "eval", "dev", "events.out.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            texts += [tf.make_ndarray(value.tensor).item().decode()
                      for value in event.summary.value if value.tag == "samples"]
    assert len(texts) == 1
    table = texts[0].splitlines()
    assert table[0] == "| source | reference | hypothesis |"
    assert table[2] == "| " + " | ".join(row["examples"][0]) + " |"
    assert len(table) == 2 + evaluator.EXAMPLES
