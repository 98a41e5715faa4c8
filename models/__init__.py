"""Seq2seq models: pure Keras 3 on TensorFlow, no I/O, no flags.

`build_model` turns the `model` section of a config into a model. Every model has the
same interface, so nothing downstream branches on the kind:

    logits = model({"inputs": [B,S] int32, "targets": [B,T] int32}, training=...)
    # the same, in two halves, so a trainer can project only real target positions:
    logits = model.output_logits(model.decoder_hidden(features, training=...))
    # or the training loss with that projection fused in (models/losses.py):
    loss_sum, tokens = model.output_loss_sums(hidden, targets, pad_id=0, label_smoothing=0.1)
    encoded = model.encode(inputs)                      # dict, batch-first tensors
    cache = model.init_cache(encoded, max_decode_length, beam_size=1)  # B * beam rows
    logits, cache = model.decode_step(tokens, cache)    # [rows] int32 -> [rows,V] float32
    cache = model.reorder_cache(cache, rows)            # row j continues row rows[j]

plus `model.config` (a frozen dataclass with pad_id / eos_id / bos_id), which
`models.decoding` reads.
"""

import dataclasses

from models.lstm_attention import LstmAttention, LstmAttentionConfig
from models.transformer import Transformer, TransformerConfig

# Keys taken from the data (metadata.json), not from the model config.
_DATA_KEYS = ("source_vocab_size", "target_vocab_size", "pad_id", "eos_id", "bos_id")


def _config_from(cls, model_config, data):
    """Frozen dataclass `cls` from the config's keys (minus "name") plus data ids.

    Unknown keys are rejected (a typo such as num_layer would otherwise be ignored);
    missing keys take the dataclass defaults.
    """
    settings = {key: model_config[key] for key in model_config.keys() if key != "name"}
    allowed = {field.name for field in dataclasses.fields(cls)} - set(_DATA_KEYS)
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ValueError(f"unknown {model_config['name']} config keys {unknown}; "
                         f"accepted: {sorted(allowed)}")
    return cls(**settings, **data)


def model_config_from(model_config, *, source_vocab_size, target_vocab_size, pad_id, eos_id,
                      bos_id):
    """Validated frozen hyperparameters for the model named by `model_config["name"]`.

    Args:
        model_config: ml_collections ConfigDict or plain dict with "name"
            ("transformer" | "lstm_attention") and that model's hyperparameters.
        source_vocab_size, target_vocab_size: each side's number of token ids (equal
            and one vocabulary when the data shares it).
        pad_id, eos_id, bos_id: special token ids.

    Returns:
        TransformerConfig or LstmAttentionConfig.

    Raises:
        ValueError: unknown model name, unknown config key or a bad value.
    """
    name = model_config["name"]
    data = dict(source_vocab_size=source_vocab_size, target_vocab_size=target_vocab_size,
                pad_id=pad_id, eos_id=eos_id, bos_id=bos_id)
    if name == "transformer":
        return _config_from(TransformerConfig, model_config, data)
    elif name == "lstm_attention":
        return _config_from(LstmAttentionConfig, model_config, data)
    raise ValueError(f"unknown model name {name!r}; expected 'transformer' or "
                     "'lstm_attention'")


def build_model(model_config, *, source_vocab_size, target_vocab_size, pad_id, eos_id,
                bos_id):
    """Builds the model named by `model_config["name"]`, with all weights created.

    Args: as `model_config_from`.

    Returns:
        Transformer or LstmAttention (keras.Model).

    Raises:
        ValueError: as `model_config_from`.
    """
    config = model_config_from(model_config, source_vocab_size=source_vocab_size,
                               target_vocab_size=target_vocab_size, pad_id=pad_id,
                               eos_id=eos_id, bos_id=bos_id)
    if isinstance(config, TransformerConfig):
        return Transformer(config)
    return LstmAttention(config)


__all__ = ["build_model", "model_config_from", "Transformer", "TransformerConfig", "LstmAttention",
           "LstmAttentionConfig"]
