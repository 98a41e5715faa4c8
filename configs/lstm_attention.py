"""Bidirectional-LSTM encoder, attention decoder with input feeding (Luong-style NMT)."""

from ml_collections import config_dict

from configs import base


def get_config():
    config = base.get_config()
    config.model.name = "lstm_attention"
    config.model.num_encoder_layers = 2
    config.model.num_decoder_layers = 2
    config.model.embed_dim = 256
    config.model.hidden_dim = 512
    config.model.cell = "lstm"  # "lstm" | "gru"
    config.model.attention = "luong"  # "bahdanau" (additive) | "luong" (general)
    config.model.input_feeding = True  # feed the previous attentional vector to the decoder
    config.model.dropout = 0.2
    # One embedding table for both sides. Unset: follow the data (shared vocabulary: one
    # table; s2s-preprocess --separate_vocabs: one per side; True there is refused).
    config.model.share_embeddings = config_dict.placeholder(bool)
    config.model.tie_output = True  # the output projection is the target embedding
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 500
    return config
