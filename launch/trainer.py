"""The custom training loop: one code path for every tf.distribute strategy.

A `tf.function` runs `steps_per_loop` steps per host call. Each step pulls this worker's
batch from a host-level, checkpointable tf.data iterator, splits it across the local
replicas, computes gradients of the token-summed loss, all-reduces them, divides by the
GLOBAL number of real target tokens, clips the global norm and applies them. A step whose
gradients are not finite is skipped: by the LossScaleOptimizer under float16, by
optim.SkipNonFinite (no loss scale) otherwise.
"""

import contextlib
import dataclasses
import json
import os
import signal
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

import models
from launch import (checkpoints, early_stopping, optim, precision, scheduled_sampling,
                    shared_files, strategy as strategy_lib, teacher_forcing, vocab_map,
                    vocabulary, warm_start)
from pipeline import dataset, features, tokenizer as tokenizer_lib

MIXED_PRECISION = precision.POLICIES + (precision.AUTO,)
CONFIG_FILE = "config.json"
DEV_LOSS_FILE = "dev_loss.jsonl"  # in WORKDIR/train/: early stopping's own dev measurements


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why."""


def validate_config(config) -> None:
    """Checks every value the trainer relies on, before anything touches the workdir."""
    train, data, opt = config.train, config.data, config.optimizer
    positive = {
        "train.num_steps": train.num_steps, "train.steps_per_loop": train.steps_per_loop,
        "train.grad_accum_steps": train.grad_accum_steps,
        "train.checkpoint_every_steps": train.checkpoint_every_steps,
        "train.keep_checkpoints": train.keep_checkpoints,
        "train.log_every_steps": train.log_every_steps,
        "train.max_nonfinite_steps": train.max_nonfinite_steps,
        "data.tokens_per_batch": data.tokens_per_batch,
    }
    for name, value in positive.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"config.{name} must be a positive integer, got {value!r}")
    if not isinstance(train.preemption_check_seconds, (int, float)) or not (
            train.preemption_check_seconds > 0):
        raise ValueError("config.train.preemption_check_seconds must be > 0, got "
                         f"{train.preemption_check_seconds!r}")
    if train.init_vocab_map and not train.init_from:
        raise ValueError("config.train.init_vocab_map needs config.train.init_from")
    if train.init_vocab_map and train.init_optimizer:
        raise ValueError("config.train.init_vocab_map cannot carry the optimizer state "
                         "(its moments are vocabulary-sized); leave init_optimizer False")
    if not isinstance(train.lease_seconds, (int, float)) or not train.lease_seconds > 0:
        raise ValueError(f"config.train.lease_seconds must be > 0, got {train.lease_seconds!r}")
    if train.mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"config.train.mixed_precision={train.mixed_precision!r} is not one "
                         f"of {MIXED_PRECISION}")
    if opt.name not in optim.OPTIMIZERS:
        raise ValueError(f"config.optimizer.name={opt.name!r} is not one of {optim.OPTIMIZERS}")
    if opt.schedule not in optim.SCHEDULES:
        raise ValueError(f"config.optimizer.schedule={opt.schedule!r} is not one of "
                         f"{optim.SCHEDULES}")
    if not opt.learning_rate > 0 or opt.warmup_steps < 0 or opt.clip_norm < 0:
        raise ValueError("config.optimizer: learning_rate must be > 0, warmup_steps and "
                         "clip_norm >= 0")
    if not 0.0 <= train.label_smoothing < 1.0:
        raise ValueError(f"config.train.label_smoothing={train.label_smoothing} not in [0, 1)")
    if any(int(b) <= 0 for b in data.bucket_boundaries):
        raise ValueError(f"config.data.bucket_boundaries must be positive: "
                         f"{data.bucket_boundaries}")
    early_stopping.policy_from_config(config)
    if "scheduled_sampling" in train:
        scheduled_sampling.validate(train.scheduled_sampling)
    # Building the model config catches bad model names and hyperparameters now.
    model_config = config.model.copy_and_resolve_references()
    model_config.unlock()
    vocabulary.resolve_model_config(model_config, layout=vocabulary.SHARED)
    models.model_config_from(model_config, source_vocab_size=8, target_vocab_size=8,
                             pad_id=0, eos_id=1, bos_id=2)


def resolve_config(config, metadata: dict, *, strategy: tf.distribute.Strategy):
    """Fills the values that come from the data (vocabularies, embedding sharing, special
    ids, boundaries) and from the hardware (an "auto" mixed-precision policy).

    Raises:
        vocabulary.VocabularyError: share_embeddings=True on separate vocabularies.
    """
    config = config.copy_and_resolve_references()
    config.unlock()
    config.train.mixed_precision = precision.resolve_policy(config.train.mixed_precision,
                                                            strategy=strategy)
    boundaries = list(config.data.bucket_boundaries) or list(metadata["bucket_boundaries"])
    if config.data.max_length:
        boundaries = [b for b in boundaries if b < config.data.max_length]
        boundaries.append(config.data.max_length)
    config.data.bucket_boundaries = tuple(int(b) for b in boundaries)
    config.data.tokenizer_sha256 = metadata["tokenizer"]["sha256"]
    layout = vocabulary.layout_of(metadata)
    config.data.vocabulary_layout = layout["layout"]
    for key in ("source_vocab_size", "target_vocab_size"):
        config.data[key] = layout[key]
    vocabulary.resolve_model_config(config.model, layout=layout["layout"])
    for key in ("pad_id", "eos_id", "bos_id"):
        config.data[key] = int(metadata[key])
    config.lock()
    return config


def check_resume_compatible(saved: dict, config) -> None:
    """Refuses to continue a workdir with another vocabulary layout, tokenizer or model
    architecture; warns when the precision policy changed. `saved`: read_saved_config."""
    old_layout = saved.get("data", {}).get("vocabulary_layout")
    if old_layout and old_layout != config.data.vocabulary_layout:
        raise TrainingError(
            f"the workdir was trained on a {old_layout} source/target vocabulary but "
            f"--data_dir has a {config.data.vocabulary_layout} one: its embeddings do not "
            "fit; use a new --workdir or the original data")
    old_sha = saved.get("data", {}).get("tokenizer_sha256")
    if old_sha and old_sha != config.data.tokenizer_sha256:
        raise TrainingError(
            f"the workdir was trained with tokenizer sha256 {old_sha[:12]}... but --data_dir "
            f"has {config.data.tokenizer_sha256[:12]}...: token ids would not match; use a "
            "new --workdir or the original data")
    new_model = config.model.to_dict()
    old_model = saved.get("model", {})
    changed = sorted(k for k in set(old_model) | set(new_model)
                     if old_model.get(k) != new_model.get(k))
    if old_model and changed:
        details = ", ".join(f"{k}: {old_model.get(k)!r} -> {new_model.get(k)!r}"
                            for k in changed)
        raise TrainingError(f"the workdir's checkpoints use another model config ({details}); "
                            "use a new --workdir")
    for side in ("source", "target"):
        old_size = saved.get("data", {}).get(f"{side}_vocab_size")
        if old_size not in (None, config.data[f"{side}_vocab_size"]):
            raise TrainingError(f"the workdir's {side} vocabulary size {old_size} differs "
                                f"from --data_dir's {config.data[f'{side}_vocab_size']}")
    old_policy = saved.get("train", {}).get("mixed_precision")
    if old_policy is not None and old_policy != config.train.mixed_precision:
        # Allowed (the variables are float32 either way), but worth a line: under "auto" a
        # job resumed on other hardware can switch precision without a flag changing.
        logging.warning("the workdir was trained in %s; continuing in %s",
                        old_policy or "float32", config.train.mixed_precision or "float32")


def read_saved_config(workdir: str) -> dict:
    """The workdir's config.json in this version's keys; {} in a new workdir."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return vocabulary.upgrade_saved_config(json.load(f))


