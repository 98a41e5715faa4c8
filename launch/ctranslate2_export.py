"""CTranslate2 export: a trained Transformer as a CTranslate2 model directory.

CTranslate2 is a C++ inference engine for Transformers (fused kernels, int8 quantization,
its own beam search); serving through it is the fastest way to run our models on a CPU.
Its pre-norm Transformer is ours layer for layer (sqrt(d_model)-scaled embeddings plus
sinusoidal positions, bias-free attention, ReLU feed-forward, final layer norms), so the
conversion is a renaming of weights: fused query/key/value matrices, [out, in] layout, and
our position table written out so both use the same encodings. The tokenizer's pieces
(SentencePiece or WordPiece) become its vocabularies, so it translates piece strings:

    translator = ctranslate2.Translator(DIR)
    translator.translate_batch([sp.encode("Hello", out_type=str)], beam_size=4)

Only the Transformer family converts (CTranslate2 has no attention-LSTM).
"""

import os
import tempfile

import numpy as np

import models
from models import layers
from pipeline import features, tokenizer as tokenizer_lib

POSITIONS = 1024  # rows of the position table: longest source or output it can handle


class ConversionError(ValueError):
    """The model cannot be expressed as a CTranslate2 Transformer."""


def _linear(spec, kernel, bias=None):
    """A Dense kernel [in, out] (or an attention kernel [dim, heads, head_dim], flattened
    to [in, out]) as CTranslate2's [out, in] weight."""
    spec.weight = np.ascontiguousarray(np.asarray(kernel).reshape(kernel.shape[0], -1).T)
    if bias is not None:
        spec.bias = np.asarray(bias)


def _layer_norm(spec, norm):
    spec.gamma, spec.beta = np.asarray(norm.scale), np.asarray(norm.offset)


def _attention_output(spec, attention):
    # Our output kernel is [d_model, heads, head_dim] read as out x in already.
    spec.weight = np.ascontiguousarray(
        np.asarray(attention.output_kernel).reshape(attention.output_kernel.shape[0], -1))


def _self_attention(spec, block):
    attention = block.attention
    fused = np.concatenate([np.asarray(k).reshape(k.shape[0], -1) for k in
                            (attention.query_kernel, attention.key_kernel,
                             attention.value_kernel)], axis=1)
    _linear(spec.linear[0], fused)
    _attention_output(spec.linear[1], attention)
    _layer_norm(spec.layer_norm, block.norm)


def _cross_attention(spec, block):
    attention = block.attention
    _linear(spec.linear[0], attention.query_kernel)
    fused = np.concatenate([np.asarray(k).reshape(k.shape[0], -1) for k in
                            (attention.key_kernel, attention.value_kernel)], axis=1)
    _linear(spec.linear[1], fused)
    _attention_output(spec.linear[2], attention)
    _layer_norm(spec.layer_norm, block.norm)


def _feed_forward(spec, block):
    _linear(spec.linear_0, block.ffn.inner.kernel, block.ffn.inner.bias)
    _linear(spec.linear_1, block.ffn.outer.kernel, block.ffn.outer.bias)
    _layer_norm(spec.layer_norm, block.norm)


