"""The mixed-precision policy for `config.train.mixed_precision = "auto"`.

bfloat16 pays only where the hardware multiplies it natively: TPUs, GPUs from Ampere on,
and CPUs with AVX512_BF16 or AMX (x86) or BF16 (Arm). Elsewhere TensorFlow emulates it:
on an AVX2-only AMD EPYC the CMUdict quickstart trained at 1.6k tokens/s in bfloat16
against 13k in float32, while a CPU with AVX512_BF16 ran it 1.5x faster than float32.
Older GPUs get float16 with loss scaling.
"""

import tensorflow as tf

AUTO = "auto"
POLICIES = ("", "mixed_bfloat16", "mixed_float16")  # "" is float32
CPUINFO = "/proc/cpuinfo"
_NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_native_bfloat16(cpuinfo_path: str | None = None) -> bool:
    """Whether /proc/cpuinfo lists a bfloat16 multiply instruction set (False if unreadable)."""
    cpuinfo_path = cpuinfo_path or CPUINFO
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and _NATIVE_BF16_FLAGS & set(value.split()):
            return True
    return False


def resolve_policy(requested: str, *, strategy: tf.distribute.Strategy,
                   cpuinfo_path: str | None = None) -> str:
    """`requested` unless it is "auto"; then the fastest policy this hardware runs natively."""
    if requested != AUTO:
        return requested
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "mixed_bfloat16"
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        capability = tuple(details.get("compute_capability") or (0, 0))
        return "mixed_bfloat16" if capability >= (8, 0) else "mixed_float16"
    return "mixed_bfloat16" if cpu_has_native_bfloat16(cpuinfo_path) else ""
