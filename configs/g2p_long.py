"""The longer CMUdict run: the bench-size Transformer for 24k steps (about 25 epochs).

Sized to finish within 2 hours on 2 CPU cores. Over this many epochs the model overfits
without regularization, so dropout comes back (0.1) and the peak learning rate is lower.
"""

from configs import g2p


def get_config():
    config = g2p.get_config()
    config.model.dropout = 0.1
    config.model.attention_dropout = 0.1
    # The settings its README result was measured with (before the quickstart's post-LN,
    # bfloat16 recipe).
    config.model.pre_norm = True
    config.train.mixed_precision = ""
    config.optimizer.learning_rate = 3e-3
    config.optimizer.warmup_steps = 1000
    config.train.num_steps = 24000
    config.train.checkpoint_every_steps = 2000
    config.train.log_every_steps = 500
    return config
