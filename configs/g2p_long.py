"""The longer CMUdict run: the quickstart recipe (post-LN, linear decay, auto precision), 32k steps.

Sized to finish within 2 hours on 2 CPU cores with AVX512_BF16 (85.5 min of training
measured; float32 on an AVX2-only CPU needs about 2.2 hours). It keeps dropout 0.1 for
its many epochs. Measured: test WER 28.5%, dev 27.6%, about a point better than the
5400-step demo (docs/g2p-tuning.md has every run). Dropout 0.2 did worse (14k float32 steps:
test WER 34.5%): the model underfits. Twice the width (d_model 256, ffn 1024, peak 2e-3)
for 21k AMX bfloat16 steps (98 min) did not help either: test WER 30.6%, dev 29.0%, its
train loss level with this model's; nor did every pronunciation in train (`cmudict:all`:
test WER 28.8%, dev 27.0%). Depth did: 6+6 layers without dropout for 22k steps (91.6 min)
reached test WER 27.2%, dev 26.4%, and memorizes train; with dropout 0.1 (not on the
attention weights) for 23k steps (104.6 min) its dev cross-entropy falls from 0.34 to 0.25
nats, its scores do not: test 27.5%, dev 26.4% (README). Checkpoints every 1000 steps, keeps 6, for
`--average_last` (the mean of six scored the same).
"""

from configs import g2p


def get_config():
    config = g2p.get_config()
    config.model.dropout = 0.1
    config.model.attention_dropout = 0.1
    config.optimizer.warmup_steps = 1000
    config.train.num_steps = 32000
    config.train.checkpoint_every_steps = 1000
    config.train.keep_checkpoints = 6
    config.train.log_every_steps = 500
    return config
