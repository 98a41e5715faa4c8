"""s2s-preprocess: raw parallel text -> SentencePiece model + sharded TFRecords + metadata.json.

    s2s-preprocess --train=tsv:data/train.tsv --split_fractions=dev:0.05,test:0.05 \\
        --output_dir=/tmp/s2s_data [--vocab_size=8000 ...] [Beam pipeline flags]

Flags this module does not define are Beam pipeline options (--runner, --project, ...), so the
same command runs locally or on Dataflow. `build_pipeline` is the library entry point
(orchestrators call it with their own Pipeline); `preprocess` builds, runs and summarizes.
"""

import contextlib
import dataclasses
import fnmatch
import json
import logging as std_logging
import math
import os
import re
import shutil
import sys
import time
import uuid
from typing import Mapping, Optional, Sequence

import apache_beam as beam
from absl import app, flags, logging
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import features, progress, sources, transforms
from pipeline import request as request_lib
from pipeline import tokenizer as tokenizer_lib

# Beam's FnApiRunner is the batch engine behind DirectRunner. Naming it directly honours
# --direct_num_workers/--direct_running_mode and never tries to download the Prism runner.
DEFAULT_LOCAL_RUNNER = "FnApiRunner"
BATCH_SIZE = 2048  # records per Beam element: amortizes per-element cost, keeps bundles small
SHARD_TARGET_BYTES = 128 << 20  # auto sharding: about one shard per 128 MiB of input
MIN_TRAIN_SHARDS = 4  # lets up to 4 trainer hosts read whole files even for tiny data
# Files a run writes to output_dir (and transforms.DEAD_LETTER_FILE); --overwrite replaces
# exactly these and leaves any other file alone.
_OUTPUT_PATTERNS = tuple(features.shard_pattern(split) for split in features.SPLITS) + (
    features.METADATA_FILE, tokenizer_lib.SHARED_MODEL_FILE,
    tokenizer_lib.SOURCE_MODEL_FILE, tokenizer_lib.TARGET_MODEL_FILE)
# A run is written to a staging dir inside output_dir and moved into place at the end.
_STAGING_PREFIX = ".preprocess-staging-"
_STAGING_DIR = re.compile(r"\.preprocess-staging-[0-9a-f]{32}")
_STARTED_FILE = "_STARTED"  # first file of a staging dir: its mtime is the attempt's start
# shard_files.temp_name: ".{output name}.tmp-{uuid4 hex}", renamed into place when complete.
_TEMP_FILE = re.compile(r"\.(?P<name>.+)\.tmp-[0-9a-f]{32}")


class PreprocessError(ValueError):
    """Bad flags or output dir; the message is the one line the user sees."""


class AlreadyCompleted(Exception):
    """output_dir already holds a completed run of the same request: nothing to do.

    Raised by build_pipeline before it adds anything to the pipeline (so do not run it);
    `metadata` is that run's metadata.json and the message the one line to show.
    """

    def __init__(self, message: str, metadata: dict):
        super().__init__(message)
        self.metadata = metadata


# --------------------------------------------------------------------------------------------
# Library API


@dataclasses.dataclass(frozen=True)
class JobPlan:
    """What the Beam graph needs, settled on the driver before anything runs."""
    units: tuple  # read units of every split, in split order
    fractions: Optional[transforms.SplitFractions]  # carve dev/test from train, or None
    check_overlaps: bool  # explicit dev/test given: drop train pairs repeating their sources
    tokenizer: transforms.TokenizerSettings
    output: transforms.OutputSettings
    max_length_ratio: float
    batch_size: int