@dataclasses.dataclass
class StepStats:
    """Per-step figures returned by the loop, all global (summed over replicas)."""
    loss_sum: float
    target_tokens: float
    source_tokens: float
    padded_positions: float
    grad_norm: float
    finite: bool
    learning_rate: float


class SigtermFlag:
    """Remembers a SIGTERM (preemption notice) so the loop can save and exit cleanly."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint within "
                        "config.train.preemption_check_seconds")
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class Trainer:
    """Holds the model, optimizer, data iterator and compiled loop of one training run."""

    def __init__(self, config, *, data_dir: str, strategy: tf.distribute.Strategy,
                 worker_index: int, num_workers: int):
        self.config = config
        self.strategy = strategy
        self.num_replicas = strategy.num_replicas_in_sync
        self.local_replicas = max(self.num_replicas // num_workers, 1)
        train, data = config.train, config.data
        # XLA (and TPUStrategy, which compiles everything) needs static shapes; other
        # runs pad each batch only as far as it needs and skip padding in the loss.
        self._static_shapes = (data.static_shapes or train.jit_compile
                               or isinstance(strategy, tf.distribute.TPUStrategy))
        with strategy.scope():
            self.model = vocabulary.build_model(config)
            dummy = tf.zeros([self.local_replicas, 4], tf.int32) + data.eos_id
            self.model({features.INPUTS: dummy, features.TARGETS: dummy})
            self.optimizer = optim.create_optimizer(
                config.optimizer, total_steps=train.num_steps,
                float16=train.mixed_precision == "mixed_float16")
            # Keras 3 under MirroredStrategy: build the optimizer in scope before tf.function.
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.length_skips = dataset.LengthSkips(  # refuses to start when too many
            dataset.load_metadata(data_dir), split=data.split,
            longest=max(data.bucket_boundaries), max_fraction=data.max_dropped_fraction)
        self.dataset = dataset.make_train_dataset(
            data_dir=data_dir, split=data.split, boundaries=data.bucket_boundaries,
            tokens_per_batch=max(data.tokens_per_batch // num_workers, 1),
            batch_multiple=self.local_replicas, shuffle_buffer=data.shuffle_buffer,
            seed=train.seed + worker_index, num_input_pipelines=num_workers,
            input_pipeline_id=worker_index, static_shapes=self._static_shapes,
            bucket_by_both_lengths=data.bucket_by_both_lengths, length_skips=self.length_skips)
        self.iterator = iter(self.dataset)
        self.checkpoint = tf.train.Checkpoint(
            model=checkpoints.variables_by_index(self.model.variables),
            optimizer=checkpoints.variables_by_index(self.optimizer.variables),
            step=self.step, iterator=self.iterator)
        self._nominal_tokens = float(max(data.tokens_per_batch // self.num_replicas, 1))
        # Under jit_compile a single replica compiles its whole step (gradients, clipping
        # and the optimizer update) into one XLA program, as TPUStrategy compiles each
        # replica's step. Several CPU/GPU replicas compile the gradients only: updating
        # mirrored copies on other devices is a cross-device step XLA cannot compile there.
        whole_step = train.jit_compile and self.num_replicas == 1
        self._grad_fn = (tf.function(self._gradients, jit_compile=True)
                         if train.jit_compile and not whole_step else self._gradients)
        self._step_fn = (tf.function(self._replica_step, jit_compile=True) if whole_step
                         else self._replica_step)
        self._loop = tf.function(self._train_loop)

    # ---- per replica -------------------------------------------------------------------
    def _gradients(self, batch):
        """Gradients of this replica's token-summed loss (scaled to a stable magnitude)."""
        targets = batch[features.TARGETS]
        pad_id = self.config.data.pad_id
        with tf.GradientTape() as tape:
            hidden = self.model.decoder_hidden(batch, training=True, **self._sampling())
            if not self._static_shapes:
                # Project only real target positions: the [tokens, vocab] logits are the
                # step's largest tensor.
                real = tf.not_equal(targets, pad_id)
                hidden, targets = tf.boolean_mask(hidden, real), tf.boolean_mask(targets, real)
            loss_sum, tokens = self.model.output_loss_sums(
                hidden, targets, pad_id=pad_id,
                label_smoothing=self.config.train.label_smoothing)
            scaled = self.optimizer.scale_loss(loss_sum / self._nominal_tokens)
        grads = tape.gradient(scaled, self.model.trainable_variables)
        source_tokens = tf.reduce_sum(tf.cast(batch[features.INPUTS] != pad_id, tf.float32))
        positions = tf.cast(tf.size(batch[features.TARGETS]) + tf.size(batch[features.INPUTS]),
                            tf.float32)
        return grads, tf.stack([loss_sum, tokens, source_tokens, positions])

    def _sampling(self) -> dict:
        """decoder_hidden's `sampling` argument for this step, none when it is off."""
        settings = self.config.train.get("scheduled_sampling")
        if settings is None or not settings.schedule:
            return {}
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return {"sampling": scheduled_sampling.for_step(
            self.step, settings, seed=self.config.train.seed, replica=replica)}

    def _replica_step(self, micro_batches):
        grads, sums = None, None
        for batch in micro_batches:
            micro_grads, micro_sums = self._grad_fn(batch)
            if grads is None:
                grads, sums = list(micro_grads), micro_sums
            else:
                grads = [g + m for g, m in zip(grads, micro_grads)]
                sums = sums + micro_sums
        context = tf.distribute.get_replica_context()
        grads, sums = context.all_reduce(tf.distribute.ReduceOp.SUM, [grads, sums])
        scale = self.optimizer.scale_loss(1.0)
        # d(global loss) = d(sum of token losses) / global token count.
        to_true = self._nominal_tokens / (scale * tf.maximum(sums[1], 1.0))
        grad_norm = tf.linalg.global_norm(grads) * to_true
        clip = self.config.optimizer.clip_norm
        if clip > 0:  # tf.clip_by_global_norm's factor: NaN for a non-finite norm, so
            # the LossScaleOptimizer skips the step
            to_true *= clip / tf.maximum(grad_norm, clip) + (grad_norm - grad_norm)
        # The optimizer unscales by `scale` and sums over replicas again: pre-divide both.
        # One multiply per gradient: each pass over every gradient costs a CPU step time.
        factor = to_true * (scale / self.num_replicas)
        self.optimizer.apply([g * factor for g in grads], self.model.trainable_variables)
        finite = tf.math.is_finite(grad_norm) & tf.math.is_finite(sums[0])
        return tf.concat([sums, [grad_norm, tf.cast(finite, tf.float32)]], axis=0)

    # ---- cross replica ---------------------------------------------------------------
    def _distribute(self, batch):
        """Splits this worker's batch evenly over its local replicas."""
        local = self.local_replicas

        def piece(context):
            index = context.replica_id_in_sync_group % local
            return {key: tf.split(value, local)[index] for key, value in batch.items()}

        return self.strategy.experimental_distribute_values_from_function(piece)

    def _train_loop(self, num_steps):
        stats = tf.TensorArray(tf.float32, size=num_steps)
        for i in tf.range(num_steps):
            micro = [self._distribute(next(self.iterator))
                     for _ in range(self.config.train.grad_accum_steps)]
            learning_rate = self.optimizer.learning_rate
            per_replica = self.strategy.run(self._step_fn, args=(micro,))
            values = self.strategy.experimental_local_results(per_replica)[0]
            stats = stats.write(i, tf.concat([values, [learning_rate]], axis=0))
            self.step.assign_add(1)
        return stats.stack()

    def run_loop(self, num_steps: int) -> list[StepStats]:
        rows = self._loop(tf.constant(num_steps, tf.int32)).numpy()
        return [StepStats(loss_sum=float(r[0]), target_tokens=float(r[1]),
                          source_tokens=float(r[2]), padded_positions=float(r[3]),
                          grad_norm=float(r[4]), finite=bool(r[5] > 0.5),
                          learning_rate=float(r[6])) for r in rows]


