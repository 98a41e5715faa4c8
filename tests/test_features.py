"""The data contract: both Example encoders agree, ids and fingerprints are stable."""

import hashlib

import pytest
import tensorflow as tf

from pipeline import features

CASES = [
    dict(inputs=[5, 6, 1], targets=[7, 1], pair_id="0" * 32, inputs_text="hi",
         targets_text="hallo"),
    # ids needing 1, 2, 3 and 4 varint bytes; non-ASCII text
    dict(inputs=[127, 128, 16383, 16384, 2_097_152, 1], targets=[1], pair_id="ab" * 16,
         inputs_text="Grüße, 世界 🙂", targets_text="Привет"),
    # empty texts; a text longer than 16384 bytes (multi-byte length prefixes)
    dict(inputs=[9, 1], targets=[3000, 1], pair_id="f" * 32, inputs_text="",
         targets_text="x" * 20000),
    # a dev/test pair with its origin; a line number needing 3 varint bytes
    dict(inputs=[5, 1], targets=[7, 1], pair_id="c" * 32, inputs_text="a", targets_text="b",
         origin="gs://bucket/dev.tsv", line=70_000),
]


@pytest.mark.parametrize("case", CASES)
def test_fast_encoder_parses_like_tf_train_example(case):
    fast = features.fast_encode_example(**case)
    reference = features.encode_example(**case)
    assert features.decode_example(fast) == features.decode_example(reference)
    parsed_fast = features.parse_example(tf.constant(fast))
    parsed_reference = features.parse_example(tf.constant(reference))
    for key in (features.INPUTS, features.TARGETS, features.ID, features.INPUTS_TEXT,
                features.TARGETS_TEXT, features.ORIGIN, features.LINE):
        assert tf.reduce_all(parsed_fast[key] == parsed_reference[key])
    assert parsed_fast[features.INPUTS].dtype == tf.int32
    assert parsed_fast[features.ORIGIN].numpy().decode() == case.get("origin", "")
    assert int(parsed_fast[features.LINE]) == case.get("line", 0)


def test_fast_encoder_is_deterministic_with_a_fixed_key_order():
    case = CASES[1]
    first = features.fast_encode_example(**case)
    assert first == features.fast_encode_example(**dict(case, inputs=list(case["inputs"])))
    keys = [features.ID, features.INPUTS, features.INPUTS_TEXT, features.TARGETS,
            features.TARGETS_TEXT]
    positions = [first.index(b"\x12", first.index(key.encode() + b"\x12")) for key in keys]
    assert positions == sorted(positions)


def test_fingerprint_is_sha256_of_tab_joined_pair():
    expected = hashlib.sha256("a b\tc".encode("utf-8")).hexdigest()[:32]
    assert features.fingerprint("a b", "c") == expected
    assert features.fingerprint("a", "b c") != features.fingerprint("a b", "c")


def test_special_ids_are_the_contract():
    assert (features.PAD_ID, features.EOS_ID, features.UNK_ID, features.BOS_ID) == (0, 1, 2, 3)