def build_pipeline(pipeline: beam.Pipeline, *, train: Sequence[str], dev: Sequence[str] = (),
                   test: Sequence[str] = (), split_fractions: Optional[Mapping[str, float]] = None,
                   output_dir: str, vocab_size: int = 8000, model_type: str = "unigram",
                   separate_vocabs: bool = False, tokenizer_model: Optional[str] = None,
                   tokenizer_sample_size: int = 1_000_000, max_length: int = 256,
                   max_length_ratio: float = 9.0, num_shards: int = 0, overwrite: bool = False,
                   tfds_data_dir: Optional[str] = None,
                   locale_dir: str = sources.DEFAULT_LOCALE_DIR,
                   batch_size: int = BATCH_SIZE) -> beam.PCollection:
    """Adds the preprocess job to `pipeline`; returns the PCollection of the final metadata.

    Checks everything it can on the driver first (specs, files, parallel line counts, a given
    tokenizer, the output dir) and raises PreprocessError / SourceError / TokenizerError
    before writing anything. Then it prepares output_dir: outputs of an earlier run (completed
    or not) are refused unless overwrite=True, except that a completed run of the very same
    request (settings and input contents, see pipeline/request.py) raises AlreadyCompleted:
    the caller has nothing to run. The job writes into a staging dir inside output_dir; its
    last step (publish_staged_output) replaces the earlier run's files, so a job that fails
    before then leaves them as they were.
    """
    fractions = _check_settings(dev=dev, test=test, split_fractions=split_fractions,
                                vocab_size=vocab_size, model_type=model_type,
                                max_length=max_length, max_length_ratio=max_length_ratio,
                                num_shards=num_shards, tokenizer_sample_size=tokenizer_sample_size)
    if not train:
        raise PreprocessError("--train is required (e.g. --train=tsv:data/train.tsv)")
    specs = {"train": list(train), "dev": list(dev), "test": list(test)}
    resolved = {split: [(spec, sources.resolve_spec(
        spec, split=split, tfds_data_dir=tfds_data_dir, locale_dir=locale_dir))
        for spec in split_specs] for split, split_specs in specs.items()}
    units = {split: [unit for _, spec_units in resolved[split] for unit in spec_units]
             for split in resolved}
    tokenizer = transforms.TokenizerSettings(
        vocab_size=vocab_size, model_type=model_type, shared=not separate_vocabs,
        sample_size=tokenizer_sample_size)
    if tokenizer_model:
        tokenizer = _given_tokenizer(tokenizer_model, tokenizer)
    shards = _num_shards(units, fractions, requested=num_shards)
    # Every setting that shapes the output; batch_size does not (shards are byte-identical
    # whatever the batching), nor do output_dir, overwrite and the Beam runner options.
    try:
        request = request_lib.describe_request(resolved, settings={
            "train": specs["train"], "dev": specs["dev"], "test": specs["test"],
            "split_fractions": ({name: float(value) for name, value in split_fractions.items()}
                                if split_fractions else None),
            "vocab_size": int(vocab_size), "model_type": model_type,
            "separate_vocabs": bool(separate_vocabs), "tokenizer_model": tokenizer_model or None,
            "tokenizer_sample_size": int(tokenizer_sample_size), "max_length": int(max_length),
            "max_length_ratio": float(max_length_ratio), "num_shards": int(num_shards),
            "tfds_data_dir": tfds_data_dir, "gettext_locale_dir": locale_dir},
            tokenizer_paths=[p for p in (tokenizer_model or "").split(",") if p])
    except request_lib.UnreadableInput as error:
        raise PreprocessError(str(error)) from None
    staging_dir = _prepare_output_dir(output_dir, overwrite=overwrite, request=request)
    logging.info("preprocess: %s -> %s (shards %s, staged in %s)", specs, output_dir, shards,
                 staging_dir)
    plan = JobPlan(
        units=tuple(unit for split in features.SPLITS for unit in units[split]),
        fractions=fractions, check_overlaps=bool(dev or test), tokenizer=tokenizer,
        output=transforms.OutputSettings(
            output_dir=staging_dir, num_shards=shards, max_length=max_length,
            max_length_ratio=max_length_ratio,
            sources={split: spec_list for split, spec_list in specs.items() if spec_list},
            split_fractions=dict(split_fractions or {}) or None, request=request,
            eval_origins={split: [unit.origin for unit in units[split]]
                          for split in ("dev", "test")}),
        max_length_ratio=max_length_ratio, batch_size=batch_size)
    # The Reshuffle keeps a retried Publish from rerunning WriteMetadata, which would fill
    # the staging dir's already-moved shards with empty ones.
    return (add_transforms(pipeline, plan)
            | "StagedRun" >> beam.Reshuffle()
            | "Publish" >> beam.Map(publish_staged_output, staging_dir=staging_dir,
                                    output_dir=output_dir).with_output_types(dict))


