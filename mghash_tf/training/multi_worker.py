"""Training across processes with ``MultiWorkerMirroredStrategy``: the worker's role, where its
outputs go, and two workarounds that make Keras 3's ``fit`` run under the strategy.

Every worker runs the same command with its own ``TF_CONFIG``; the chief (task type ``chief``,
or worker 0 when the cluster has no chief) writes the run directory, the others write theirs
into a temporary directory that is removed when they finish, so two processes never write
the same file.

Keras 3.15 with TensorFlow 2.21 cannot ``fit`` under this strategy in a multi-worker cluster
(measured here with a two-layer model on two local processes):

* ``Trainer._maybe_symbolic_build`` all-reduces the first data batch to learn its shapes, which
  the collective strategy refuses ("Attempt to convert a value (PerReplica ...) to a Tensor");
* ``reduce_per_replica`` averages the per-step logs with ``strategy.reduce("MEAN", v, axis=0)``,
  which fails on the scalar loss ("Invalid reduction dimension 0 for input with 0 dimensions").

:func:`prepare_fit` builds the model's loss and optimiser state from one local batch inside
the strategy scope (so the shapes never need a collective) and :func:`patch_keras` averages
the logs over replicas instead. ``tests/test_multi_worker.py`` trains two real worker processes
and checks they end with identical weights, so a Keras release that changes either internal
fails there, not silently.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

_PATCHED = False


def role(tf_config: str | None = None) -> tuple[str, int, bool]:
    """``(task_type, index, is_chief)`` from ``TF_CONFIG`` (the environment by default)."""
    raw = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not raw:
        return "worker", 0, True
    try:
        spec = json.loads(raw)
        cluster, task = spec.get("cluster", {}), spec.get("task", {})
        task_type, index = str(task.get("type", "worker")), int(task.get("index", 0))
    except (ValueError, AttributeError, TypeError) as e:
        raise ValueError(f"`TF_CONFIG` must be JSON with `cluster` and `task`. Received: {raw!r}") from e
    has_chief = bool(cluster.get("chief"))
    return task_type, index, task_type == "chief" or (not has_chief and task_type == "worker" and index == 0)


def in_multi_worker_mode(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._in_multi_worker_mode()


@contextmanager
def output_dir(out: Path, strategy):
    """The directory this process writes: ``out`` on the chief, a temporary one elsewhere."""
    if not in_multi_worker_mode(strategy) or role()[2]:
        yield Path(out)
        return
    task_type, index, _ = role()
    tmp = Path(tempfile.mkdtemp(prefix=f"mghash-{task_type}{index}-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def patch_keras():
    """Average the per-step logs over replicas in multi-worker mode (idempotent)."""
    global _PATCHED
    if _PATCHED:
        return
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    trainer.reduce_per_replica = reduce_per_replica
    _PATCHED = True


def prepare_fit(model, dataset, strategy):
    """Build ``model``'s compiled loss and optimiser from one local batch of ``dataset``, so that
    ``fit``/``predict`` do not all-reduce a data batch to learn its shapes."""
    patch_keras()
    batch = next(iter(dataset))
    with strategy.scope():
        model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda *args, **kwargs: None


def sync_moving_statistics(model, strategy):
    """Average the float non-trainable weights (BatchNorm moving mean and variance) over the
    workers. Each worker updates them from its own batches, so without this the workers' models
    drift apart and their validation scores, checkpoints and saved models disagree."""
    import tensorflow as tf

    variables = [w for w in model.non_trainable_weights if "float" in str(w.dtype)]
    if not variables:
        return

    @tf.function
    def means():
        def replica_fn():
            return tf.distribute.get_replica_context().all_reduce(
                "MEAN", [tf.identity(w.value) for w in variables])
        return strategy.run(replica_fn)

    for w, mean in zip(variables, means()):
        w.assign(strategy.experimental_local_results(mean)[0])


def sync_callback(strategy):
    """A callback that runs :func:`sync_moving_statistics` at the end of every epoch."""
    import keras

    class SyncMovingStatistics(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            sync_moving_statistics(self.model, strategy)

    return SyncMovingStatistics()
