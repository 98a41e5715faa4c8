"""The evaluation job: restore a checkpoint, beam-search a split, score, export the best.

Owns WORKDIR/eval/<split>/ (metrics.jsonl, hyp-<step>.txt, TensorBoard events), the
export root WORKDIR/export/best and, under an evaluator metric for early stopping, the
stop marker the trainer reads (launch/early_stopping.py); it never writes a file the
trainer owns.
"""

import contextlib
import dataclasses
import json
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from launch import (checkpoints, early_stopping, eval_lines, eval_records, export_lib,
                    extras, replicated_search, report, shared_files, teacher_forcing,
                    vocabulary, warm_start)
from launch import metrics as metrics_lib
from launch import progress as progress_lib
from models import decoding
from pipeline import dataset, features, tokenizer

EXAMPLES = 8  # (source, reference, hypothesis) triples returned for the console
SCALARS = tuple(metrics_lib.HIGHER_IS_BETTER)  # TensorBoard and the log, when measured


class EvaluationError(RuntimeError):
    """The evaluation cannot run; the message says why."""


@dataclasses.dataclass
class Run:
    """What the evaluator needs from a training run and its data."""
    config: object
    metadata: dict
    model: object
    source_tokenizer: tokenizer.Tokenizer
    target_tokenizer: tokenizer.Tokenizer


def load_run(*, workdir: str, data_dir: str) -> Run:
    """Rebuilds the model from WORKDIR/config.json and checks the data matches it."""
    import ml_collections

    config_path = os.path.join(workdir, "config.json")
    if not tf.io.gfile.exists(config_path):
        raise EvaluationError(f"{workdir} has no config.json: not an s2s-train workdir")
    with tf.io.gfile.GFile(config_path) as f:
        config = ml_collections.ConfigDict(vocabulary.upgrade_saved_config(json.load(f)))
    try:
        metadata = dataset.load_metadata(data_dir)
    except dataset.DataDirError as error:
        raise EvaluationError(str(error)) from error
    trained_sha = config.data.tokenizer_sha256
    if metadata["tokenizer"]["sha256"] != trained_sha:
        raise EvaluationError(
            f"{data_dir} uses tokenizer sha256 {metadata['tokenizer']['sha256'][:12]}... but "
            f"{workdir} was trained with {trained_sha[:12]}...: ids would not match")
    try:
        source_tokenizer, target_tokenizer = tokenizer.load_tokenizers(data_dir, metadata)
    except tokenizer.TokenizerError as error:
        raise EvaluationError(str(error)) from error
    return Run(config=config, metadata=metadata, model=build_model(config),
               source_tokenizer=source_tokenizer, target_tokenizer=target_tokenizer)


def build_model(config):
    """The trained architecture with its variables created (in the current scope)."""
    model = vocabulary.build_model(config)
    dummy = tf.fill([1, 2], config.data.eos_id)
    model({features.INPUTS: dummy, features.TARGETS: dummy})
    return model


def make_search(run: Run, *, beam_size: int, alpha: float, strategy=None,
                jit_compile: bool = False) -> replicated_search.ReplicatedSearch:
    """The split's beam search, data-parallel over `strategy`'s replicas."""
    return replicated_search.ReplicatedSearch(
        run.model, build_copy=lambda: build_model(run.config), strategy=strategy,
        beam_size=beam_size, alpha=alpha, **length_limits(run),
        max_decode_length=max_decode_length(run), jit_compile=jit_compile)


def restore(run: Run, paths: list[str]) -> None:
    """Loads one checkpoint's weights, or the average of several."""
    weights = checkpoints.variables_by_index(run.model.variables)
    checkpoint = tf.train.Checkpoint(model=weights)
    if len(paths) == 1:
        checkpoint.read(paths[0]).expect_partial().assert_existing_objects_matched()
        return
    total = None
    for path in paths:
        checkpoint.read(path).expect_partial().assert_existing_objects_matched()
        values = [v.numpy().astype(np.float64) for v in run.model.weights]
        total = values if total is None else [t + v for t, v in zip(total, values)]
    for variable, value in zip(run.model.weights, total):
        variable.assign(np.asarray(value / len(paths), dtype=variable.dtype))


