"""Mixed precision: what ``mixed_precision="auto"`` picks on this machine, building a model
under a policy without leaking it, and the float32 twin that is saved and exported.

bfloat16 keeps float32's exponent range, so it needs no loss scaling; CPUs with AVX512_BF16
or AMX (and Ampere-or-newer GPUs) run it natively. On the 2-core development machine it trains
the ``fast_cnn`` recipe about twice as fast as float32 (README, "Training recipes").
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import keras

from mghash_tf.model.layers import walk

logger = logging.getLogger(__name__)

POLICIES = {"none": None, "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_has_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """Whether the CPU flags list a native bfloat16 instruction set (Linux; False elsewhere)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(f in flags for f in CPU_BF16_FLAGS)


def _gpu_has_bf16() -> bool | None:
    """None without a GPU; else whether every GPU is compute capability 8.0 or newer."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    capabilities = [tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0)) for g in gpus]
    return all(tuple(c) >= (8, 0) for c in capabilities)


def resolve(setting: str) -> str | None:
    """A ``TrainConfig.mixed_precision`` value -> a Keras policy name, or None for float32."""
    if setting != "auto":
        return POLICIES[setting]
    gpu = _gpu_has_bf16()
    native = cpu_has_bf16() if gpu is None else gpu
    return "mixed_bfloat16" if native else None


@contextlib.contextmanager
def policy(setting: str):
    """Layers built inside take the policy; the previous global policy comes back after."""
    previous = keras.mixed_precision.global_policy()
    name = resolve(setting)
    if name:
        keras.mixed_precision.set_global_policy(name)
    try:
        yield name
    finally:
        keras.mixed_precision.set_global_policy(previous)


def float32_twin(model: keras.Model, build) -> keras.Model:
    """``model`` itself when it computes in float32, else ``build()`` (made under the float32
    policy) holding the same weights: what is saved, evaluated and exported, so a model trained
    in mixed precision behaves exactly like a float32-trained one with those weights."""
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in walk(model)):
        return model
    with policy("none"):
        twin = build()
    twin.set_weights(model.get_weights())
    return twin

