"""Training throughput of the bench config: our custom loop vs Keras model.fit.

Prints one JSON line: real (non-pad) source+target tokens/s of the trainer's loop in
steady state, step time, padding ratio, model FLOP utilisation against an fp32 matmul
peak measured in the same run, and the same model trained with model.fit as the naive
baseline, over the statically bucketed batches (the standard tf.data recipe; the trainer
pads each batch only to its longest pair): once with Keras' built-in label-smoothed
cross-entropy (what a Keras user writes; `fit_tokens_per_s`, the `speedup_vs_fit`
denominator) and once with the hand-differentiated loss over logits
(`fit_fused_loss_tokens_per_s`; the loop also fuses the output projection into it, which
a Keras loss, handed logits, cannot), to show what the loop itself adds. The contenders run in alternating rounds of --steps steps
and each figure is the median over rounds: on a shared VM one contender measured in a
slow spell would otherwise move the ratio by 10%.

    python bench/train.py [--data_dir=PREPROCESSED] [--steps=100] [--rounds=3]

Without --data_dir it preprocesses ../shared/data/gettext-en-de (8k shared vocabulary)
into a cache directory first (not timed).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from configs import bench as bench_config  # noqa: E402
from launch import trainer, vocabulary  # noqa: E402
from models import losses  # noqa: E402
from pipeline import dataset, features  # noqa: E402

SHARED = os.path.join(os.path.dirname(REPO), "shared", "data", "gettext-en-de")


def preprocess_shared(cache_dir: str) -> str:
    """The gettext en->de corpus preprocessed once (reused while _COMPLETED is there)."""
    output = os.path.join(cache_dir, "gettext-en-de-8k")
    if os.path.exists(os.path.join(output, features.COMPLETED_FILE)):
        return output
    subprocess.run([sys.executable, "-m", "pipeline.preprocess",
                    f"--train=tsv:{SHARED}/train.tsv", f"--dev=tsv:{SHARED}/dev.tsv",
                    f"--test=tsv:{SHARED}/test.tsv", "--vocab_size=8000",
                    f"--output_dir={output}", "--overwrite"],
                   check=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                   stdout=subprocess.DEVNULL)
    return output


def matmul_peak_gflops(size: int = 2048, repeats: int = 10, dtype=tf.float32) -> float:
    """Best matmul rate of this machine in `dtype`, measured now (fp32: the MFU denominator)."""
    a = tf.cast(tf.random.normal([size, size]), dtype)
    b = tf.cast(tf.random.normal([size, size]), dtype)
    matmul = tf.function(lambda x, y: tf.matmul(x, y))
    matmul(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        matmul(a, b).numpy()
        best = min(best, time.perf_counter() - began)
    return 2 * size ** 3 / best / 1e9


def flops_per_token(config, vocab_size: int) -> tuple[float, float]:
    """Training FLOPs per source and per target token: 6 x weight multiply-adds.

    Encoder layer weights per source token; decoder layer weights (self + cross
    attention, FFN) plus the output projection per target token. Attention score and
    context products are left out, so the MFU figure is a slight underestimate.
    """
    d, f = config.d_model, config.ffn_dim
    encoder_layer = 4 * d * d + 2 * d * f
    decoder_layer = 8 * d * d + 2 * d * f
    per_source = 6 * config.num_encoder_layers * encoder_layer
    per_target = 6 * (config.num_decoder_layers * decoder_layer + d * vocab_size)
    return float(per_source), float(per_target)


class LoopRunner:
    """The trainer's loop, traced and warmed up once; each call times the next `steps`."""

    def __init__(self, config, data_dir: str, *, warmup: int):
        self.run = trainer.Trainer(config, data_dir=data_dir,
                                   strategy=tf.distribute.get_strategy(),
                                   worker_index=0, num_workers=1)
        self.run.run_loop(warmup)  # traces every bucket shape that shows up

    def __call__(self, steps: int) -> dict:
        began = time.perf_counter()
        stats = self.run.run_loop(steps)
        return {"seconds": time.perf_counter() - began,
                "source": sum(s.source_tokens for s in stats),
                "target": sum(s.target_tokens for s in stats),
                "padded": sum(s.padded_positions for s in stats)}


