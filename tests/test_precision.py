"""launch/precision.py: the "auto" mixed-precision policy follows the hardware."""

import pytest
import tensorflow as tf

from launch import precision

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx fma avx2\n"
AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def cpuinfo(tmp_path, text: str) -> str:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, native", [(AVX2_ONLY, False), (AVX512_BF16, True),
                                          (ARM_BF16, True), ("", False)])
def test_cpu_bfloat16_detection_reads_the_flags_line(tmp_path, text, native):
    assert precision.cpu_has_native_bfloat16(cpuinfo(tmp_path, text)) is native


def test_unreadable_cpuinfo_counts_as_no_bfloat16(tmp_path):
    assert precision.cpu_has_native_bfloat16(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("text, policy", [(AVX2_ONLY, ""), (AVX512_BF16, "mixed_bfloat16")])
def test_auto_on_a_cpu_picks_bfloat16_only_where_it_is_native(tmp_path, text, policy):
    strategy = tf.distribute.get_strategy()
    assert precision.resolve_policy("auto", strategy=strategy,
                                    cpuinfo_path=cpuinfo(tmp_path, text)) == policy


@pytest.mark.parametrize("requested", precision.POLICIES)
def test_an_explicit_policy_is_kept(tmp_path, requested):
    assert precision.resolve_policy(requested, strategy=tf.distribute.get_strategy(),
                                    cpuinfo_path=cpuinfo(tmp_path, AVX512_BF16)) == requested
