"""The quickstart: the bench-size Transformer on CMUdict grapheme-to-phoneme.

A short run on 113k words. No dropout and a linear decay to zero converge furthest in
the budget (1800-step screen at peak 3e-3, dev WER: linear 34.5%, cosine 35.7%; linear
at 4e-3 36.2%). Post-LN beat pre-LN at both peak learning rates tried with each (1800-step
screen, dev WER: post-LN 1.5e-3 / 2e-3 / 3e-3 / 4e-3: 36.4 / 36.0 / 35.2 / 36.8%;
pre-LN 2e-3 / 4e-3 / 6e-3: 37.0 / 37.3 / 40.8%). Precision "auto": mixed_bfloat16 trains
about 1.5x as fast as float32 on a CPU with AVX512_BF16 (22.6k vs about 15k tokens/s),
but on an AVX2-only CPU TensorFlow emulates it (1.6k vs 13k tokens/s), so float32 there.
"""

from configs import bench


def get_config():
    config = bench.get_config()
    config.model.dropout = 0.0
    config.model.attention_dropout = 0.0
    config.model.pre_norm = False
    config.optimizer.learning_rate = 3e-3
    config.optimizer.warmup_steps = 400
    config.optimizer.schedule = "linear"
    config.train.mixed_precision = "auto"  # bfloat16 where native (launch/precision.py)
    config.train.num_steps = 5400
    config.train.checkpoint_every_steps = 900
    config.train.log_every_steps = 200
    # Word and phoneme error rates (a word is right when it matches any pronunciation);
    # the export is the lowest dev WER.
    config.eval.metrics = "wer,per,bleu,chrf"
    return config