def input_cpu_ms_per_batch(batches: tf.data.Dataset, *, count: int = 300) -> float:
    """Process CPU time per batch of the loop's input pipeline alone (after a warm-up):
    the share of the two cores it takes from the step, which model.fit fed from memory
    does not pay."""
    iterator = iter(batches)
    for _ in range(50):
        next(iterator)
    began = time.process_time()
    for _ in range(count):
        next(iterator)
    return (time.process_time() - began) * 1000 / count


class _FitTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.began = time.perf_counter()

    def on_train_end(self, logs=None):
        self.seconds = time.perf_counter() - self.began


def keras_builtin_loss(config):
    """The objective as a Keras user writes it: the built-in label-smoothed
    CategoricalCrossentropy on one-hot targets, averaged over real tokens."""
    def loss(targets, logits):
        targets = tf.cast(targets, tf.int32)  # Keras hands y_true over as float32
        per_token = keras.losses.categorical_crossentropy(
            tf.one_hot(targets, config.data.target_vocab_size), logits, from_logits=True,
            label_smoothing=config.train.label_smoothing)
        weights = tf.cast(targets != config.data.pad_id, per_token.dtype)
        return tf.reduce_sum(per_token * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)
    return loss


def fused_loss(config):
    """The hand-differentiated loss over logits (models/losses.py) inside model.fit."""
    def loss(targets, logits):
        total, count = losses.cross_entropy_sums(
            logits, tf.cast(targets, tf.int32), pad_id=config.data.pad_id,
            label_smoothing=config.train.label_smoothing)
        return total / tf.maximum(count, 1.0)
    return loss


class FitRunner:
    """Keras model.compile + model.fit (default settings) over `steps` statically bucketed
    batches, cached in memory (so fit pays no input pipeline: a conservative baseline).
    The first call traces; each later call times one epoch over the same batches."""

    def __init__(self, config, data_dir: str, *, loss, steps: int):
        self.model = vocabulary.build_model(config)
        self.model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
        batches = dataset.make_train_dataset(
            data_dir=data_dir, split="train", boundaries=config.data.bucket_boundaries,
            tokens_per_batch=config.data.tokens_per_batch, seed=config.train.seed,
            shuffle_buffer=config.data.shuffle_buffer).take(steps).cache()
        self.tokens = sum(int(np.sum(batch[key].numpy() != config.data.pad_id))
                          for batch in batches for key in (features.INPUTS, features.TARGETS))
        self.pairs = batches.map(lambda batch: (batch, batch[features.TARGETS]))
        self.model.fit(self.pairs, epochs=1, verbose=0)  # trace and warm up

    def __call__(self) -> float:
        timer = _FitTimer()
        self.model.fit(self.pairs, epochs=1, verbose=0, callbacks=[timer])
        return self.tokens / timer.seconds


