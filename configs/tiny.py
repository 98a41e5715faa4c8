"""A model small enough for unit tests and CI: seconds per hundred steps on one core."""

from configs import transformer


def get_config():
    config = transformer.get_config()
    config.model.num_encoder_layers = 1
    config.model.num_decoder_layers = 1
    config.model.d_model = 32
    config.model.num_heads = 2
    config.model.ffn_dim = 64
    config.model.dropout = 0.0
    config.model.attention_dropout = 0.0
    config.data.tokens_per_batch = 256
    config.data.shuffle_buffer = 64
    config.optimizer.learning_rate = 3e-3
    config.optimizer.warmup_steps = 10
    config.train.num_steps = 40
    config.train.steps_per_loop = 5
    config.train.checkpoint_every_steps = 10
    config.train.log_every_steps = 10
    config.decode.beam_size = 2
    return config