def max_decode_length(run: Run) -> int:
    """The largest output length, for the longest source the model was trained on. Each
    sentence stops at the limit of its own length (decoding.sentence_limits) in the
    evaluator and the export alike, so their outputs agree."""
    decode = run.config.decode
    return decoding.max_decode_length(max(run.config.data.bucket_boundaries),
                                      ratio=decode.max_length_ratio,
                                      offset=decode.max_length_offset,
                                      cap=max(run.config.data.bucket_boundaries) * 4)


def length_limits(run: Run) -> dict:
    """Per-sentence output limit: ratio * real source length + offset (config.decode)."""
    return {"length_ratio": run.config.decode.max_length_ratio,
            "length_offset": run.config.decode.max_length_offset}


def export_options(run: Run) -> dict:
    """The export's decoding settings, the evaluator's own."""
    return {"max_input_length": max(run.config.data.bucket_boundaries),
            "max_decode_length": max_decode_length(run),
            **length_limits(run)}


def decode_split(run: Run, *, split: str, data_dir: str,
                 search: replicated_search.ReplicatedSearch
                 ) -> tuple[eval_lines.SplitText, list[str]]:
    """The split's input lines, and one hypothesis per distinct source.

    A source that appears more than once (a word with several pronunciations, a message
    with several translations) is decoded once and scored against all its references.
    Sources are decoded shortest first in batches of similar length (`length_batches`),
    so each batch's buffers fit its bucket and it stops once its own sentences are done.
    """
    text = read_split(run, split=split, data_dir=data_dir)
    search.sync()
    hypotheses = [""] * len(text.sources)
    progress = progress_lib.Progress("decoded", total=len(text.sources))
    for rows, size in length_batches([len(ids) for ids in text.source_ids],
                                     **batching(run, multiple=search.replicas)):
        tokens = search(padded_batch([text.source_ids[i] for i in rows], size=size,
                                     boundaries=run.config.data.bucket_boundaries,
                                     pad_id=run.config.data.pad_id,
                                     eos_id=run.config.data.eos_id))
        for row, index in enumerate(rows):
            hypotheses[index] = run.target_tokenizer.detokenize(tokens[row])
        progress.add(len(rows))
    progress.finish()
    return text, hypotheses


def batching(run: Run, *, multiple: int = 1) -> dict:
    """`length_batches` settings from config.decode and the data's buckets."""
    decode = run.config.decode
    return {"boundaries": tuple(run.config.data.bucket_boundaries),
            "max_sentences": decode.batch_size,
            # Workdirs from before batch_tokens existed get configs/base.py's value.
            "max_tokens": decode.get("batch_tokens", 1024), "multiple": multiple}


def bucket_length(length: int, boundaries) -> int:
    """The padded length of a source: the smallest boundary that holds it (or its own
    length beyond the largest), so each bucket has one static shape."""
    return min([int(b) for b in boundaries if int(b) >= length], default=length)