def add_transforms(pipeline: beam.Pipeline, plan: JobPlan) -> beam.PCollection:
    """The Beam graph, one named stage (pipeline/transforms.py) after another."""
    output = plan.output
    cleaned = (pipeline
               | "Read" >> transforms.ReadRecords(plan.units, batch_size=plan.batch_size)
               | "Clean" >> transforms.CleanRecords(fractions=plan.fractions,
                                                    emit_eval_keys=plan.check_overlaps))
    tokenizer = (cleaned["pairs"] | "TrainTokenizer" >> transforms.TrainTokenizer(plan.tokenizer)
                 if plan.tokenizer.trained else None)  # else the given model files are read
    tokenized = cleaned["pairs"] | "Tokenize" >> transforms.TokenizeExamples(
        max_length=output.max_length, max_length_ratio=plan.max_length_ratio,
        num_shards=output.num_shards, tokenizer_settings=plan.tokenizer, tokenizer=tokenizer,
        eval_keys=cleaned["eval_keys"] if plan.check_overlaps else None)
    shards = tokenized["examples"] | "WriteShards" >> transforms.WriteShards(
        output_dir=output.output_dir, num_shards=output.num_shards)
    dead_letters = cleaned["dead_letters"] | "WriteDeadLetters" >> transforms.WriteDeadLetters(
        output_dir=output.output_dir)
    return ((cleaned["stats"], tokenized["stats"], shards["stats"], dead_letters)
            | "SumStats" >> transforms.SumStats()
            | "WriteMetadata" >> transforms.WriteMetadata(
                settings=output, tokenizer_settings=plan.tokenizer, shards=shards["shards"],
                tokenizer=tokenizer))


def preprocess(*, pipeline_options: PipelineOptions, **job) -> dict:
    """Builds and runs the job (keyword arguments as build_pipeline); returns metadata.json.

    When output_dir already holds a completed run of the same request (say, an
    orchestrator retries a step that had finished), nothing runs: that run's metadata.
    """
    return preprocess_or_reuse(pipeline_options=pipeline_options, **job)[0]


def preprocess_or_reuse(*, pipeline_options: PipelineOptions,
                        **job) -> tuple[dict, Optional[str]]:
    """As preprocess; also returns the one-line note when an earlier run was reused, or None."""
    pipeline = beam.Pipeline(options=pipeline_options)
    progress.reset()
    earlier_stamp = _completed_stamp(job.get("output_dir"))
    try:
        build_pipeline(pipeline, **job)
    except AlreadyCompleted as done:
        shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)
        logging.info("%s", done)
        return done.metadata, str(done)
    except Exception:  # Pipeline.run() removes its temp dir; a job that never runs must too
        shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)
        raise
    try:
        with _user_errors_without_tracebacks():
            result = pipeline.run()
            state = result.wait_until_finish()
    except Exception as error:  # a worker failure comes back as one long traceback string
        left = _left_after_failure(job["output_dir"], earlier_stamp=earlier_stamp)
        user_error = _user_error_in(error)
        if user_error:
            raise PreprocessError(f"{user_error}; {left}") from None
        error.add_note(f"s2s-preprocess: {left}")
        raise
    if state not in (None, beam.runners.runner.PipelineState.DONE):
        left = _left_after_failure(job["output_dir"], earlier_stamp=earlier_stamp)
        raise PreprocessError(f"the Beam job ended in state {state}; {left}")
    return read_metadata(job["output_dir"]), None


def pipeline_options_from_argv(argv: Sequence[str]) -> PipelineOptions:
    """Beam options from the flags s2s-preprocess does not define; typos are errors."""
    options = PipelineOptions(list(argv))
    unknown = (set(options.get_all_options(retain_unknown_options=True))
               - set(options.get_all_options()))
    if unknown:
        raise PreprocessError(f"unknown flag(s): {', '.join('--' + n for n in sorted(unknown))}")
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = DEFAULT_LOCAL_RUNNER
    return options


def read_metadata(output_dir: str) -> dict:
    """metadata.json as a dict (the trainer uses pipeline.dataset.load_metadata, no Beam)."""
    import tensorflow as tf
    with tf.io.gfile.GFile(os.path.join(output_dir, features.METADATA_FILE), "r") as stream:
        return json.load(stream)


