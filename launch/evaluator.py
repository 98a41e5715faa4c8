"""The evaluation job: restore a checkpoint, beam-search a split, score, export the best.

Owns WORKDIR/eval/<split>/ (metrics.jsonl, hyp-<step>.txt, TensorBoard events) and
WORKDIR/export/best; it never writes a file the trainer owns.
"""

import dataclasses
import json
import os
import time

import numpy as np
import sacrebleu
import tensorflow as tf
from absl import logging

import models
from launch import checkpoints, export, replicated_search
from models import decoding, losses
from pipeline import dataset, features, tokenizer

METRICS_FILE = "metrics.jsonl"
EXAMPLES = 8  # (source, reference, hypothesis) triples returned for the console
SCALARS = ("bleu", "chrf", "wer", "per", "xent", "token_accuracy")  # TensorBoard and the log
LOG_EVERY_SECONDS = 10  # decoding progress lines, at most one per this many seconds


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
        config = ml_collections.ConfigDict(json.load(f))
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
    model = models.build_model(config.model, vocab_size=config.data.vocab_size,
                               pad_id=config.data.pad_id, eos_id=config.data.eos_id,
                               bos_id=config.data.bos_id)
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
                 ) -> tuple[list[str], list[list[str]], list[str]]:
    """(sources, references, hypotheses) as text, one entry per distinct source, in the
    order of each source's first appearance in the split.

    A source that appears more than once (a word with several pronunciations, a message
    with several translations) is decoded once and scored against all its references.
    Sources are decoded shortest first in batches of similar length (`length_batches`),
    so each batch's buffers fit its bucket and it stops once its own sentences are done.
    """
    sources, references, source_ids = read_split(run, split=split, data_dir=data_dir)
    search.sync()
    hypotheses = [""] * len(sources)
    began, done, last_log = time.perf_counter(), 0, time.perf_counter()
    for rows, size in length_batches([len(ids) for ids in source_ids],
                                     **batching(run, multiple=search.replicas)):
        tokens = search(padded_batch([source_ids[i] for i in rows], size=size,
                                     boundaries=run.config.data.bucket_boundaries,
                                     pad_id=run.config.data.pad_id,
                                     eos_id=run.config.data.eos_id))
        for row, index in enumerate(rows):
            hypotheses[index] = run.target_tokenizer.detokenize(tokens[row])
        done += len(rows)
        now = time.perf_counter()
        if now - last_log >= LOG_EVERY_SECONDS:
            logging.info("decoded %d of %d sentences (%.1f/s)", done, len(sources),
                         done / (now - began))
            last_log = now
    logging.info("decoded %d sentences in %.0f s", done, time.perf_counter() - began)
    return sources, references, hypotheses


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


def read_split(run: Run, *, split: str, data_dir: str
               ) -> tuple[list[str], list[list[str]], list[np.ndarray]]:
    """(distinct sources, their references, their unpadded source ids), file order."""
    sources, references, source_ids = [], [], []
    position = {}  # source text -> its index in the three lists
    batches = dataset.make_eval_dataset(data_dir=data_dir, split=split, batch_size=256)
    for batch in batches:
        texts = [t.decode() for t in batch[features.INPUTS_TEXT].numpy()]
        targets = [t.decode() for t in batch[features.TARGETS_TEXT].numpy()]
        ids = batch[features.INPUTS].numpy()
        for row, (text, target) in enumerate(zip(texts, targets)):
            if text in position:
                references[position[text]].append(target)
                continue
            position[text] = len(sources)
            sources.append(text)
            references.append([target])
            source_ids.append(ids[row][ids[row] != run.config.data.pad_id])
    return sources, references, source_ids


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


def teacher_forced_scores(run: Run, *, split: str, data_dir: str) -> dict:
    """Per-token cross-entropy (nats, no smoothing) and accuracy given the reference prefix.

    Cheaper than a search and smoother than BLEU: dev xent rising across checkpoints while
    the training loss still falls shows the model has begun to memorize.
    """
    pad_id = run.config.data.pad_id
    ids = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[ids, ids])
    def sums(inputs, targets):
        logits = run.model({features.INPUTS: inputs, features.TARGETS: targets})
        loss, count = losses.cross_entropy_sums(logits, targets, pad_id=pad_id)
        correct, _ = losses.accuracy_sums(logits, targets, pad_id=pad_id)
        return tf.stack([loss, correct, count])

    total = np.zeros(3)
    for batch in dataset.make_eval_dataset(data_dir=data_dir, split=split,
                                           batch_size=run.config.decode.batch_size):
        total += sums(batch[features.INPUTS], batch[features.TARGETS]).numpy()
    loss, correct, count = total
    return {"xent": loss / max(count, 1), "token_accuracy": 100.0 * correct / max(count, 1)}


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


