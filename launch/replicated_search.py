"""Data-parallel beam search: each replica of a tf.distribute strategy decodes an equal
slice of every batch, with its own copy of the weights (mirrored under the strategy)."""

import numpy as np
import tensorflow as tf

from models import decoding


class ReplicatedSearch:
    """Beam search of [batch, S] id arrays over `strategy`'s replicas.

    With one replica it runs the given model directly. With several it keeps a copy built
    under the strategy's scope, refreshed from the source model by `sync()` after every
    restore, and pads each batch to a multiple of the replica count.
    """

    def __init__(self, model, *, build_copy, strategy: tf.distribute.Strategy | None,
                 beam_size: int, alpha: float, length_ratio: float, length_offset: int,
                 max_decode_length: int, jit_compile: bool):
        self.source, self.beam_size, self.alpha = model, beam_size, alpha
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        if jit_compile and self.replicas > 1 and not tf.config.list_logical_devices("GPU"):
            raise ValueError("--jit_compile with several CPU replicas: XLA compiles for one "
                             "CPU device and cannot reach the other logical devices' weights; "
                             "use one of the two")
        if self.replicas > 1 or isinstance(self.strategy, tf.distribute.TPUStrategy):
            with self.strategy.scope():
                self.model = build_copy()
        else:
            self.model = model

        def search(inputs):
            tokens, _ = decoding.length_bounded_beam_search(
                self.model, inputs, beam_size=beam_size, alpha=alpha, ratio=length_ratio,
                offset=length_offset, cap=max_decode_length)
            return tokens

        # XLA compiles one decoder per padded length (bucket); without it, on one device,
        # one trace with a dynamic length serves every batch (strategy.run passes
        # per-replica values, which an input signature does not take).
        dynamic = not jit_compile and self.model is model
        self._search = tf.function(search, jit_compile=jit_compile, input_signature=[
            tf.TensorSpec([None, None], tf.int32)] if dynamic else None)

    def sync(self) -> None:
        """Copies the source model's (just restored) weights into the replicas' copy."""
        if self.model is not self.source:
            for mine, theirs in zip(self.model.weights, self.source.weights):
                mine.assign(theirs)

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """[batch, length] int32 ids; batch must be a multiple of replicas."""
        if self.model is self.source:
            return self._search(tf.constant(inputs)).numpy()
        pieces = np.split(inputs, self.replicas)
        values = self.strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(pieces[context.replica_id_in_sync_group]))
        tokens = self.strategy.run(self._search, args=(values,))
        return np.concatenate([t.numpy() for t in
                               self.strategy.experimental_local_results(tokens)])