def format_summary(metadata: dict) -> str:
    """A table of read / written / dropped-by-reason per split, for the end of a run."""
    splits = [split for split in features.SPLITS if split in metadata["splits"]]
    reasons = []
    for counts in metadata["splits"].values():
        reasons += [r for r, n in counts["dropped"].items()
                    if r not in reasons and (n or r in transforms.CORE_REASONS)]
    rows = [("", *splits), ("read", *(metadata["splits"][s]["read"] for s in splits)),
            ("written", *(metadata["splits"][s]["written"] for s in splits))]
    rows += [(f"dropped.{reason}", *(metadata["splits"][s]["dropped"].get(reason, 0)
                                     for s in splits)) for reason in reasons]
    rows.append(("shards", *(metadata["splits"][s]["num_shards"] for s in splits)))
    width = max(len(str(row[0])) for row in rows)
    columns = [max(len(str(row[i])) for row in rows) for i in range(1, len(splits) + 1)]
    lines = [" ".join([str(row[0]).ljust(width)]
                      + [str(v).rjust(w) for v, w in zip(row[1:], columns)]) for row in rows]
    tokenizer = metadata["tokenizer"]
    lines.append(f"tokenizer: {tokenizer['path']} ({tokenizer['model_type']}, vocab "
                 f"{metadata['vocab_size']}, sha256 {tokenizer['sha256'][:12]}...)  "
                 f"bucket_boundaries: {metadata['bucket_boundaries']}")
    dead = metadata.get("dead_letter", {})
    if dead.get("count"):
        lines.append(f"dead letters: {dead['count']} in {dead['path']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Driver-side checks


def parse_split_fractions(text: str) -> dict:
    """"dev:0.05,test:0.05" -> {"dev": 0.05, "test": 0.05}."""
    fractions = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, colon, value = item.partition(":")
        try:
            fraction = float(value)
        except ValueError:
            fraction = None
        if not colon or name not in ("dev", "test") or fraction is None or name in fractions:
            raise PreprocessError(f"bad --split_fractions {text!r}: expected e.g. "
                                  "dev:0.05,test:0.05")
        fractions[name] = fraction
    return fractions


def _check_settings(*, dev, test, split_fractions, vocab_size, model_type, max_length,
                    max_length_ratio, num_shards, tokenizer_sample_size):
    """Validates numbers and split settings; returns SplitFractions or None."""
    if model_type not in tokenizer_lib.MODEL_TYPES:
        raise PreprocessError(f"--model_type must be unigram, bpe or wordpiece, "
                              f"got {model_type!r}")
    for name, value, minimum in (("vocab_size", vocab_size, 8), ("max_length", max_length, 2),
                                 ("num_shards", num_shards, 0),
                                 ("tokenizer_sample_size", tokenizer_sample_size, 1)):
        if value < minimum:
            raise PreprocessError(f"--{name} must be >= {minimum}, got {value}")
    if max_length_ratio < 0:
        raise PreprocessError(f"--max_length_ratio must be >= 0 (0 disables), "
                              f"got {max_length_ratio}")
    if not split_fractions:
        return None
    given = {"dev": bool(dev), "test": bool(test)}
    for name, fraction in split_fractions.items():
        if name not in given:
            raise PreprocessError(f"--split_fractions: unknown split {name!r} (dev or test)")
        if given[name]:
            raise PreprocessError(f"--split_fractions carves {name} but --{name} is also given")
        if not 0 < fraction < 1:
            raise PreprocessError(f"--split_fractions: {name} fraction {fraction} not in (0, 1)")
    if sum(split_fractions.values()) >= 1:
        raise PreprocessError(f"--split_fractions {split_fractions} leave nothing for train")
    return transforms.SplitFractions(dev=split_fractions.get("dev", 0.0),
                                     test=split_fractions.get("test", 0.0))


def _given_tokenizer(paths: str, settings):
    """Checks --tokenizer_model (PATH, or SRC_PATH,TGT_PATH with --separate_vocabs) now."""
    parts = [p for p in paths.split(",") if p]
    if settings.shared and len(parts) != 1:
        raise PreprocessError("--tokenizer_model takes one PATH (or SRC_PATH,TGT_PATH together "
                              "with --separate_vocabs)")
    if not settings.shared and len(parts) != 2:
        raise PreprocessError("--separate_vocabs with --tokenizer_model needs SRC_PATH,TGT_PATH")
    models = [tokenizer_lib.read_model_bytes(path) for path in parts]
    for path, model in zip(parts, models):
        tokenizer_lib.load_processor(model)  # fails clearly on a bad model or special ids
    if len({tokenizer_lib.kind_of(model) for model in models}) > 1:
        raise PreprocessError(f"--tokenizer_model: {parts[0]} and {parts[1]} are of different "
                              "kinds (SentencePiece and WordPiece)")
    return transforms.TokenizerSettings(
        vocab_size=settings.vocab_size, model_type=tokenizer_lib.model_type_of(models[0]),
        shared=settings.shared, sample_size=settings.sample_size,
        source_model_path=parts[0], target_model_path=parts[-1])


def _num_shards(units: Mapping[str, list], fractions, *, requested: int) -> dict:
    """Shards per split: --num_shards for every split, or about one per 128 MiB of input."""
    present = [split for split in features.SPLITS if units[split]]
    if fractions is not None:
        present += [s for s in ("dev", "test") if getattr(fractions, s) and s not in present]
    present = [s for s in features.SPLITS if s in present]
    if requested:
        return {split: requested for split in present}
    train_bytes = sum(unit.size_bytes() for unit in units["train"])
    shards = {}
    for split in present:
        if units[split]:
            size = sum(unit.size_bytes() for unit in units[split])
        else:
            size = train_bytes * getattr(fractions, split)
        minimum = MIN_TRAIN_SHARDS if split == "train" else 1
        shards[split] = max(minimum, min(1024, math.ceil(size / SHARD_TARGET_BYTES)))
    return shards


def _completed_run_outcome(output_dir: str, request: Optional[dict]) -> Exception:
    """AlreadyCompleted if output_dir's completed run is of `request`, else the refusal."""
    import tensorflow as tf
    try:
        metadata = read_metadata(output_dir)
    except (tf.errors.OpError, ValueError):
        metadata = None
    recorded = (metadata or {}).get("request") if isinstance(metadata, dict) else None
    if not isinstance(recorded, dict) or not recorded.get("fingerprint"):
        return PreprocessError(
            f"{output_dir} already holds a completed preprocess run that recorded no "
            "fingerprint of its inputs and settings; pass --overwrite to replace it")
    if request is not None and recorded["fingerprint"] == request["fingerprint"]:
        missing = sorted(name for name in _files_of_run(metadata)
                         if not tf.io.gfile.exists(os.path.join(output_dir, name)))
        if missing:
            return PreprocessError(
                f"{output_dir} holds a completed run of these inputs and settings, but "
                f"{', '.join(missing[:3])} {'is' if len(missing) == 1 else 'are'} missing; "
                "pass --overwrite to recompute it")
        return AlreadyCompleted(
            f"s2s-preprocess: {output_dir} already holds a completed run of these inputs and "
            f"settings (created_at {metadata.get('created_at')}); nothing to do", metadata)
    differences = request_lib.request_differences(recorded, request or {})
    return PreprocessError(
        f"{output_dir} already holds a completed preprocess run of other inputs or settings "
        f"({'; '.join(differences) or 'its recorded fingerprint differs'}); "
        "pass --overwrite to replace it")


def _prepare_output_dir(output_dir: str, *, overwrite: bool,
                        request: Optional[dict] = None) -> str:
    """Refuses to replace earlier outputs unless overwrite; returns this attempt's staging dir.

    A completed run of the same `request` (request_lib.describe_request) raises
    AlreadyCompleted. Any
    other completed run is refused, naming what differs, and so is the debris of an
    unfinished one (shards, metadata, models): replacing them needs the user's --overwrite.
    Nothing of theirs is deleted here: they stay readable until publish_staged_output
    replaces them at the end. Temp files and staging dirs that earlier attempts left
    behind are removed.
    """
    import tensorflow as tf
    completed = os.path.join(output_dir, features.COMPLETED_FILE)
    try:
        if tf.io.gfile.exists(completed) and not overwrite:
            raise _completed_run_outcome(output_dir, request)
        old_outputs = _earlier_outputs(output_dir)
        if old_outputs and not overwrite:
            raise PreprocessError(f"{output_dir} holds outputs of an unfinished earlier run "
                                  f"(e.g. {old_outputs[0]}); pass --overwrite to replace them")
        staging_dir = _start_staging_dir(output_dir)
        _remove_stale_temps(output_dir, current_staging_dir=staging_dir)
    except tf.errors.OpError as error:
        raise PreprocessError(
            f"cannot prepare --output_dir {output_dir}: {error.message}") from None
    return staging_dir


def _completed_stamp(output_dir: Optional[str]) -> Optional[str]:
    """The text of output_dir/_COMPLETED (its run's created_at), or None if there is none."""
    import tensorflow as tf
    if not output_dir:
        return None
    try:
        with tf.io.gfile.GFile(os.path.join(output_dir, features.COMPLETED_FILE), "r") as stream:
            return stream.read()
    except tf.errors.OpError:
        return None


def _left_after_failure(output_dir: str, *, earlier_stamp: Optional[str]) -> str:
    """What a failed job left in output_dir, in words for the end of its error message."""
    import tensorflow as tf
    stamp = _completed_stamp(output_dir)
    if stamp is not None and stamp == earlier_stamp:
        return f"{output_dir} still holds the earlier complete run, unchanged"
    if stamp is not None:
        return f"{output_dir} holds this run's complete output"
    try:
        leftovers = _earlier_outputs(output_dir)
    except tf.errors.OpError as error:
        return f"could not check {output_dir}: {error.message}"
    if leftovers:
        return (f"{output_dir} is incomplete (no {features.COMPLETED_FILE}): rerun with "
                "--overwrite")
    return f"nothing was published to {output_dir}"


def _earlier_outputs(output_dir: str) -> list:
    """Names (relative to output_dir) of the files a run wrote there; user files excluded."""
    import tensorflow as tf
    names = [name for name in _listdir(output_dir)
             if any(fnmatch.fnmatchcase(name, pattern) for pattern in _OUTPUT_PATTERNS)]
    if tf.io.gfile.exists(os.path.join(output_dir, transforms.DEAD_LETTER_FILE)):
        names.append(transforms.DEAD_LETTER_FILE)
    return sorted(names)


def _start_staging_dir(output_dir: str) -> str:
    """Creates this attempt's staging dir inside output_dir (same bucket, cheap renames)."""
    import tensorflow as tf
    staging_dir = os.path.join(output_dir, _STAGING_PREFIX + uuid.uuid4().hex)
    tf.io.gfile.makedirs(staging_dir)
    with tf.io.gfile.GFile(os.path.join(staging_dir, _STARTED_FILE), "w") as stream:
        stream.write(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
    return staging_dir


def _remove_stale_temps(output_dir: str, *, current_staging_dir: str) -> list:
    """Deletes the temp files and staging dirs that earlier attempts left in output_dir.

    Only the project's own names (_TEMP_FILE of an output name, _STAGING_DIR), and only
    those last written before this attempt started: a concurrent attempt's newer files stay.
    The start is the mtime of this attempt's _STARTED file, so every time compared comes
    from the storage's clock, never the driver's. Returns the deleted paths.
    """
    import tensorflow as tf
    started = tf.io.gfile.stat(os.path.join(current_staging_dir, _STARTED_FILE)).mtime_nsec
    current = os.path.basename(current_staging_dir)
    dead_letter_dir = os.path.join(output_dir, transforms.DEAD_LETTER)
    dead_letter_name = os.path.basename(transforms.DEAD_LETTER_FILE)
    candidates = [os.path.join(output_dir, name) for name in _listdir(output_dir)
                  if _is_temp_of(name, _OUTPUT_PATTERNS)
                  or (_STAGING_DIR.fullmatch(name) and name != current)]
    candidates += [os.path.join(dead_letter_dir, name) for name in _listdir(dead_letter_dir)
                   if _is_temp_of(name, (dead_letter_name,))]
    stale = [path for path in candidates if _newest_mtime_nsec(path) < started]
    for path in stale:
        logging.info("removing %s, left by an earlier attempt", path)
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        else:
            tf.io.gfile.remove(path)
    return stale


def _is_temp_of(name: str, patterns: Sequence[str]) -> bool:
    """True for transforms' temp name of a file matching one of `patterns`."""
    temp = _TEMP_FILE.fullmatch(name)
    return bool(temp) and any(fnmatch.fnmatchcase(temp.group("name"), pattern)
                              for pattern in patterns)


def _newest_mtime_nsec(path: str) -> int:
    """mtime of a file, or of the newest file under a directory (0 for an empty one)."""
    import tensorflow as tf
    if not tf.io.gfile.isdir(path):
        return tf.io.gfile.stat(path).mtime_nsec
    return max((tf.io.gfile.stat(os.path.join(directory, name)).mtime_nsec
                for directory, _, names in tf.io.gfile.walk(path) for name in names),
               default=0)


def _listdir(directory: str) -> list:
    """Entry names of a directory ([] if there is none); gs:// marks dirs with a '/'."""
    import tensorflow as tf
    if not tf.io.gfile.isdir(directory):
        return []
    return [name.rstrip("/") for name in tf.io.gfile.listdir(directory)]


def publish_staged_output(metadata: dict, *, staging_dir: str, output_dir: str) -> dict:
    """Moves a complete staged run into output_dir, replacing an earlier run's files.

    gs:// has no atomic directory rename, so _COMPLETED, written last, is the commit point.
    The steps, each safe to repeat when the runner retries this one:
      1. check that every file the metadata names is staged (or moved by an earlier try);
      2. remove output_dir/_COMPLETED: from here until step 5 readers refuse the directory;
      3. delete the earlier run's files that the new run does not replace (other shard
         counts, a dead-letter file or model files the new run does not have);
      4. rename every staged file into place, replacing the earlier file of the same name;
      5. write _COMPLETED, then delete the staging dir.
    A failure before step 2 leaves the earlier output complete and readable; one in steps
    2-4 (only I/O errors are left by then) leaves a directory readers refuse, which a rerun
    with --overwrite replaces.
    """
    import tensorflow as tf
    names = _files_of_run(metadata)
    try:
        _check_staged(names, staging_dir=staging_dir, output_dir=output_dir)
        _replace_earlier_run(names, staging_dir=staging_dir, output_dir=output_dir,
                             created_at=metadata["created_at"])
    except tf.errors.OpError as error:
        raise PreprocessError(f"cannot publish the run staged in {staging_dir}: "
                              f"{error.message}") from None
    logging.info("published %d files to %s", len(names), output_dir)
    return metadata


def _check_staged(names: set, *, staging_dir: str, output_dir: str) -> None:
    """Step 1: every file is staged, or in output_dir already when this is a retry."""
    import tensorflow as tf
    missing = sorted(name for name in names
                     if not any(tf.io.gfile.exists(os.path.join(directory, name))
                                for directory in (staging_dir, output_dir)))
    if missing:
        raise PreprocessError(f"the staged run in {staging_dir} lacks {', '.join(missing[:3])}; "
                              f"{output_dir} was left as it was")


def _replace_earlier_run(names: set, *, staging_dir: str, output_dir: str,
                         created_at: str) -> None:
    """Steps 2-5 of publish_staged_output; `names` are the new run's files."""
    import tensorflow as tf
    completed = os.path.join(output_dir, features.COMPLETED_FILE)
    if tf.io.gfile.exists(completed):
        tf.io.gfile.remove(completed)
    for name in _earlier_outputs(output_dir):
        if name not in names:
            tf.io.gfile.remove(os.path.join(output_dir, name))
    dead_letter_dir = os.path.join(output_dir, transforms.DEAD_LETTER)
    if tf.io.gfile.isdir(dead_letter_dir) and not tf.io.gfile.listdir(dead_letter_dir):
        tf.io.gfile.rmtree(dead_letter_dir)
    for name in _staged_files(staging_dir):
        _move_into_place(os.path.join(staging_dir, name), os.path.join(output_dir, name))
    with tf.io.gfile.GFile(completed, "w") as stream:
        stream.write(created_at + "\n")
    if tf.io.gfile.isdir(staging_dir):
        tf.io.gfile.rmtree(staging_dir)


def _files_of_run(metadata: dict) -> set:
    """Names (relative to the output dir) of every file a run's metadata.json describes."""
    names = {transforms.shard_name(split, shard, count)
             for split, count in metadata["num_shards"].items() for shard in range(count)}
    names |= {metadata["tokenizer"][side]["path"] for side in ("source", "target")}
    names.add(features.METADATA_FILE)
    if metadata["dead_letter"]["count"]:
        names.add(metadata["dead_letter"]["path"])
    return names


def _staged_files(staging_dir: str) -> list:
    """Names (relative to staging_dir) of the staged outputs: markers and temps excluded."""
    import tensorflow as tf
    if not tf.io.gfile.isdir(staging_dir):
        return []
    root = staging_dir.rstrip("/") + "/"
    found = []
    for directory, _, names in tf.io.gfile.walk(staging_dir):
        prefix = (directory.rstrip("/") + "/")[len(root):]
        found += [prefix + name for name in names
                  if not (_TEMP_FILE.fullmatch(name)
                          or (not prefix and name in (_STARTED_FILE, features.COMPLETED_FILE)))]
    return sorted(found)


def _move_into_place(source: str, destination: str) -> None:
    """One staged file into output_dir (on gs:// a copy then a delete; readers see it whole)."""
    import tensorflow as tf
    tf.io.gfile.makedirs(os.path.dirname(destination))
    tf.io.gfile.rename(source, destination, overwrite=True)


_USER_ERROR = re.compile(r"\b(?:SourceError|TokenizerError|PreprocessError): ([^\n]+)")


class _DropUserErrorLogs(std_logging.Filter):
    """Drops Beam's log record (with traceback) of a worker failure that is one of ours."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f"\n{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        return not _USER_ERROR.search(text)


@contextlib.contextmanager
def _user_errors_without_tracebacks():
    """Bad input found inside the job is reported as one line by main(), not as a traceback."""
    handlers = std_logging.getLogger().handlers
    log_filter = _DropUserErrorLogs()
    for handler in handlers:
        handler.addFilter(log_filter)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(log_filter)


def _user_error_in(error: Exception) -> Optional[str]:
    """The one-line message of one of our errors raised inside a Beam worker, if any."""
    if isinstance(error, (sources.SourceError, tokenizer_lib.TokenizerError, PreprocessError)):
        return str(error)
    found = _USER_ERROR.findall(str(error))
    return found[-1].strip().strip("'\"") if found else None


# --------------------------------------------------------------------------------------------
# Command line

def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The s2s-preprocess flags (a separate FlagValues lets tests parse without collisions)."""
    def define(kind, name, default, help_text):
        getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=flag_values)

    define("multi_string", "train", [], "Training source SPEC (repeatable): tsv:PATH, "
           "text:SRC_PATH,TGT_PATH, tfds:NAME[:SPLIT], gettext:LANG, cmudict, cmudict:all.")
    define("multi_string", "dev", [], "Dev source SPEC (repeatable).")
    define("multi_string", "test", [], "Test source SPEC (repeatable).")
    define("string", "split_fractions", None, "Carve splits out of --train by a hash of the "
           "source text, e.g. dev:0.05,test:0.05.")
    define("string", "output_dir", None, "Output directory (local or gs://).")
    define("integer", "vocab_size", 8000, "Tokenizer vocabulary size (a soft limit: "
           "smaller corpora get a smaller vocabulary).")
    flags.DEFINE_enum("tokenizer", tokenizer_lib.SENTENCEPIECE, list(tokenizer_lib.KINDS),
                      "Tokenizer to train: SentencePiece (--model_type) or WordPiece "
                      "(tensorflow-text's learner; keeps case and spacing).",
                      flag_values=flag_values)
    flags.DEFINE_enum("model_type", "unigram", list(tokenizer_lib.SENTENCEPIECE_TYPES),
                      "SentencePiece model type.", flag_values=flag_values)
    define("bool", "separate_vocabs", False, "Train separate source and target models.")
    define("string", "tokenizer_model", None, "Use this tokenizer (a SentencePiece .model or "
           "a WordPiece .vocab) instead of training one "
           "(SRC_PATH,TGT_PATH with --separate_vocabs); workers must be able to read it.")
    define("integer", "tokenizer_sample_size", 1_000_000, "Sentences (per model) sampled "
           "deterministically from the cleaned train data to train the tokenizer.")
    define("integer", "max_length", 256, "Drop pairs with more subword tokens (incl. EOS).")
    define("float", "max_length_ratio", 9.0, "Drop pairs whose token counts differ by more "
           "than this factor (when the shorter side has >= 3 tokens); 0 disables.")
    define("integer", "num_shards", 0, "Shards per split; 0 = about one per 128 MiB of input, "
           "at least 4 for train and 1 for dev/test.")
    define("bool", "overwrite", False, "Replace the outputs of an earlier run in --output_dir "
           "(they stay complete and readable until the new run has finished). Without it, a "
           "completed run of the same inputs and settings is kept and the command exits 0.")
    define("string", "tfds_data_dir", None, "data_dir of prepared TFDS datasets.")
    define("string", "gettext_locale_dir", sources.DEFAULT_LOCALE_DIR,
           "Where gettext:LANG looks for LANG/LC_MESSAGES/*.mo.")


def _fail(message: str) -> None:
    sys.stderr.write(f"s2s-preprocess: error: {message}\n")
    sys.exit(2)


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> list:
    """absl parses our flags; everything else stays in argv for Beam's PipelineOptions."""
    try:
        return flag_values(list(argv), known_only=True)
    except flags.Error as error:
        _fail(str(error))


def main(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Runs the job from parsed flags; bad input ends in one error line and exit code 2."""
    values = flag_values
    stray = [arg for arg in argv[1:] if not arg.startswith("-")]
    if stray:  # Beam would discard them with a warning
        _fail(f"unexpected argument(s): {' '.join(stray)}")
    try:
        options = pipeline_options_from_argv(argv[1:])
        if not values.output_dir:
            raise PreprocessError("--output_dir is required")
        metadata, reused = preprocess_or_reuse(
            pipeline_options=options, train=values.train, dev=values.dev, test=values.test,
            split_fractions=parse_split_fractions(values.split_fractions or ""),
            output_dir=values.output_dir, vocab_size=values.vocab_size,
            model_type=(tokenizer_lib.WORDPIECE if values.tokenizer == tokenizer_lib.WORDPIECE
                        else values.model_type),
            separate_vocabs=values.separate_vocabs,
            tokenizer_model=values.tokenizer_model,
            tokenizer_sample_size=values.tokenizer_sample_size, max_length=values.max_length,
            max_length_ratio=values.max_length_ratio, num_shards=values.num_shards,
            overwrite=values.overwrite, tfds_data_dir=values.tfds_data_dir,
            locale_dir=values.gettext_locale_dir)
    except (PreprocessError, sources.SourceError, tokenizer_lib.TokenizerError) as error:
        _fail(str(error))
    if reused:  # a retry of a run that had finished: exit 0 without redoing it
        print(reused)
        return
    print(format_summary(metadata))
    print(f"wrote {values.output_dir}")


def run() -> None:
    """Console entry point `s2s-preprocess`."""
    define_flags()
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