def middle(values: list[float]) -> float:
    """The median round (the upper one of an even count): one rule for every contender."""
    return sorted(values)[len(values) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", help="s2s-preprocess output; default: preprocess the "
                        "shared gettext en-de corpus")
    parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "s2s-bench"))
    parser.add_argument("--steps", type=int, default=100, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
    parser.add_argument("--warmup", type=int, default=50, help="untimed steps first")
    parser.add_argument("--skip_fit", action="store_true", help="skip the model.fit baseline")
    parser.add_argument("--mixed_precision", default=None,
                        help="override config.train.mixed_precision ('' for float32, "
                        "'auto' for the hardware's fastest)")
    parser.add_argument("--jit_compile", action="store_true",
                        help="XLA-compile the loop's train step (static bucket shapes)")
    parser.add_argument("--bucket_by_both_lengths", choices=("true", "false"),
                        help="override config.data.bucket_by_both_lengths: whether the loop "
                        "groups batches by source and target length")
    args = parser.parse_args()

    data_dir = args.data_dir or preprocess_shared(args.cache_dir)
    config = bench_config.get_config()
    if args.mixed_precision is not None:
        config.train.mixed_precision = args.mixed_precision
    config.train.jit_compile = args.jit_compile
    if args.bucket_by_both_lengths is not None:
        config.data.bucket_by_both_lengths = args.bucket_by_both_lengths == "true"
    config = trainer.resolve_config(config, dataset.load_metadata(data_dir),
                                    strategy=tf.distribute.get_strategy())
    # Both contenders build their model under the policy, as s2s-train does.
    keras.mixed_precision.set_global_policy(config.train.mixed_precision or "float32")
    keras.utils.set_random_seed(0)
    peak = matmul_peak_gflops()
    compute_dtype = keras.mixed_precision.global_policy().compute_dtype
    compute_peak = peak if compute_dtype == "float32" else matmul_peak_gflops(
        dtype=compute_dtype)

    loop = LoopRunner(config, data_dir, warmup=args.warmup)
    input_cpu_ms = input_cpu_ms_per_batch(loop.run.dataset)
    fits = {} if args.skip_fit else {
        "fit": FitRunner(config, data_dir, loss=keras_builtin_loss(config), steps=args.steps),
        "fit_fused_loss": FitRunner(config, data_dir, loss=fused_loss(config),
                                    steps=args.steps)}
    # Rounds alternate the contenders, so a slow spell of a shared machine hits all of them.
    rounds, fit_rates = [], {key: [] for key in fits}
    for _ in range(args.rounds):
        rounds.append(loop(args.steps))
        for key, fit in fits.items():
            fit_rates[key].append(fit())
    rates = [(r["source"] + r["target"]) / r["seconds"] for r in rounds]
    median = rates.index(middle(rates))
    timing = rounds[median]
    source, target, seconds = timing["source"], timing["target"], timing["seconds"]
    per_source, per_target = flops_per_token(config.model, config.data.target_vocab_size)
    achieved = (per_source * source + per_target * target) / seconds / 1e9
    result = {
        "bench": "train",
        "tokens_per_s": round(rates[median], 1),
        "step_time_s": round(seconds / args.steps, 4),
        "padding_ratio": round(1 - (source + target) / timing["padded"], 4),
        "model_gflops_per_s": round(achieved, 2),
        "peak_gflops": round(peak, 1),
        "mfu": round(achieved / peak, 4),
        "input_cpu_ms_per_batch": round(input_cpu_ms, 2),
    }
    if compute_dtype != "float32":  # the same work against the policy's own matmul peak
        result[f"peak_{compute_dtype}_gflops"] = round(compute_peak, 1)
        result[f"mfu_vs_{compute_dtype}_peak"] = round(achieved / compute_peak, 4)
    for key, values in fit_rates.items():
        result[f"{key}_tokens_per_s"] = round(middle(values), 1)
    if fits:
        result["speedup_vs_fit"] = round(result["tokens_per_s"] / result["fit_tokens_per_s"], 3)
        result["speedup_per_round"] = [round(a / b, 3) for a, b in zip(rates, fit_rates["fit"])]
    result["settings"] = {
        "data_dir": data_dir, "steps": args.steps, "warmup": args.warmup,
        "rounds": args.rounds, "figures": "median over rounds",
        "model": "transformer 3+3, d_model 128, 4 heads, ffn 512",
        "vocab_size": config.data.target_vocab_size,
        "tokens_per_batch": config.data.tokens_per_batch,
        "bucket_boundaries": list(config.data.bucket_boundaries),
        "tokens": "real (non-pad) source + target tokens",
        "fit": "model.fit with Keras' CategoricalCrossentropy(label_smoothing); "
               "fit_fused_loss: model.fit with the hand-differentiated loss over logits",
        "mixed_precision": config.train.mixed_precision or "float32",
        "jit_compile": config.train.jit_compile,
        "bucket_by_both_lengths": config.data.bucket_by_both_lengths,
        "flops": "6 x weight multiply-adds per token (attention products excluded)",
        "cpus": os.cpu_count(), "tensorflow": tf.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
