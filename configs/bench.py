"""The benchmark / quickstart size: Transformer 3+3, d_model 128, 4 heads, ffn 512, 8k vocab.

Sized for 2 CPU cores: about 2048 tokens per batch, inverse-sqrt schedule with warmup.
"""

from configs import transformer


def get_config():
    config = transformer.get_config()
    config.model.num_encoder_layers = 3
    config.model.num_decoder_layers = 3
    config.model.d_model = 128
    config.model.num_heads = 4
    config.model.ffn_dim = 512
    config.data.tokens_per_batch = 2048
    config.optimizer.learning_rate = 2e-3
    config.optimizer.warmup_steps = 1000
    return config