def _configure_runtime(config) -> None:
    keras.mixed_precision.set_global_policy(config.train.mixed_precision or "float32")
    keras.utils.set_random_seed(config.train.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()


class Preempted(Exception):
    """Every worker saved a checkpoint at `step` and stopped for a preemption notice."""

    def __init__(self, step: int, *, notified_workers: list[int]):
        self.step, self.notified_workers = step, notified_workers
        who = ", ".join(str(w) for w in notified_workers)
        super().__init__(f"stopped for a preemption notice (SIGTERM to worker {who}) after "
                         f"step {step}; checkpoint saved: restart the job to resume")


class PeerLost(Exception):
    """A peer worker stopped answering (killed, node lost): the job must restart as a group."""


class _Fleet:
    """The cross-worker decisions of a run, taken identically on every worker.

    Each one is a single all-reduce of a small [workers, values] table in which every
    worker fills its own row, so all workers see the same table and take the same branch.
    """

    def __init__(self, strategy, *, worker_index: int, num_workers: int, local_replicas: int):
        self.strategy, self.worker_index, self.num_workers = strategy, worker_index, num_workers
        self.local_replicas = local_replicas

    def gather(self, values: list[float]) -> np.ndarray:
        """[num_workers, len(values)] float64: every worker's `values`, in worker order."""
        table = np.zeros([self.num_workers, len(values)], np.float64)
        table[self.worker_index] = values
        if self.num_workers == 1:
            return table
        mine, zeros = tf.constant(table), tf.zeros_like(table)
        local = self.local_replicas
        per_replica = self.strategy.experimental_distribute_values_from_function(
            lambda context: mine if context.replica_id_in_sync_group % local == 0 else zeros)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica,
                                    axis=None).numpy()

    def check_same_newest_step(self, newest_step: int, *, workdir: str) -> None:
        """All workers list the same newest checkpoint step (-1: none), or none starts: each
        worker's copy holds its own data position, so a missing or stale copy would silently
        diverge, then hang."""
        steps = self.gather([newest_step])[:, 0]
        if len(set(steps.tolist())) == 1:
            return
        found = []
        for index, step in enumerate(steps.astype(int).tolist()):
            where = checkpoints.directory(workdir, worker_index=index, is_chief=index == 0)
            found.append(f"worker {index}: " + (f"step {step}" if step >= 0 else
                                                 f"no checkpoint in {where}"))
        raise TrainingError(
            "workers would resume from different checkpoints (" + "; ".join(found) + "). "
            "Each worker keeps its own copy (its data position); restore the missing or stale "
            "copies so every worker has the same newest step, or use a new --workdir")

    def decide_after_call(self, *, preempted: bool, stop_marked: bool,
                          seconds_per_step: float) -> tuple[list[int], bool, float]:
        """(workers that got SIGTERM, whether any saw the stop marker, mean seconds per
        step): the same on every worker."""
        table = self.gather([float(preempted), float(stop_marked), seconds_per_step])
        notified = [index for index, flag in enumerate(table[:, 0]) if flag > 0.5]
        return notified, bool(table[:, 1].max() > 0.5), float(table[:, 2].mean())


