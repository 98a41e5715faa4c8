"""Bidirectional-LSTM encoder, attention decoder with input feeding (Luong-style NMT)."""

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
    config.model.share_embeddings = True
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 500
    return config
