"""Both model families at a size that builds and decodes in milliseconds, for decoder and
training-technique tests. Special ids: pad 0, eos 1, bos 2."""

import keras

import models

PAD, EOS, BOS = 0, 1, 2
VOCAB = 23
MODELS = {
    "transformer": dict(name="transformer", num_encoder_layers=1, num_decoder_layers=2,
                        d_model=16, num_heads=2, ffn_dim=32, dropout=0.1,
                        attention_dropout=0.1),
    "lstm_attention": dict(name="lstm_attention", num_encoder_layers=1, num_decoder_layers=2,
                           embed_dim=8, hidden_dim=12, dropout=0.1),
}


def build(name):
    """MODELS[name] with fixed initial weights."""
    keras.utils.set_random_seed(0)
    return models.build_model(MODELS[name], source_vocab_size=VOCAB, target_vocab_size=VOCAB,
                              pad_id=PAD, eos_id=EOS, bos_id=BOS)
