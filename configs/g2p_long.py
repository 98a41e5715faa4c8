"""The longer CMUdict run: the quickstart recipe (post-LN, bfloat16, linear decay) for 32k steps.

Sized to finish within 2 hours on 2 CPU cores with AVX512_BF16. Over this many epochs the
model overfits without regularization, so it keeps dropout (0.1). Checkpoints every 1000
steps and keeps 6, so the evaluator can average the last few (`--average_last`).
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
