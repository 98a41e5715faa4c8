"""The longer CMUdict run: the bench-size Transformer for 24k steps (about 25 epochs).

Sized to finish within 2 hours on 2 CPU cores. Over this many epochs the model overfits
without regularization, so it keeps dropout (0.1). It stays on the pre-LN float32 recipe
its README result was measured with, not the quickstart's post-LN bfloat16 one.
"""

from configs import bench


def get_config():
    config = bench.get_config()
    config.model.dropout = 0.1
    config.model.attention_dropout = 0.1
    config.optimizer.learning_rate = 3e-3
    config.optimizer.warmup_steps = 1000
    config.optimizer.schedule = "cosine"
    config.train.num_steps = 24000
    config.train.checkpoint_every_steps = 2000
    config.train.log_every_steps = 500
    return config
