"""Transformer base-ish model for real corpora (pre-LN)."""

from ml_collections import config_dict

from configs import base


def get_config():
    config = base.get_config()
    config.model.name = "transformer"
    config.model.num_encoder_layers = 6
    config.model.num_decoder_layers = 6
    config.model.d_model = 512
    config.model.num_heads = 8
    config.model.ffn_dim = 2048
    config.model.dropout = 0.1
    config.model.attention_dropout = 0.1
    config.model.pre_norm = True  # pre-layer-norm trains stably without long warmup
    # One embedding table for both sides. Unset: follow the data (shared vocabulary: one
    # table; s2s-preprocess --separate_vocabs: one per side; True there is refused).
    config.model.share_embeddings = config_dict.placeholder(bool)
    config.model.tie_output = True  # the output projection is the target embedding
    config.data.tokens_per_batch = 8192
    config.optimizer.learning_rate = 7e-4
    config.optimizer.warmup_steps = 4000
    return config
