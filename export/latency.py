"""Single-image inference latency of a ``.tflite`` model under LiteRT.

Only ``invoke()`` is timed (the input tensor is set once): that is the model's cost, apart from
decoding and resizing photos, which every variant shares. Batch 1, as a device encodes a photo
at a time. On a shared machine other processes add noise; p90 shows how much, and
:func:`measure_interleaved` times several models in turn, in short blocks, so a burst of
background load hits all of them alike and ratios between them (head overhead) stay fair.
"""

from __future__ import annotations

import time

import numpy as np

from mghash_tf.core.encoder import interpreter_class


def _input_tensor(detail: dict, rng) -> np.ndarray:
    shape = [1] + [int(v) for v in detail["shape"][1:]]
    pixels = rng.integers(0, 256, size=shape)
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return pixels.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(pixels + (info.min if info.min < 0 else 0), info.min, info.max).astype(dtype)


def _prepared(tflite: bytes, num_threads: int, seed: int):
    interpreter = interpreter_class()(model_content=tflite, num_threads=num_threads)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], [1] + [int(v) for v in detail["shape"][1:]])
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], _input_tensor(detail, np.random.default_rng(seed)))
    return interpreter


def _summary(times: np.ndarray, threads: int) -> dict:
    return {"p50_ms": float(np.percentile(times, 50)), "p90_ms": float(np.percentile(times, 90)),
            "mean_ms": float(times.mean()), "repeats": int(len(times)), "threads": threads}


def measure_interleaved(models: dict, *, num_threads: int = 1, repeats: int = 30, warmup: int = 3,
                        block: int = 10, seed: int = 0) -> dict:
    """``{name: summary}`` for ``{name: tflite bytes}``, timed in rounds: each round gives every
    model one untimed warm-up run (its weights back in cache) then ``block`` timed runs."""
    if not isinstance(repeats, int) or repeats < 1 or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"`repeats` must be >= 1 and `warmup` >= 0. Received: {repeats}, {warmup}")
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"`block` must be an int >= 1. Received: block={block!r}")
    interpreters = {name: _prepared(data, num_threads, seed) for name, data in models.items()}
    for interpreter in interpreters.values():
        for _ in range(warmup):
            interpreter.invoke()
    times = {name: [] for name in models}
    while len(next(iter(times.values()))) < repeats:
        for name, interpreter in interpreters.items():
            interpreter.invoke()
            for _ in range(min(block, repeats - len(times[name]))):
                start = time.perf_counter()
                interpreter.invoke()
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: _summary(np.asarray(t), num_threads) for name, t in times.items()}


def measure_latency(tflite: bytes, *, num_threads: int = 1, repeats: int = 30, warmup: int = 3,
                    seed: int = 0) -> dict:
    """``{"p50_ms", "p90_ms", "mean_ms", "repeats", "threads"}`` of ``invoke()`` at batch 1."""
    return measure_interleaved({"model": tflite}, num_threads=num_threads, repeats=repeats,
                               warmup=warmup, seed=seed)["model"]
