"""Defaults shared by every experiment; variants import this and override a few fields.

Select with `--config=configs/transformer.py`; override any field from the command line,
e.g. `--config.model.num_encoder_layers=6 --config.train.num_steps=20000`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    config.model = ml_collections.ConfigDict()
    config.model.name = "transformer"  # "transformer" | "lstm_attention"

    config.data = ml_collections.ConfigDict()
    # Global padded tokens per side; examples per batch = budget // bucket length.
    config.data.tokens_per_batch = 2048
    config.data.bucket_boundaries = ()  # empty: use metadata.json's suggested boundaries
    config.data.max_length = 0  # 0: the largest bucket boundary; longer pairs are skipped
    # Refuse to train when more than this share of the split would be skipped as too long
    # (judged from metadata.json at start, else from the first pairs read).
    config.data.max_dropped_fraction = 0.01
    config.data.shuffle_buffer = 8192  # examples held for shuffling (part of the checkpoint)
    config.data.split = "train"  # which split of --data_dir to train on
    # True: pad every batch to its bucket boundary. Always so under jit_compile and TPU
    # (XLA needs static shapes); otherwise batches use finer buckets, are padded only to
    # their longest pair, and the loss projects only real target positions.
    config.data.static_shapes = False
    # Without static shapes, also group by each side's own length: half the padding on
    # English->German, but it learns less per step there and on CMUdict (README: Benchmarks).
    config.data.bucket_by_both_lengths = False

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adam"  # "adam" | "adamw"
    config.optimizer.learning_rate = 1e-3  # peak learning rate
    config.optimizer.schedule = "inverse_sqrt"  # "inverse_sqrt" | "cosine" | "linear" | "constant"
    config.optimizer.warmup_steps = 1000  # linear warmup to the peak
    config.optimizer.beta1 = 0.9
    config.optimizer.beta2 = 0.98
    config.optimizer.epsilon = 1e-9
    config.optimizer.weight_decay = 0.0  # used by adamw only
    config.optimizer.clip_norm = 1.0  # global gradient norm clip; 0 disables

    config.train = ml_collections.ConfigDict()
    config.train.num_steps = 20000  # total optimizer steps
    config.train.steps_per_loop = 50  # at most this many steps per tf.function call
    # The host checks for a preemption notice (SIGTERM) at least this often: each call runs
    # as many steps (up to steps_per_loop) as fit in it. Plus the checkpoint save, this has
    # to fit in the platform's notice (30 s on Spot VMs).
    config.train.preemption_check_seconds = 5.0
    config.train.grad_accum_steps = 1  # micro-batches summed into one optimizer step
    config.train.label_smoothing = 0.1
    config.train.checkpoint_every_steps = 1000
    config.train.keep_checkpoints = 5
    config.train.log_every_steps = 100  # console line + TensorBoard scalars
    config.train.seed = 0
    config.train.deterministic = False  # op determinism + fixed seeds: bit-identical reruns
    config.train.mixed_precision = ""  # "" (float32) | "mixed_bfloat16" | "mixed_float16" | "auto"
    config.train.jit_compile = False  # XLA-compile the train step (always on under TPU)
    # One trainer per workdir: the chief's lease on WORKDIR/train lasts this long without
    # renewal; a second trainer is refused after waiting 1.5x this.
    config.train.lease_seconds = 60.0
    config.train.max_nonfinite_steps = 20  # abort after this many consecutive non-finite losses
    # Warm start a fresh run from another run's weights: a workdir, checkpoint directory or
    # checkpoint prefix with this model config and tokenizer ("" = from scratch).
    config.train.init_from = ""
    # Also take its optimizer state: moments and iteration count, so the learning-rate
    # schedule continues where it stopped; this run's own step still counts from 0.
    config.train.init_optimizer = False
    # init_from was trained with another tokenizer (an export or published model, which
    # carry theirs): move embedding and output rows by piece; new pieces start fresh.
    config.train.init_vocab_map = False

    # Scheduled sampling (launch/scheduled_sampling.py): feed the decoder its own
    # predictions in place of a growing fraction of the gold previous tokens. schedule ""
    # = off (teacher forcing) | linear | exponential | inverse_sigmoid, rising from 0 at
    # start_step to max_probability (linear: over ramp_steps; exponential: k in (0, 1);
    # inverse_sigmoid: k >= 1). mode: "argmax" or "sample" (from the softmax).
    config.train.scheduled_sampling = ml_collections.ConfigDict()
    config.train.scheduled_sampling.schedule = ""
    config.train.scheduled_sampling.start_step = 0
    config.train.scheduled_sampling.max_probability = 0.25
    config.train.scheduled_sampling.ramp_steps = 1000
    config.train.scheduled_sampling.k = 0.999
    config.train.scheduled_sampling.mode = "argmax"

    # Stop when a dev metric stops improving (launch/early_stopping.py). metric "" = off;
    # "dev_loss": the trainer measures teacher-forced dev cross-entropy at each checkpoint
    # (single-process runs); any metric config.eval measures (a decoded one, xent,
    # token_accuracy): the separate `s2s-evaluate --split=dev` job measures it and writes
    # the stop marker.
    config.early_stopping = ml_collections.ConfigDict()
    config.early_stopping.metric = ""
    config.early_stopping.patience = 5  # evaluations in a row without an improvement
    config.early_stopping.min_delta = 0.0  # an improvement must be larger than this

    # What s2s-evaluate scores (launch/metrics.py): decoded metrics, comma-separated, from
    # bleu, chrf, ter, rouge1, rouge2, rougeL, wer, per (the teacher-forced xent and
    # token_accuracy come with every evaluation). select_on picks the exported checkpoint
    # and is the default of --best_metric: "" = the first of metrics.
    config.eval = ml_collections.ConfigDict()
    config.eval.metrics = "bleu,chrf"
    config.eval.select_on = ""

    config.decode = ml_collections.ConfigDict()
    config.decode.beam_size = 4
    config.decode.alpha = 0.6  # GNMT length penalty exponent
    config.decode.max_length_ratio = 1.5  # max output tokens = ratio * source tokens + offset
    config.decode.max_length_offset = 10
    config.decode.batch_size = 64  # sentences per decoding batch, at most
    # Padded source tokens per decoding batch, at most: long sources decode in small
    # batches (launch/evaluator.py: length_batches).
    config.decode.batch_tokens = 1024

    return config
