"""Decoding throughput: cached greedy, cached beam search, and an uncached greedy baseline.

    python bench/decode.py [--batch_size 32 --source_length 20 --max_length 50 ...]
    python bench/decode.py --workdir=W --data_dir=D --split=test [--jit]    # real data

Real data: decodes a split with the workdir's latest checkpoint through the evaluator's
path and through the exported SavedModel (distinct sources, shortest first, in the
evaluator's batches, with the config's beam size and alpha), and prints one JSON line: sentences/s and
target tokens/s of each, BLEU (and WER/PER for G2P) of each, which must be equal, and
the peak RSS. With --ctranslate2 the same for the CTranslate2 conversion of the weights
(`s2s-export --format=ctranslate2`), the speed to chase.

Synthetic mode:

Model: the bench-size Transformer (3+3 layers, d_model 128, 4 heads, ffn 512, 8k shared
vocabulary), randomly initialized. Every output is forced to exactly `--max_length`
tokens by masking EOS in the model's step logits (a thin wrapper), so neither decoder
can stop early and both do the full amount of work. The uncached baseline re-runs the
whole model (encoder and decoder) over a static [batch, max_length] target buffer at
every step and reads the logits at the current position, as a static-shape (XLA/TPU)
decoder without a cache must. All decoders are XLA-compiled and warmed up before timing.

Prints one JSON line last: greedy_sentences_per_s, beam4_sentences_per_s,
cached_speedup (uncached time / cached greedy time), beam_over_greedy (beam time /
greedy time), plus the settings.

On a CPU a decoding step's cost grows with its rows (the 8k-way output projection
dominates): greedy over 128 sentences takes about 3.3x greedy over 32 here, which is the
floor for beam 4 over 32 sentences (128 rows) without approximations.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import models  # noqa: E402
from models import decoding  # noqa: E402

PAD, EOS, UNK, BOS = 0, 1, 2, 3


class NoEosModel:
    """Delegates to a model but never lets it emit EOS, forcing full-length outputs."""

    def __init__(self, model):
        self.model = model
        self.config = model.config

    def encode(self, inputs, training=False):
        return self.model.encode(inputs, training=training)

    def init_cache(self, encoded, max_decode_length, beam_size=1):
        return self.model.init_cache(encoded, max_decode_length, beam_size=beam_size)

    def reorder_cache(self, cache, rows):
        return self.model.reorder_cache(cache, rows)

    def decode_step(self, tokens, cache):
        logits, cache = self.model.decode_step(tokens, cache)
        no_eos = tf.not_equal(tf.range(logits.shape[-1]), self.config.eos_id)
        return tf.where(no_eos, logits, -1e9), cache


def uncached_greedy(model, inputs, *, max_decode_length):
    """Greedy decoding without a cache: a full forward pass per generated token."""
    batch = inputs.shape[0]
    no_eos = tf.not_equal(tf.range(model.config.target_vocab_size), model.config.eos_id)

    def body(i, targets):
        logits = model({"inputs": inputs, "targets": targets}, training=False)
        step_logits = tf.gather(logits, i, axis=1)
        log_probs = decoding.decoding_log_probs(tf.where(no_eos, step_logits, -1e9),
                                                model.config)
        best = tf.argmax(log_probs, axis=-1, output_type=tf.int32)
        at_i = tf.equal(tf.range(max_decode_length), i)
        return i + 1, tf.where(at_i, best[:, None], targets)

    targets = tf.fill([batch, max_decode_length], model.config.pad_id)
    _, targets = tf.while_loop(lambda i, _: i < max_decode_length, body,
                               (tf.constant(0), targets))
    return targets


def time_calls(functions, inputs, repeats):
    """Best-of-`repeats` seconds per call for each function, after a warm-up call.

    Calls are interleaved (one of each per round) and the minimum is kept, so load from
    other processes on a shared machine affects all decoders alike and mostly drops out.
    """
    for fn in functions.values():
        np.asarray(tf.nest.flatten(fn(inputs))[0])
    best = {name: float("inf") for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            began = time.perf_counter()
            np.asarray(tf.nest.flatten(fn(inputs))[0])
            best[name] = min(best[name], time.perf_counter() - began)
    return best


def real_data(args) -> dict:
    """The evaluator path and the SavedModel on a real split (module docstring)."""
    import resource
    import tempfile

    from launch import evaluator
    from launch import metrics as metrics_lib

    run = evaluator.load_run(workdir=args.workdir, data_dir=args.data_dir)
    checkpoint = tf.train.latest_checkpoint(os.path.join(args.workdir, "checkpoints"))
    evaluator.restore(run, [checkpoint])
    beam_size, alpha = run.config.decode.beam_size, run.config.decode.alpha
    search = evaluator.make_search(run, beam_size=beam_size, alpha=alpha,
                                   jit_compile=args.jit)
    measured, _ = metrics_lib.run_metrics(run.config, run.metadata)

    def tokens_in(hypotheses):
        return sum(len(run.target_tokenizer.encode(h)) + 1 for h in hypotheses)  # + EOS

    began = time.perf_counter()
    text, hypotheses = evaluator.decode_split(run, split=args.split, data_dir=args.data_dir,
                                              search=search)
    sources, references, source_ids = text.sources, text.references, text.source_ids
    evaluator_s = time.perf_counter() - began

    with tempfile.TemporaryDirectory() as export_dir:
        from launch import export_lib
        export_lib.save_translator(
            run.model, source_model=run.source_tokenizer.model,
            target_model=run.target_tokenizer.model, saved_model_dir=export_dir,
            beam_size=beam_size, alpha=alpha, **evaluator.export_options(run))
        serve = tf.saved_model.load(export_dir).signatures["serving_default"]
        exported = [""] * len(sources)
        began = time.perf_counter()
        for rows, _ in evaluator.length_batches([len(ids) for ids in source_ids],
                                                **evaluator.batching(run)):
            out = serve(inputs=tf.constant([sources[i] for i in rows]))["translations"]
            for index, text in zip(rows, out.numpy()):
                exported[index] = text.decode()
        export_s = time.perf_counter() - began
    contenders = [("evaluator", hypotheses, evaluator_s), ("savedmodel", exported, export_s)]
    if args.ctranslate2:
        contenders.append(("ctranslate2", *ctranslate2_decode(run, sources, source_ids)))
    scores = {name: metrics_lib.corpus_scores(hyps, references, metrics=measured)
              for name, hyps, _ in contenders}
    figures = {"split": args.split, "sentences": len(sources),
               "identical_hypotheses": sum(a == b for a, b in zip(hypotheses, exported))}
    for name, hyps, seconds in contenders:
        figures[f"{name}_sentences_per_s"] = round(len(sources) / seconds, 1)
        figures[f"{name}_target_tokens_per_s"] = round(tokens_in(hyps) / seconds, 1)
        for metric in ("bleu", "wer", "per"):
            if metric in scores[name]:
                figures[f"{name}_{metric}"] = round(scores[name][metric], 2)
    figures.update(peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                     / 1024), beam_size=beam_size, jit_compile=args.jit,
                   step=int(checkpoint.rsplit("-", 1)[1]), tensorflow=tf.__version__,
                   cpu_count=os.cpu_count())
    return figures


def ctranslate2_decode(run, sources, source_ids) -> tuple[list[str], float]:
    """(hypotheses, seconds) of the CTranslate2 conversion of the same weights, in the
    evaluator's batches, with the same beam size and per-batch output limit (its own
    length normalization), on this machine's cores."""
    import tempfile

    import ctranslate2
    import sentencepiece as spm

    from launch import ctranslate2_export, evaluator

    source = spm.SentencePieceProcessor(model_proto=run.source_tokenizer.model)
    target = spm.SentencePieceProcessor(model_proto=run.target_tokenizer.model)
    decode = run.config.decode
    hypotheses = [""] * len(sources)
    with tempfile.TemporaryDirectory() as directory:
        ctranslate2_export.export_ctranslate2(
            run.model, source_model=run.source_tokenizer.model,
            target_model=run.target_tokenizer.model, output_dir=directory)
        translator = ctranslate2.Translator(directory, device="cpu",
                                            intra_threads=os.cpu_count())
        began = time.perf_counter()
        for rows, _ in evaluator.length_batches([len(ids) for ids in source_ids],
                                                **evaluator.batching(run)):
            limit = max(int(np.ceil(decode.max_length_ratio * len(source_ids[i])
                                    + decode.max_length_offset)) for i in rows)
            results = translator.translate_batch(
                [source.encode(sources[i], out_type=str) for i in rows],
                beam_size=decode.beam_size, max_decoding_length=limit)
            for index, result in zip(rows, results):
                hypotheses[index] = target.decode(result.hypotheses[0])
        return hypotheses, time.perf_counter() - began


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", help="Real data: a trained s2s-train workdir.")
    parser.add_argument("--data_dir", help="Real data: its s2s-preprocess output.")
    parser.add_argument("--split", default="test", help="Real data: the split to decode.")
    parser.add_argument("--jit", action="store_true", help="Real data: XLA beam search.")
    parser.add_argument("--ctranslate2", action="store_true",
                        help="Real data: also the CTranslate2 conversion (its own beam "
                             "length normalization, so its BLEU may differ).")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--source_length", type=int, default=20)
    parser.add_argument("--max_length", type=int, default=50, help="tokens decoded")
    parser.add_argument("--beam_size", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=0.6)
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed calls per cached decoder (best one counts)")
    parser.add_argument("--uncached_repeats", type=int, default=2)
    parser.add_argument("--no_jit", action="store_true", help="tf.function without XLA")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.workdir or args.data_dir:
        if not (args.workdir and args.data_dir):
            parser.error("real data needs both --workdir and --data_dir")
        print(json.dumps(real_data(args)))
        return

    keras.utils.set_random_seed(args.seed)
    config = dict(name="transformer", num_encoder_layers=3, num_decoder_layers=3,
                  d_model=128, num_heads=4, ffn_dim=512, dropout=0.0, attention_dropout=0.0,
                  pre_norm=True, share_embeddings=True)
    model = models.build_model(config, source_vocab_size=args.vocab_size,
                               target_vocab_size=args.vocab_size, pad_id=PAD, eos_id=EOS,
                               bos_id=BOS)
    forced = NoEosModel(model)
    rng = np.random.default_rng(args.seed)
    inputs = rng.integers(4, args.vocab_size, [args.batch_size, args.source_length])
    inputs[:, -1] = EOS
    inputs = tf.constant(inputs, tf.int32)
    jit = not args.no_jit

    greedy = tf.function(lambda x: decoding.greedy_decode(
        forced, x, max_decode_length=args.max_length), jit_compile=jit)
    beam = tf.function(lambda x: decoding.beam_search(
        forced, x, beam_size=args.beam_size, alpha=args.alpha,
        max_decode_length=args.max_length), jit_compile=jit)
    uncached = tf.function(lambda x: uncached_greedy(
        model, x, max_decode_length=args.max_length), jit_compile=jit)

    greedy_tokens, _ = greedy(inputs)
    assert (greedy_tokens.numpy() != PAD).all(), "outputs must be full length"
    np.testing.assert_array_equal(uncached(inputs).numpy(), greedy_tokens.numpy())

    seconds = time_calls({"greedy": greedy, "beam": beam}, inputs, args.repeats)
    greedy_s, beam_s = seconds["greedy"], seconds["beam"]
    uncached_s = time_calls({"uncached": uncached}, inputs, args.uncached_repeats)["uncached"]
    print(json.dumps({
        "greedy_sentences_per_s": round(args.batch_size / greedy_s, 1),
        f"beam{args.beam_size}_sentences_per_s": round(args.batch_size / beam_s, 1),
        "cached_speedup": round(uncached_s / greedy_s, 2),
        "beam_over_greedy": round(beam_s / greedy_s, 2),
        "uncached_greedy_sentences_per_s": round(args.batch_size / uncached_s, 1),
        "settings": {
            "model": "transformer 3+3, d_model 128, 4 heads, ffn 512, shared embeddings",
            "vocab_size": args.vocab_size, "batch_size": args.batch_size,
            "source_length": args.source_length, "output_length": args.max_length,
            "forced_length": "EOS logits masked", "beam_size": args.beam_size,
            "alpha": args.alpha, "jit_compile": jit, "repeats": args.repeats,
            "timing": "best of repeats, greedy and beam calls interleaved",
            "uncached": "full forward pass over a static max_length buffer per token",
            "tensorflow": tf.__version__, "cpu_count": os.cpu_count(),
        },
    }))


if __name__ == "__main__":
    main()