def _steps_per_call(config, seconds_per_step: float) -> int:
    """As many steps as fit in preemption_check_seconds, at least 1, at most steps_per_loop."""
    fit = int(config.train.preemption_check_seconds / max(seconds_per_step, 1e-9))
    return max(1, min(config.train.steps_per_loop, fit))


def _is_peer_failure(error: tf.errors.OpError) -> bool:
    """Collectives aborted because a peer died (connection reset) or stopped heartbeating."""
    return isinstance(error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                              tf.errors.AbortedError, tf.errors.CancelledError)
                      ) or "Collective ops is aborted" in str(error)


_PEER_FAILURE_HINTS = ("unhealthy", "Connection reset", "aborted by", "Socket closed",
                       "failed to connect", "heartbeat")


def _peer_failure_summary(error: tf.errors.OpError) -> str:
    """The one line of TensorFlow's long collective error that says what happened."""
    for line in str(error).splitlines():
        if any(hint in line for hint in _PEER_FAILURE_HINTS):
            return " ".join(line.split())[:300]
    return type(error).__name__


@contextlib.contextmanager
def _peer_failures_as_peer_lost(num_workers: int, *, during: str):
    """A collective that failed because a peer is gone becomes PeerLost, naming when."""
    try:
        yield
    except tf.errors.OpError as error:
        if num_workers > 1 and _is_peer_failure(error):
            raise PeerLost(f"lost contact with a peer worker during {during} "
                           f"({_peer_failure_summary(error)})") from error
        raise