def transformer_spec(model: models.Transformer, *, source_pieces: list[str],
                     target_pieces: list[str], bos: str, eos: str, unk: str):
    """The CTranslate2 TransformerSpec holding `model`'s weights."""
    from ctranslate2.specs import transformer_spec as ct2

    config = model.config
    if not isinstance(model, models.Transformer):
        raise ConversionError("only the Transformer converts to CTranslate2")
    if not config.pre_norm:
        raise ConversionError("only pre-norm Transformers convert (config.model.pre_norm)")
    spec = ct2.TransformerSpec.from_config((config.num_encoder_layers,
                                            config.num_decoder_layers), config.num_heads)
    positions = np.asarray(layers.sinusoidal_encoding(np.arange(POSITIONS), config.d_model))
    for side, embedding in ((spec.encoder, model.source_embedding),
                            (spec.decoder, model.target_embedding)):
        embeddings = side.embeddings[0] if isinstance(side.embeddings, list) else side.embeddings
        embeddings.weight = np.asarray(embedding.table)
        side.scale_embeddings = True  # times sqrt(d_model), as TokenEmbedding's multiplier
        side.position_encodings.encodings = positions
    _layer_norm(spec.encoder.layer_norm, model.encoder_norm)
    _layer_norm(spec.decoder.layer_norm, model.decoder_norm)
    for layer_spec, layer in zip(spec.encoder.layer, model.encoder_layers):
        _self_attention(layer_spec.self_attention, layer.self_attention)
        _feed_forward(layer_spec.ffn, layer.feed_forward)
    for layer_spec, layer in zip(spec.decoder.layer, model.decoder_layers):
        _self_attention(layer_spec.self_attention, layer.self_attention)
        _cross_attention(layer_spec.attention, layer.cross_attention)
        _feed_forward(layer_spec.ffn, layer.feed_forward)
    if model.output_projection is None:  # tied to the target embedding
        spec.decoder.projection.weight = np.asarray(model.target_embedding.table)
    else:
        _linear(spec.decoder.projection, model.output_projection.kernel,
                model.output_projection.bias)
    spec.config.layer_norm_epsilon = model.encoder_norm.epsilon
    spec.config.bos_token = spec.config.decoder_start_token = bos
    spec.config.eos_token, spec.config.unk_token = eos, unk
    spec.config.add_source_eos = True  # our sources end with EOS (data contract)
    spec.register_source_vocabulary(source_pieces)
    spec.register_target_vocabulary(target_pieces)
    return spec


def pieces(model_proto: bytes) -> list[str]:
    """A tokenizer model's pieces in id order (CTranslate2's vocabulary)."""
    processor = tokenizer_lib.load_processor(model_proto)
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


def export_ctranslate2(model, *, source_model: bytes, target_model: bytes, output_dir: str,
                       quantization: str | None = None) -> str:
    """Writes `model` as a CTranslate2 model directory `output_dir` (local or gs://).

    CTranslate2 writes local files only, so the model is converted in a local temp
    directory and copied with tf.io.gfile. quantization: None keeps float32; "int8",
    "int8_float32", "bfloat16", ... as CTranslate2 accepts.
    """
    with tempfile.TemporaryDirectory() as local:
        convert(model, source_model=source_model, target_model=target_model,
                output_dir=os.path.join(local, "model"), quantization=quantization)
        copy_tree(os.path.join(local, "model"), output_dir)
    return output_dir


def copy_tree(local_dir: str, output_dir: str) -> None:
    """Copies a local directory's files to `output_dir` through tf.io.gfile."""
    import tensorflow as tf

    for root, _, names in os.walk(local_dir):
        relative = os.path.relpath(root, local_dir)
        target = output_dir.rstrip("/") + ("" if relative == "." else f"/{relative}")
        tf.io.gfile.makedirs(target)
        for name in names:
            tf.io.gfile.copy(os.path.join(root, name), f"{target}/{name}", overwrite=True)


def convert(model, *, source_model: bytes, target_model: bytes, output_dir: str,
            quantization: str | None) -> str:
    """CTranslate2's converter writing `model` to the local directory `output_dir`."""
    try:
        from ctranslate2.converters.converter import Converter
    except ImportError:
        raise ConversionError("the CTranslate2 export needs the ctranslate2 package: "
                              "pip install 's2s-pipeline[ctranslate2]'") from None
    target = tokenizer_lib.load_processor(target_model)
    config = model.config
    spec = transformer_spec(model, source_pieces=pieces(source_model),
                            target_pieces=pieces(target_model),
                            bos=target.id_to_piece(config.bos_id),
                            eos=target.id_to_piece(config.eos_id),
                            unk=target.id_to_piece(features.UNK_ID))

    class _Loaded(Converter):
        def _load(self):
            return spec

    return _Loaded().convert(output_dir, quantization=quantization, force=True)