def score(hypotheses: list[str], references: list[list[str]], *, g2p: bool) -> dict:
    """BLEU and chrF with sacreBLEU signatures; for G2P also word and phoneme error rate.

    references[i] holds every reference of hypothesis i. For G2P a word is right when it
    equals any of them (the convention of published CMUdict results), and its phoneme
    errors are the edits to the closest one, over that reference's length.
    """
    streams = [[refs[k] if k < len(refs) else None for refs in references]
               for k in range(max((len(refs) for refs in references), default=1))]
    bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
    result = {
        "bleu": bleu.corpus_score(hypotheses, streams).score,
        "bleu_signature": str(bleu.get_signature()),
        "chrf": chrf.corpus_score(hypotheses, streams).score,
        "chrf_signature": str(chrf.get_signature()),
        "num_sentences": len(references),
        "num_references": sum(len(refs) for refs in references),
    }
    if g2p:
        wrong = edits = length = 0
        for hypothesis, refs in zip(hypotheses, references):
            phones = hypothesis.split()
            distance, closest = min((edit_distance(phones, ref), len(ref))
                                    for ref in (r.split() for r in refs))
            wrong += distance > 0
            edits += distance
            length += closest
        result["wer"] = 100.0 * wrong / max(len(references), 1)
        result["per"] = 100.0 * edits / max(length, 1)
    return result


def is_g2p(metadata: dict) -> bool:
    return "cmudict" in json.dumps(metadata.get("sources", ""))


def read_metrics(path: str) -> list[dict]:
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def checkpoint_step(path: str) -> int:
    return int(path.rsplit("-", 1)[1])


def evaluate_checkpoint(run: Run, path: str, *, workdir: str, data_dir: str, split: str,
                        search: replicated_search.ReplicatedSearch, average_last: int = 1,
                        export_best: bool = True) -> dict:
    """Scores one checkpoint, records it, and exports it if it is the best so far.

    With average_last > 1 the weights scored (and exported) are the mean of `path` and
    the checkpoints just before it, so the score on record is the exported model's.
    The returned row is what metrics.jsonl holds plus "examples": the first few
    (source, reference, hypothesis) triples, for people reading the console.
    """
    step = checkpoint_step(path)
    out_dir = os.path.join(workdir, "eval", split)
    tf.io.gfile.makedirs(out_dir)
    averaged = recent_checkpoints(workdir, upto=path, count=average_last)
    restore(run, averaged)
    began = time.perf_counter()
    sources, references, hypotheses = decode_split(run, split=split, data_dir=data_dir,
                                                   search=search)
    beam_size, alpha = search.beam_size, search.alpha
    row = {"step": step, "split": split, "checkpoint": path, "beam_size": beam_size,
           "alpha": alpha, "averaged": len(averaged), "replicas": search.replicas,
           **score(hypotheses, references, g2p=is_g2p(run.metadata)),
           "decode_seconds": round(time.perf_counter() - began, 2),
           **teacher_forced_scores(run, split=split, data_dir=data_dir)}
    checkpoints.write_text_atomically(os.path.join(out_dir, f"hyp-{step}.txt"),
                                      "".join(h + "\n" for h in hypotheses))
    metrics_path = os.path.join(out_dir, METRICS_FILE)
    previous = read_metrics(metrics_path)
    best_before = max(map(selection_score, previous), default=float("-inf"))
    checkpoints.write_text_atomically(
        metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in previous + [row]))
    with tf.summary.create_file_writer(out_dir).as_default():
        for key in SCALARS:
            if key in row:
                tf.summary.scalar(key, row[key], step=step)
    extra = {k: row[k] for k in SCALARS if k in row}
    logging.info("step %d %s: %s", step, split,
                 "  ".join(f"{k} {v:.2f}" for k, v in extra.items()))
    if export_best and selection_score(row) > best_before:
        export.export_saved_model(
            run.model, source_model=run.source_tokenizer.model,
            target_model=run.target_tokenizer.model,
            export_dir=os.path.join(workdir, "export", "best"), beam_size=beam_size,
            alpha=alpha, **export_options(run),
            info={"step": step, "split": split, "averaged": len(averaged), **extra})
        row["exported"] = os.path.join(workdir, "export", "best")
    row["examples"] = [(source, " | ".join(refs), hypothesis) for source, refs, hypothesis
                       in zip(sources, references, hypotheses)][:EXAMPLES]
    return row


