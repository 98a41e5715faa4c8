"""Warm start across vocabularies: move embedding and output rows by piece string.

When new data gets a new tokenizer, a piece both vocabularies have keeps its trained row
(wherever its id moved), and a piece only the new one has keeps the fresh initialization
of this run, as OpenNMT-tf's update_vocab does. The vocabulary-sized variables are
found by name: the embedding tables (rows), an untied output projection's kernel
(columns) and bias.
"""

import os

import numpy as np
from absl import logging

from pipeline import tokenizer as tokenizer_lib

# variable name -> (the side whose vocabulary it holds, the vocabulary axis)
VOCABULARY_VARIABLES = {"source_embedding/table": ("source", 0),
                        "target_embedding/table": ("target", 0),
                        "output_projection/kernel": ("target", 1),
                        "output_projection/bias": ("target", 0)}


def pieces(processor) -> list[str]:
    return [processor.id_to_piece(index) for index in range(processor.get_piece_size())]


def row_sources(old: list[str], new: list[str]) -> np.ndarray:
    """For each new id, the old id of the same piece, or -1 for a new piece."""
    position = {piece: index for index, piece in enumerate(old)}
    return np.array([position.get(piece, -1) for piece in new], np.int64)


def move_rows(stored: np.ndarray, fresh: np.ndarray, *, sources: np.ndarray,
              axis: int) -> np.ndarray:
    """`fresh` with the slices of shared pieces taken from `stored` along `axis`."""
    if np.delete(stored.shape, axis).tolist() != np.delete(fresh.shape, axis).tolist():
        raise ValueError(f"a vocabulary variable of shape {list(stored.shape)} cannot seed "
                         f"one of shape {list(fresh.shape)}: use the source's model config")
    result = np.moveaxis(np.array(fresh, copy=True), axis, 0)
    old = np.moveaxis(stored, axis, 0)
    kept = sources >= 0
    result[kept] = old[sources[kept]]
    return np.moveaxis(result, 0, axis)


def planner(*, source_tokenizer, target_tokenizer, shared: bool):
    """A warm_start.load `vocab_map`: {variable index: move function} for this run's
    tokenizers against the source's (from its warm-start bundle)."""
    new = {"source": pieces(source_tokenizer.processor),
           "target": pieces(target_tokenizer.processor)}

    def plan(located, model) -> dict:
        if not located.tokenizer_dir:
            raise ValueError(
                f"config.train.init_vocab_map needs the source's tokenizer: point "
                f"config.train.init_from at an export (WORKDIR/export/best) or a published "
                f"model, not the checkpoint {located.checkpoint}")
        old = {side: pieces(tokenizer_lib.Tokenizer.from_file(
            os.path.join(located.tokenizer_dir, f"{side}.model")).processor)
            for side in ("source", "target")}
        moves = {}
        for index, variable in enumerate(model.variables):
            name = "/".join(variable.path.split("/")[-2:])
            if name not in VOCABULARY_VARIABLES:
                continue
            side, axis = VOCABULARY_VARIABLES[name]
            if shared and name == "source_embedding/table":
                side = "target"  # one table for both sides: the shared vocabulary
            sources = row_sources(old[side], new[side])
            moves[index] = (lambda stored, fresh, sources=sources, axis=axis:
                            move_rows(stored, fresh, sources=sources, axis=axis))
            logging.info("warm start: %s keeps %d of its %d rows by piece; %d new pieces "
                         "start fresh", variable.path, int((sources >= 0).sum()), len(sources),
                         int((sources < 0).sum()))
        return moves

    return plan