def train(config, *, workdir: str, data_dir: str,
          strategy: tf.distribute.Strategy) -> list[StepStats]:
    """Trains until config.train.num_steps, resuming from the workdir's last checkpoint.

    Returns the per-step statistics of the steps run by this call. Raises Preempted after
    saving when any worker got SIGTERM, and PeerLost when a peer stops answering.
    """
    started = time.time()  # temporary files older than this are an earlier attempt's
    validate_config(config)
    metadata = dataset.load_metadata(data_dir)
    config = resolve_config(config, metadata, strategy=strategy)
    saved = read_saved_config(workdir)
    check_resume_compatible(saved, config)
    is_chief = strategy_lib.worker_info(strategy)[2]
    with contextlib.ExitStack() as held:
        # Taken after the start checks, which must refuse without creating the workdir.
        def take_lease():
            return held.enter_context(_writer_lease(
                workdir, ttl=config.train.lease_seconds, enabled=is_chief))
        return _train(config, workdir=workdir, data_dir=data_dir, strategy=strategy,
                      started=started, take_lease=take_lease)


@contextlib.contextmanager
def _writer_lease(workdir: str, *, ttl: float, enabled: bool):
    """One trainer per workdir: the chief holds a lease on WORKDIR/train while it runs
    (renewed in the background). A second trainer waits up to 1.5 x ttl, long enough
    for the claim of a crashed one on another host to expire, and is then refused."""
    if not enabled:
        yield None
        return
    try:
        with shared_files.hold(os.path.join(workdir, "train"), wait=1.5 * ttl,
                               ttl=ttl) as lease:
            yield lease
    except shared_files.LeaseTimeout as error:
        raise TrainingError(f"another trainer is writing this workdir: {error}") from None


