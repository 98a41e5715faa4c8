"""A run's vocabulary layout, from metadata.json into the config and the model.

Shared: one SentencePiece model for both sides, so one embedding table can serve both.
Separate (`s2s-preprocess --separate_vocabs`): source id 5 and target id 5 are unrelated
pieces, so each side needs its own table. The model config's `share_embeddings` follows
the data unless set; set to True on separate data it is refused, since the model would
train without error and be wrong.

Workdirs written before the layout was recorded keep working: `upgrade_saved_config`
fills in what their model was (one `vocab_size` for both sides, the output projection
tied exactly when the embeddings were shared).
"""

import models

SHARED, SEPARATE = "shared", "separate"


class VocabularyError(ValueError):
    """The model config and the data's vocabularies do not fit; one line says why."""


def layout_of(metadata: dict) -> dict:
    """{"layout", "source_vocab_size", "target_vocab_size"} of a preprocess output dir."""
    shared = metadata.get("tokenizer", {}).get("shared", True)
    return {"layout": SHARED if shared else SEPARATE,
            "source_vocab_size": int(metadata.get("source_vocab_size", metadata["vocab_size"])),
            "target_vocab_size": int(metadata.get("target_vocab_size", metadata["vocab_size"]))}


def resolve_model_config(model_config, *, layout: str) -> None:
    """Sets unset `share_embeddings` from the data's layout and unset `tie_output` to True
    (an unlocked ConfigDict, changed in place); refuses sharing separate vocabularies."""
    share = model_config.get("share_embeddings")
    if share is None:
        model_config.share_embeddings = layout == SHARED
    elif share and layout == SEPARATE:
        raise VocabularyError(
            "config.model.share_embeddings=True needs a shared vocabulary, but --data_dir "
            "has separate source and target vocabularies (s2s-preprocess --separate_vocabs): "
            "leave it unset or set --config.model.share_embeddings=False")
    if model_config.get("tie_output") is None:
        model_config.tie_output = True


def upgrade_saved_config(saved: dict) -> dict:
    """A workdir's config.json as this version writes it (older ones lack the layout keys).

    The model is unchanged: the one `vocab_size` becomes both sides' size, and the output
    projection was tied exactly when the embeddings were shared. The layout stays unknown
    (None): such a run could have used either kind of data.
    """
    model, data = dict(saved.get("model", {})), dict(saved.get("data", {}))
    if model and "tie_output" not in model:
        model["tie_output"] = model.get("share_embeddings", True)
    if "vocab_size" in data:
        data.setdefault("source_vocab_size", data["vocab_size"])
        data.setdefault("target_vocab_size", data["vocab_size"])
        del data["vocab_size"]
    if data:
        data.setdefault("vocabulary_layout", None)
    return {**saved, "model": model, "data": data} if saved else saved


def model_sizes(data) -> dict:
    """The build_model keyword arguments that come from the data section of a config."""
    return {key: int(data[key]) for key in ("source_vocab_size", "target_vocab_size",
                                            "pad_id", "eos_id", "bos_id")}


def build_model(config):
    """The model a resolved config (or an upgraded config.json) describes."""
    return models.build_model(config.model, **model_sizes(config.data))