def selection_score(row: dict) -> float:
    """What "best" means for the export: lowest word error rate for G2P, else highest BLEU."""
    return -row["wer"] if "wer" in row else row["bleu"]


def recent_checkpoints(workdir: str, *, upto: str, count: int) -> list[str]:
    """`upto` and the checkpoints just before it that still exist."""
    if count < 1:
        raise EvaluationError(f"average_last must be at least 1, got {count}")
    state = tf.train.get_checkpoint_state(checkpoints.directory(workdir))
    paths = list(state.all_model_checkpoint_paths) if state else []
    paths = [p for p in paths if checkpoint_step(p) <= checkpoint_step(upto)]
    return (paths[-count:] if upto in paths else [upto])


def evaluate(*, workdir: str, data_dir: str, split: str = "dev", watch: bool = False,
             checkpoint: str = "", beam_size: int | None = None, alpha: float | None = None,
             average_last: int = 1, timeout: float = 600.0,
             export_best: bool | None = None, strategy=None,
             jit_compile: bool = False) -> list[dict]:
    """Scores the latest (or a named) checkpoint, or every new one with watch=True.

    The best checkpoint is exported when scoring the dev split (model selection never
    looks at test) unless export_best says otherwise. Decoding is split over `strategy`'s
    replicas and XLA-compiled with jit_compile.
    """
    run = load_run(workdir=workdir, data_dir=data_dir)
    dataset.verified_shard_files(data_dir, split, metadata=run.metadata, count_records=True)
    search = make_search(run, beam_size=beam_size or run.config.decode.beam_size,
                         alpha=run.config.decode.alpha if alpha is None else alpha,
                         strategy=strategy, jit_compile=jit_compile)
    ckpt_dir = checkpoints.directory(workdir)
    kwargs = dict(workdir=workdir, data_dir=data_dir, split=split, search=search,
                  average_last=average_last,
                  export_best=split == "dev" if export_best is None else export_best)
    if not watch:
        path = checkpoint or tf.train.latest_checkpoint(ckpt_dir)
        if not path:
            raise EvaluationError(f"{ckpt_dir} holds no checkpoint to evaluate")
        try:
            return [evaluate_checkpoint(run, path, **kwargs)]
        except tf.errors.NotFoundError as error:
            raise EvaluationError(f"checkpoint {path} cannot be read: {error.message}") from error
    scored = {r["step"] for r in read_metrics(os.path.join(workdir, "eval", split,
                                                           METRICS_FILE))}
    rows = []
    for path in tf.train.checkpoints_iterator(ckpt_dir, timeout=timeout, min_interval_secs=1):
        step = checkpoint_step(path)
        if step in scored:
            logging.info("step %d already scored; skipping", step)
        else:
            try:
                rows.append(evaluate_checkpoint(run, path, **kwargs))
            except tf.errors.NotFoundError:
                logging.warning("checkpoint %s was deleted before it could be read; moving on",
                                path)
                continue
            scored.add(step)
        if step >= run.config.train.num_steps:
            logging.info("reached the final training step %d", step)
            break
    return rows


def export_checkpoint(*, workdir: str, data_dir: str, export_dir: str, checkpoint: str = "",
                      average_last: int = 1, beam_size: int | None = None,
                      alpha: float | None = None, export_format: str = "savedmodel",
                      quantization: str | None = None) -> str:
    """s2s-export: one checkpoint (or an average) to a SavedModel, or to a CTranslate2
    model directory with export_format="ctranslate2", without scoring."""
    run = load_run(workdir=workdir, data_dir=data_dir)
    path = checkpoint or tf.train.latest_checkpoint(checkpoints.directory(workdir))
    if not path:
        raise EvaluationError(f"{workdir} holds no checkpoint to export")
    restore(run, recent_checkpoints(workdir, upto=path, count=average_last))
    if export_format == "ctranslate2":
        from launch import ctranslate2_export
        return ctranslate2_export.export_ctranslate2(
            run.model, source_model=run.source_tokenizer.model,
            target_model=run.target_tokenizer.model, output_dir=export_dir,
            quantization=quantization)
    return export.export_saved_model(
        run.model, source_model=run.source_tokenizer.model,
        target_model=run.target_tokenizer.model, export_dir=export_dir,
        beam_size=beam_size or run.config.decode.beam_size,
        alpha=run.config.decode.alpha if alpha is None else alpha,
        **export_options(run),
        info={"step": checkpoint_step(path)})