def _train(config, *, workdir: str, data_dir: str, strategy: tf.distribute.Strategy,
           started: float, take_lease) -> list[StepStats]:
    """train() after its config checks; `take_lease()` before the first write returns the
    chief's workdir lease (None on other workers)."""
    worker_index, num_workers, is_chief = strategy_lib.worker_info(strategy)
    _configure_runtime(config)

    trainer = Trainer(config, data_dir=data_dir, strategy=strategy,
                      worker_index=worker_index, num_workers=num_workers)
    fleet = _Fleet(strategy, worker_index=worker_index, num_workers=num_workers,
                   local_replicas=trainer.local_replicas)
    manager = checkpoints.manager(trainer.checkpoint, workdir=workdir,
                                  worker_index=worker_index, is_chief=is_chief,
                                  keep=config.train.keep_checkpoints)
    restored = _restore(manager, trainer.checkpoint, fleet=fleet, workdir=workdir) >= 0
    if config.train.init_from and not restored:
        try:
            warm_start.load(config.train.init_from, model=trainer.model,
                            optimizer=trainer.optimizer if config.train.init_optimizer else None,
                            tokenizer_sha256=config.data.tokenizer_sha256,
                            vocab_map=_vocab_map(config, data_dir=data_dir))
        except warm_start.WarmStartError as error:
            raise TrainingError(str(error)) from None
    _unscale_old_checkpoint(trainer.optimizer)
    lease = take_lease()
    checkpoints.remove_stale_temps(workdir, started=started, worker_index=worker_index,
                                   is_chief=is_chief)
    if is_chief:
        tf.io.gfile.makedirs(workdir)
        checkpoints.write_text_atomically(
            os.path.join(workdir, CONFIG_FILE),
            json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    start = int(trainer.step.numpy())
    logging.info("%s at step %d of %d (%d replicas, %d workers, %s)",
                 "resuming" if restored else "starting", start, config.train.num_steps,
                 trainer.num_replicas, num_workers, config.train.mixed_precision or "float32")
    writer = (tf.summary.create_file_writer(os.path.join(workdir, "train")) if is_chief
              else tf.summary.create_noop_writer())
    history: list[StepStats] = []
    progress = _Progress(config, writer=writer, is_chief=is_chief)
    stopping = _Stopping(config, workdir=workdir, data_dir=data_dir, model=trainer.model,
                         fleet=fleet, is_chief=is_chief)
    if stopping.stopped_before():
        return history
    steps_per_call = 1  # the first call also traces and compiles; later ones fit the budget
    with SigtermFlag() as sigterm, writer.as_default():
        step = start
        while step < config.train.num_steps:
            boundary = min(_next_multiple(step, config.train.checkpoint_every_steps),
                           _next_multiple(step, config.train.log_every_steps),
                           config.train.num_steps, step + steps_per_call)
            began = time.perf_counter()
            with _peer_failures_as_peer_lost(num_workers,
                                             during=f"steps {step + 1}-{boundary}"), \
                    dataset.explaining_read_errors(data_dir=data_dir, split=config.data.split,
                                                   length_skips=trainer.length_skips):
                stats = trainer.run_loop(boundary - step)
                elapsed = time.perf_counter() - began
                notified, stop, seconds_per_step = fleet.decide_after_call(
                    preempted=sigterm.raised,
                    stop_marked=is_chief and stopping.marked(),
                    seconds_per_step=elapsed / (boundary - step))
            history.extend(stats)
            progress.record(stats, first_step=step + 1, seconds=elapsed)
            step = boundary
            trainer.length_skips.report(step)
            steps_per_call = _steps_per_call(config, seconds_per_step)
            at_checkpoint = step % config.train.checkpoint_every_steps == 0
            if at_checkpoint:
                stopping.measure(step)
            if at_checkpoint or step == config.train.num_steps or notified or stop:
                _check_lease(lease)
                manager.save(checkpoint_number=step)
            if at_checkpoint and stopping.decide():
                stop = True
            if stop:
                logging.info("early stopping at step %d: %s (delete %s to train on)", step,
                             stopping.reason(), early_stopping.marker_path(workdir))
                break
            if notified and step < config.train.num_steps:
                writer.flush()
                raise Preempted(step, notified_workers=notified)
    writer.flush()
    return history


def _vocab_map(config, *, data_dir: str):
    """Under config.train.init_vocab_map: rows move by piece to this data's tokenizers."""
    if not config.train.init_vocab_map:
        return None
    metadata = dataset.load_metadata(data_dir)
    source, target = tokenizer_lib.load_tokenizers(data_dir, metadata)
    return vocab_map.planner(source_tokenizer=source, target_tokenizer=target,
                             shared=config.model.share_embeddings)


def _check_lease(lease) -> None:
    """Before a save: stop rather than write beside a trainer that took the workdir over."""
    if lease is None:
        return
    try:
        lease.check()
    except shared_files.LeaseLost as error:
        raise TrainingError(f"{error}; another trainer may be writing this workdir") from None


class _Stopping:
    """The trainer's side of early stopping (launch/early_stopping.py): it honours the stop
    marker, and under metric `dev_loss` measures teacher-forced dev loss at every checkpoint
    (train/dev_loss.jsonl, TensorBoard `dev_loss`) and writes the marker itself."""

    def __init__(self, config, *, workdir: str, data_dir: str, model, fleet: _Fleet,
                 is_chief: bool):
        self.policy = early_stopping.policy_from_config(config)
        self.workdir, self.data_dir, self.fleet, self.is_chief = workdir, data_dir, fleet, is_chief
        self.rows_path = os.path.join(workdir, "train", DEV_LOSS_FILE)
        self.score = None
        if self.policy.in_trainer:
            if fleet.num_workers > 1:
                raise TrainingError(
                    "config.early_stopping.metric=dev_loss is measured by the trainer and "
                    f"needs a single-process run ({fleet.num_workers} workers here); use an "
                    "evaluator metric (bleu, wer, xent, ...) with s2s-evaluate --split=dev")
            split = dataset.load_metadata(data_dir).get("splits", {}).get("dev", {})
            if not split.get("written"):
                raise TrainingError(
                    f"config.early_stopping.metric=dev_loss needs a dev split: {data_dir} "
                    "has no dev pairs (s2s-preprocess --dev=... or --split_fractions=dev:...)")
            dataset.verified_shard_files(data_dir, "dev")
            self.score = teacher_forcing.scorer(model, config=config)

    def stopped_before(self) -> bool:
        """True (on every worker) when the run was told to stop before this start."""
        if self.policy.in_trainer and self.is_chief:
            self.decide()
        if not self.fleet.gather([float(self.is_chief and self.marked())]).max() > 0.5:
            return False
        logging.info("early stopping: %s; not training (delete %s to train on)",
                     self.reason(), early_stopping.marker_path(self.workdir))
        return True

    def marked(self) -> bool:
        """Checked after every call: the marker is one small read."""
        return early_stopping.read_marker(self.workdir) is not None

    def reason(self) -> str:
        record = early_stopping.read_marker(self.workdir) or {}
        return record.get("reason", "the stop marker was removed")

    def measure(self, step: int) -> None:
        if self.score is None:
            return
        scores = self.score("dev", self.data_dir)
        tf.summary.scalar(early_stopping.TRAINER_METRIC, scores["xent"], step=step)
        if not self.is_chief:
            return
        rows = [r for r in self._rows() if r["step"] != step]
        rows.append({"step": step, early_stopping.TRAINER_METRIC: scores["xent"],
                     "token_accuracy": scores["token_accuracy"]})
        tf.io.gfile.makedirs(os.path.dirname(self.rows_path))
        shared_files.write_text_atomically(
            self.rows_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        logging.info("step %d dev loss %.4f (teacher-forced), token accuracy %.2f%%", step,
                     scores["xent"], scores["token_accuracy"])

    def decide(self) -> bool:
        """Under dev_loss: writes the marker once the policy says stop; True then."""
        if self.score is None or not self.is_chief:
            return False
        decision = early_stopping.decide(self._rows(), self.policy)
        if decision is None:
            return False
        early_stopping.write_marker(self.workdir, decision, by="s2s-train")
        return True

    def _rows(self) -> list[dict]:
        if not tf.io.gfile.exists(self.rows_path):
            return []
        with tf.io.gfile.GFile(self.rows_path) as f:
            return [json.loads(line) for line in f.read().splitlines() if line.strip()]


def _restore(manager: tf.train.CheckpointManager, checkpoint: tf.train.Checkpoint, *,
             fleet: _Fleet, workdir: str) -> int:
    """Restores the newest step that every worker can read; returns it (-1: a fresh start).

    Workers first compare their newest listed step (a missing or stale copy stops the job),
    then step back together past checkpoints that any of them cannot read: a save cut short
    must not crash-loop the restarts, and all workers must resume the same step.
    """
    newest = checkpoints.newest_step(manager)
    restored, skipped = checkpoints.restore_newest_readable(manager, checkpoint)
    # Only the collectives: a storage error while reading is not a lost peer.
    with _peer_failures_as_peer_lost(fleet.num_workers, during="the resume check"):
        fleet.check_same_newest_step(newest, workdir=workdir)
    while True:
        with _peer_failures_as_peer_lost(fleet.num_workers, during="the resume check"):
            steps = fleet.gather([restored])[:, 0].astype(int).tolist()
        if newest >= 0 and min(steps) < 0:
            raise TrainingError(_unreadable_message(
                steps, mine=fleet.worker_index, skipped=skipped, workdir=workdir))
        if len(set(steps)) == 1:
            break
        if restored > min(steps):
            restored, more = checkpoints.restore_newest_readable(manager, checkpoint,
                                                                 at_most=min(steps))
            skipped += more
    if restored < newest:
        why = ("; ".join(skipped) if skipped
               else "another worker cannot read its copy of the newer steps")
        logging.warning("resuming from step %d, not from the newest checkpoint (step %d): %s",
                        restored, newest, why)
    return restored


def _unreadable_message(steps: list[int], *, mine: int, skipped: list[str],
                        workdir: str) -> str:
    """Why the job cannot resume: the workers that have checkpoints but can read none."""
    lost = [index for index, step in enumerate(steps) if step < 0]
    where = ", ".join(checkpoints.directory(workdir, worker_index=index, is_chief=index == 0)
                      for index in lost)
    details = f" ({'; '.join(skipped)})" if mine in lost and skipped else ""
    return (f"no checkpoint in {where} can be read{details}. Restore those files from a "
            "backup, or move the directory away to train from step 0, or use a new --workdir")


def _unscale_old_checkpoint(optimizer) -> None:
    """Checkpoints of the earlier optimizer carry a loss scale halved once per skipped step;
    without float16 the scale is 1."""
    if isinstance(optimizer, optim.SkipNonFinite):
        old = optimizer.reset_scale()
        if old != 1.0:
            logging.warning("the checkpoint's loss scale %g is reset to 1: float32 and "
                            "bfloat16 train without loss scaling", old)


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


class _Progress:
    """Console progress lines, TensorBoard scalars and the non-finite step guard."""

    def __init__(self, config, *, writer, is_chief: bool):
        self.config, self.writer, self.is_chief = config, writer, is_chief
        self.nonfinite_run = 0
        self.skipped_total = 0  # steps whose update was skipped for non-finite gradients
        self.window: list[StepStats] = []
        self.window_seconds = 0.0

    def record(self, stats: list[StepStats], *, first_step: int, seconds: float) -> None:
        for offset, stat in enumerate(stats):
            step = first_step + offset
            self.nonfinite_run = 0 if stat.finite else self.nonfinite_run + 1
            if self.nonfinite_run >= self.config.train.max_nonfinite_steps:
                raise TrainingError(
                    f"{self.nonfinite_run} consecutive non-finite losses ending at step {step}: "
                    "aborting without saving (lower the learning rate, enable clipping, or "
                    "use mixed_bfloat16 instead of mixed_float16)")
            if self.is_chief and self.config.train.log_every_steps == 1:
                logging.info("step %d loss %.6f", step,
                             stat.loss_sum / max(stat.target_tokens, 1.0))
        self.window.extend(stats)
        self.window_seconds += seconds
        last = first_step + len(stats) - 1
        if last % self.config.train.log_every_steps == 0 or last == self.config.train.num_steps:
            self._flush(last)

    def _flush(self, step: int) -> None:
        window = [s for s in self.window if s.finite] or self.window
        tokens = sum(s.target_tokens for s in window)
        real = sum(s.target_tokens + s.source_tokens for s in window)
        loss = sum(s.loss_sum for s in window) / max(tokens, 1.0)
        tokens_per_s = real / max(self.window_seconds, 1e-9)
        step_time = self.window_seconds / max(len(self.window), 1)
        padding = 1.0 - real / max(sum(s.padded_positions for s in window), 1.0)
        remaining = (self.config.train.num_steps - step) * step_time
        skipped = sum(not s.finite for s in self.window)
        scalars = {"loss": loss, "learning_rate": window[-1].learning_rate,
                   "grad_norm": window[-1].grad_norm, "tokens_per_s": tokens_per_s,
                   "step_time": step_time, "padding_ratio": padding,
                   "nonfinite_skipped_steps": skipped}
        for name, value in scalars.items():
            tf.summary.scalar(name, value, step=step)
        self._warn_skipped(skipped, last_step=step)
        if self.is_chief:
            logging.info("step %d/%d  loss %.4f  lr %.2e  |g| %.3f  %.0f tok/s  %.3fs/step  "
                         "pad %.0f%%  ETA %s", step, self.config.train.num_steps, loss,
                         scalars["learning_rate"], scalars["grad_norm"], tokens_per_s,
                         step_time, 100 * padding, _duration(remaining))
        self.window, self.window_seconds = [], 0.0

    def _warn_skipped(self, skipped: int, *, last_step: int) -> None:
        """A skipped update is not silent: one line per logging window that had any."""
        self.skipped_total += skipped
        if skipped and self.is_chief:
            logging.warning("%d of the %d steps up to step %d had non-finite gradients and "
                            "did not update the model (%d in this run so far)", skipped,
                            len(self.window), last_step, self.skipped_total)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