def length_batches(lengths: list[int], *, boundaries, max_sentences: int, max_tokens: int,
                   multiple: int = 1) -> list[tuple[list[int], int]]:
    """(indices, batch size) per batch: indices shortest first, each batch within one
    bucket and holding at most `max_sentences` sources and `max_tokens` padded source
    tokens. The size is fixed per bucket (one compiled shape each; short batches are
    filled up) and a multiple of `multiple` (the replicas). Long sources thus decode in
    small batches, which stop sooner and hold smaller caches."""
    by_bucket: dict[int, list[int]] = {}
    for index in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        by_bucket.setdefault(bucket_length(lengths[index], boundaries), []).append(index)
    batches = []
    for bucket, indices in sorted(by_bucket.items()):
        size = max(1, min(max_sentences, max_tokens // bucket))
        size = -(-size // multiple) * multiple
        batches += [(indices[first:first + size], size)
                    for first in range(0, len(indices), size)]
    return batches


def read_split(run: Run, *, split: str, data_dir: str) -> eval_lines.SplitText:
    """The split as input lines (launch/eval_lines.py); warns when the data predates
    recorded origins, so outputs can only follow the shards' order."""
    text = eval_lines.read_split(data_dir=data_dir, split=split, metadata=run.metadata,
                                 pad_id=run.config.data.pad_id)
    if not text.ordered:
        logging.warning("%s was preprocessed before input order was recorded: hyp files "
                        "follow the shards' order, not the %s file's. Rerun s2s-preprocess "
                        "with --overwrite to record it", data_dir, split)
    elif text.dropped:
        logging.warning("%d %s lines were dropped in preprocessing (metadata.json counts "
                        "why): their lines in the hyp files are empty", text.dropped, split)
    return text


def padded_batch(rows: list[np.ndarray], *, size: int, boundaries, pad_id: int,
                 eos_id: int) -> np.ndarray:
    """[size, L] int32: the rows padded to the bucket of the longest (`bucket_length`),
    plus EOS-only filler rows up to `size` (one compiled shape per bucket)."""
    length = bucket_length(max(len(r) for r in rows), boundaries)
    batch = np.full([size, length], pad_id, np.int32)
    batch[len(rows):, 0] = eos_id
    for index, row in enumerate(rows):
        batch[index, :len(row)] = row
    return batch


def checkpoint_step(path: str) -> int:
    return int(path.rsplit("-", 1)[1])


def export_root(workdir: str) -> str:
    """Where the evaluator keeps the best model: an export root (launch/export_layout.py)."""
    return os.path.join(workdir, "export", "best")


def checkpoint_files_exist(path: str) -> bool:
    """Whether the index and every data shard of checkpoint `path` are still there."""
    shards = tf.io.gfile.glob(f"{path}.data-*")
    if not tf.io.gfile.exists(f"{path}.index") or not shards:
        return False
    return len(shards) == int(shards[0].rsplit("-of-", 1)[1])


class CheckpointGone(EvaluationError):
    """A checkpoint's files vanished before they were read (the trainer's keep-N policy)."""


class WatchTimeout(EvaluationError):
    """--watch waited `timeout` seconds without reaching the final training step."""

    def __init__(self, message: str, *, rows: list[dict]):
        super().__init__(message)
        self.rows = rows


class Evaluator:
    """Scores checkpoints of one run on one split, records each measurement once, and
    exports the best. One method per job, as OpenNMT-tf's opennmt/evaluation.py splits
    its evaluator: restore, decode, score, write hypotheses, record, export, summarize.

    Order on disk, so a crash anywhere loses nothing: hyp-<step>.txt, then (under the
    workdir's evaluator lease) the metrics row, then the export; a restarted evaluator
    re-exports a best row that has no export yet (reconcile_export).
    """

    def __init__(self, run: Run, *, workdir: str, data_dir: str, split: str,
                 search: replicated_search.ReplicatedSearch, average_last: int = 1,
                 export_best: bool = True, best: eval_records.BestMetric | None = None,
                 lease_wait: float = 900.0):
        self.run, self.workdir, self.data_dir, self.split = run, workdir, data_dir, split
        self.search, self.average_last, self.export_best = search, average_last, export_best
        self.metrics, select_on = metrics_lib.run_metrics(run.config, run.metadata)
        self.best = best or eval_records.best_metric(select_on, metrics=self.metrics)
        self.lease_wait = lease_wait
        self.stopping = early_stopping.policy_from_config(run.config)
        self.out_dir = os.path.join(workdir, "eval", split)
        self.metrics_path = os.path.join(self.out_dir, eval_records.METRICS_FILE)
        self._summaries = None

    def __call__(self, path: str) -> dict:
        """Scores checkpoint `path` (with average_last > 1 the mean of it and the ones
        before it, which is also what gets exported). Returns the metrics row plus
        "examples" (source, references, hypothesis) for the console and "recorded"."""
        averaged = self._restore(path)
        text, hypotheses, seconds = self._decode()
        row = self._score(path, averaged=len(averaged), hypotheses=hypotheses,
                          references=text.references, seconds=seconds)
        self._write_hypotheses(row["step"], text, hypotheses)
        with self._lease() as lease:
            recorded = self._record_results(row, lease=lease)
            if recorded and self.export_best:
                exported = self._maybe_export(row)
                if exported:
                    row["exported"] = exported
            if recorded:
                self._maybe_stop_training(row)
        examples = [(source, " | ".join(refs), hypothesis) for source, refs, hypothesis
                    in zip(text.sources, text.references, hypotheses)][:EXAMPLES]
        if recorded:
            self._write_summaries(row, examples)
            report.refresh(workdir=self.workdir, data_dir=self.data_dir)
        self._log(row, recorded=recorded)
        row["recorded"] = recorded
        row["examples"] = examples
        return row

    def _restore(self, path: str) -> list[str]:
        """Loads the weights; CheckpointGone when files vanished under us."""
        averaged = recent_checkpoints(self.workdir, upto=path, count=self.average_last)
        try:
            restore(self.run, averaged)
        except tf.errors.OpError as error:
            missing = [p for p in averaged if not checkpoint_files_exist(p)]
            if missing:
                raise CheckpointGone(f"checkpoint {', '.join(missing)} was deleted before "
                                     "it could be read") from error
            raise EvaluationError(f"checkpoint {path} cannot be read: {error.message}") from error
        return averaged

    def _decode(self) -> tuple[eval_lines.SplitText, list[str], float]:
        began = time.perf_counter()
        text, hypotheses = decode_split(self.run, split=self.split, data_dir=self.data_dir,
                                        search=self.search)
        return text, hypotheses, time.perf_counter() - began

    def _score(self, path: str, *, averaged: int, hypotheses: list[str],
               references: list[list[str]], seconds: float) -> dict:
        """The metrics row: decoding settings, sacreBLEU/chrF (WER/PER), teacher forcing."""
        return {"step": checkpoint_step(path), "split": self.split, "checkpoint": path,
                "beam_size": self.search.beam_size, "alpha": self.search.alpha,
                "averaged": averaged, "replicas": self.search.replicas,
                **metrics_lib.corpus_scores(hypotheses, references, metrics=self.metrics),
                "decode_seconds": round(seconds, 2),
                **teacher_forcing.split_scores(self.run.model, config=self.run.config,
                                               split=self.split, data_dir=self.data_dir)}

    def _write_hypotheses(self, step: int, text: eval_lines.SplitText,
                          hypotheses: list[str]) -> None:
        """hyp-<step>.txt and .tsv, a line per input line (launch/eval_lines.py)."""
        tf.io.gfile.makedirs(self.out_dir)
        scores = metrics_lib.sentence_scores(hypotheses, text.references,
                                            g2p="wer" in self.metrics
                                            or "per" in self.metrics)
        eval_lines.write_hypotheses(self.out_dir, step=step, text=text,
                                    hypotheses=hypotheses, scores=scores)

    def _lease(self):
        """One evaluator of this workdir at a time between reading and writing records."""
        return evaluator_lease(self.workdir, wait=self.lease_wait)

    def _record_results(self, row: dict, *, lease) -> bool:
        """Appends the row to metrics.jsonl; False when another evaluator recorded the same
        measurement first."""
        lease.check()
        return eval_records.append_metrics(self.metrics_path, row)

    def _maybe_stop_training(self, row: dict) -> None:
        """Writes the trainer's stop marker when the run's early-stopping policy says so:
        only on the dev split, over the rows measured with this row's decoding settings."""
        if not (self.stopping.enabled and not self.stopping.in_trainer
                and self.split == "dev"):
            return
        rows = [r for r in eval_records.read_metrics(self.metrics_path)
                if eval_records.measurement(r)[1:] == eval_records.measurement(row)[1:]]
        decision = early_stopping.decide(rows, self.stopping)
        if decision and early_stopping.write_marker(self.workdir, decision, by="s2s-evaluate"):
            logging.info("early stopping: %s; wrote %s", decision["reason"],
                         early_stopping.marker_path(self.workdir))
            row["stopped_training"] = decision["reason"]

    def _exported(self) -> dict | None:
        """The manifest of the model in export/best, None when there is none."""
        try:
            return export_lib.read_manifest(export_root(self.workdir))
        except export_lib.NotAnExportError:
            return None

    def _maybe_export(self, row: dict) -> str | None:
        """Exports the restored weights if `row` beats the exported model on the best
        metric (a model exported from another split is beaten by anything)."""
        exported = self._exported()
        if exported is not None and exported.get("split") != self.split:
            exported = None
        if not self.best.better(row, exported):
            return None
        return self._export(row)

    def _export(self, row: dict) -> str:
        """Publishes the weights now in the model as a new version of export/best."""
        run = self.run
        info = {"step": row["step"], "split": self.split, "averaged": row["averaged"],
                "best_metric": self.best.name, **{k: row[k] for k in SCALARS if k in row}}
        return publish(export_root(self.workdir), step=row["step"], wait=self.lease_wait,
                       write=savedmodel_writer(run, beam_size=row["beam_size"],
                                               alpha=row["alpha"], info=info))

    def reconcile_export(self) -> None:
        """Makes export/best hold the best recorded row, as after a crash between the
        metrics row and the export. Warns when that checkpoint is gone."""
        with self._lease():
            best = self.best.best([r for r in eval_records.read_metrics(self.metrics_path)
                                   if r.get("split", self.split) == self.split])
            exported = self._exported()
            if best is None or (exported and exported.get("step") == best["step"]
                                and exported.get("split") == self.split):
                return
            path = os.path.join(checkpoints.directory(self.workdir),
                                os.path.basename(best["checkpoint"]))
            averaged = recent_checkpoints(self.workdir, upto=path, count=best["averaged"])
            if len(averaged) != best["averaged"] or not all(map(checkpoint_files_exist,
                                                                averaged)):
                logging.warning(
                    "step %d has the best %s (%s) but was never exported, and its "
                    "checkpoint is gone; %s keeps %s", best["step"], self.best.name,
                    best[self.best.name], export_root(self.workdir),
                    f"step {exported.get('step')}" if exported else "no model")
                return
            logging.warning("exporting step %d, the best on record (an earlier evaluator "
                            "stopped before exporting it)", best["step"])
            restore(self.run, averaged)
            self._export(best)

    def _write_summaries(self, row: dict, examples: list[tuple]) -> None:
        """The scores as scalars, and a few (source, reference, hypothesis) samples as a
        text table, so TensorBoard shows what the numbers mean."""
        if self._summaries is None:
            self._summaries = tf.summary.create_file_writer(self.out_dir)
        with self._summaries.as_default():
            for key in SCALARS:
                if key in row:
                    tf.summary.scalar(key, row[key], step=row["step"])
            tf.summary.text("samples", samples_markdown(examples), step=row["step"])
        self._summaries.flush()

    def _log(self, row: dict, *, recorded: bool) -> None:
        scores = "  ".join(f"{k} {row[k]:.2f}" for k in SCALARS if k in row)
        note = "" if recorded else " (already on record from another evaluator; not added)"
        logging.info("step %d %s: %s%s", row["step"], self.split, scores, note)


def samples_markdown(examples: list[tuple]) -> str:
    """A Markdown table of (source, reference, hypothesis) rows for tf.summary.text."""
    def cell(value: str) -> str:
        return value.replace("|", "\\|").replace("\n", " ") or " "
    rows = ["| source | reference | hypothesis |", "|---|---|---|"]
    rows += ["| " + " | ".join(cell(value) for value in example) + " |"
             for example in examples]
    return "\n".join(rows)


@contextlib.contextmanager
def evaluator_lease(workdir: str, *, wait: float):
    """The workdir's evaluator lease, its failures as EvaluationError."""
    try:
        with shared_files.hold(os.path.join(workdir, "eval"), wait=wait) as lease:
            yield lease
    except shared_files.LeaseError as error:
        raise EvaluationError(str(error)) from error


def publish(root: str, *, write, step: int, wait: float = 900.0) -> str:
    """export_lib.publish_version, its lease failures as EvaluationError."""
    try:
        return export_lib.publish_version(root, write=write, step=step, wait=wait)
    except shared_files.LeaseError as error:
        raise EvaluationError(str(error)) from error


def recent_checkpoints(workdir: str, *, upto: str, count: int) -> list[str]:
    """`upto` and the checkpoints just before it that still exist."""
    if count < 1:
        raise EvaluationError(f"average_last must be at least 1, got {count}")
    state = tf.train.get_checkpoint_state(checkpoints.directory(workdir))
    paths = list(state.all_model_checkpoint_paths) if state else []
    paths = [p for p in paths if checkpoint_step(p) <= checkpoint_step(upto)]
    return (paths[-count:] if upto in paths else [upto])


def latest_or_named(workdir: str, checkpoint: str = "") -> str:
    """`checkpoint`, or the newest one in the workdir."""
    ckpt_dir = checkpoints.directory(workdir)
    path = checkpoint or tf.train.latest_checkpoint(ckpt_dir)
    if not path:
        raise EvaluationError(f"{ckpt_dir} holds no checkpoint")
    return path


def evaluate(*, workdir: str, data_dir: str, split: str = "dev", watch: bool = False,
             checkpoint: str = "", beam_size: int | None = None, alpha: float | None = None,
             average_last: int = 1, timeout: float = 600.0,
             export_best: bool | None = None, best_metric: str = "", strategy=None,
             jit_compile: bool = False) -> list[dict]:
    """Scores the latest (or a named) checkpoint, or every new one with watch=True.

    The best checkpoint (by best_metric; default lowest WER for G2P, else highest BLEU)
    is exported when scoring the dev split (model selection never looks at test) unless
    export_best says otherwise. Decoding is split over `strategy`'s replicas and
    XLA-compiled with jit_compile. With watch=True, WatchTimeout when `timeout` passes
    before the final training step is scored.
    """
    if watch:
        wait_for_config(workdir, timeout=timeout)
    run = load_run(workdir=workdir, data_dir=data_dir)
    dataset.verified_shard_files(data_dir, split, metadata=run.metadata, count_records=True)
    search = make_search(run, beam_size=beam_size or run.config.decode.beam_size,
                         alpha=run.config.decode.alpha if alpha is None else alpha,
                         strategy=strategy, jit_compile=jit_compile)
    try:
        measured, select_on = metrics_lib.run_metrics(run.config, run.metadata)
        if any(name in metrics_lib.ROUGE for name in measured):
            extras.check("rouge_score")
        best = eval_records.best_metric(best_metric or select_on, metrics=measured)
        check_stopping_metric(early_stopping.policy_from_config(run.config),
                              metrics=measured)
    except (ValueError, extras.MissingExtra) as error:
        raise EvaluationError(str(error)) from error
    evaluator = Evaluator(run, workdir=workdir, data_dir=data_dir, split=split, search=search,
                          average_last=average_last, best=best,
                          export_best=split == "dev" if export_best is None else export_best)
    if evaluator.export_best:
        evaluator.reconcile_export()
    if not watch:
        return [evaluator(latest_or_named(workdir, checkpoint))]
    return watch_checkpoints(evaluator, timeout=timeout)


def wait_for_config(workdir: str, *, timeout: float, poll: float = 2.0) -> None:
    """--watch may start beside the trainer: wait for its config.json, up to `timeout`
    (load_run then names the workdir if it never came)."""
    path = os.path.join(workdir, "config.json")
    deadline = time.monotonic() + timeout
    if not tf.io.gfile.exists(path):
        logging.info("waiting up to %g s for the trainer to write %s", timeout, path)
    while not tf.io.gfile.exists(path) and time.monotonic() < deadline:
        time.sleep(poll)


def check_stopping_metric(policy: early_stopping.Policy, *,
                          metrics: tuple[str, ...]) -> None:
    """An evaluator metric this run measures (config.eval.metrics)."""
    if policy.enabled and not policy.in_trainer:
        metrics_lib.selection_metric(policy.metric, metrics=metrics)


def watch_checkpoints(evaluator: Evaluator, *, timeout: float) -> list[dict]:
    """Scores each new checkpoint once, skipping steps on record and checkpoints deleted
    before they could be read, until the final training step."""
    num_steps = evaluator.run.config.train.num_steps
    scored = {r["step"] for r in eval_records.read_metrics(evaluator.metrics_path)}
    rows, seen = [], 0
    for path in tf.train.checkpoints_iterator(checkpoints.directory(evaluator.workdir),
                                              timeout=timeout, min_interval_secs=1):
        step = seen = checkpoint_step(path)
        if step in scored:
            logging.info("step %d already scored; skipping", step)
        else:
            try:
                rows.append(evaluator(path))
                scored.add(step)
            except CheckpointGone as error:
                logging.warning("%s; skipping it", error)
        if step >= num_steps or early_stopping.read_marker(evaluator.workdir):
            break
    last = max(scored, default=0)
    stopped = early_stopping.read_marker(evaluator.workdir)
    if stopped:
        logging.info("training was stopped early (%s); done watching", stopped["reason"])
    elif last < num_steps:
        raise WatchTimeout(unfinished_message(last=last, seen=seen, num_steps=num_steps,
                                              timeout=timeout), rows=rows)
    return rows


def unfinished_message(*, last: int, seen: int, num_steps: int, timeout: float) -> str:
    if seen >= num_steps:
        return (f"the final checkpoint (step {seen}) was deleted before it could be scored; "
                f"the last scored step is {last}")
    waited = f"of the last one (step {seen})" if seen else "(none appeared)"
    return (f"no checkpoint at step {num_steps} (config.train.num_steps) appeared within "
            f"{timeout:g} s {waited}; the last scored step is {last or 'none'}. The "
            "trainer is slow, stopped or failed: check it, then rerun --watch (scored steps "
            "are skipped)")


def export_checkpoint(*, workdir: str, data_dir: str, export_dir: str, checkpoint: str = "",
                      average_last: int = 1, beam_size: int | None = None,
                      alpha: float | None = None, export_format: str = "savedmodel",
                      quantization: str | None = None) -> str:
    """s2s-export: one checkpoint (or an average), without scoring, as a new version of
    the export root `export_dir`: a SavedModel, or a CTranslate2 model directory with
    export_format="ctranslate2". Returns the version's plain model directory."""
    if os.path.normpath(export_dir) == os.path.normpath(export_root(workdir)):
        raise EvaluationError(f"{export_dir} is where s2s-evaluate keeps the best-scoring "
                              "model; choose another --export_dir")
    run = load_run(workdir=workdir, data_dir=data_dir)
    path = latest_or_named(workdir, checkpoint)
    averaged = recent_checkpoints(workdir, upto=path, count=average_last)
    try:
        restore(run, averaged)
    except tf.errors.OpError as error:
        raise EvaluationError(f"checkpoint {path} cannot be read: {error.message}") from error
    info = {"step": checkpoint_step(path), "averaged": len(averaged)}
    if export_format == "ctranslate2":
        write = ctranslate2_writer(run, quantization=quantization, info=info)
    else:
        write = savedmodel_writer(run, beam_size=beam_size or run.config.decode.beam_size,
                                  alpha=run.config.decode.alpha if alpha is None else alpha,
                                  info=info)
    return publish(export_dir, write=write, step=info["step"])


def savedmodel_writer(run: Run, *, beam_size: int, alpha: float, info: dict):
    """A publish_version writer: the SavedModel, its warm-start bundle, then its manifest."""
    def write(directory: str) -> None:
        warm_start.write_bundle(os.path.join(directory, warm_start.BUNDLE),
                                model=run.model, config=run.config,
                                source_model=run.source_tokenizer.model,
                                target_model=run.target_tokenizer.model)
        export_lib.save_translator(
            run.model, saved_model_dir=directory, source_model=run.source_tokenizer.model,
            target_model=run.target_tokenizer.model, beam_size=beam_size, alpha=alpha,
            **export_options(run), info=info)
    return write


def ctranslate2_writer(run: Run, *, quantization: str | None, info: dict):
    """A publish_version writer: the CTranslate2 model, then its manifest."""
    from launch import ctranslate2_export

    def write(directory: str) -> None:
        ctranslate2_export.export_ctranslate2(
            run.model, source_model=run.source_tokenizer.model,
            target_model=run.target_tokenizer.model, output_dir=directory,
            quantization=quantization)
        export_lib.write_manifest(directory, {
            "format": "ctranslate2", "quantization": quantization,
            "vocabulary": export_lib.vocabulary_info(
                run.model, source_model=run.source_tokenizer.model,
                target_model=run.target_tokenizer.model), **info})
    return write
