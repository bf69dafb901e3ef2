"""MultiWorkerMirroredStrategy proven on two real worker processes on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mghash_tf.training.multi_worker import role

WORKER_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    sys.path.insert(0, sys.argv[3])
    from test_train import tiny_config, toy_set
    from mghash_tf.training.train import train
    result = train(tiny_config(strategy="multi_worker", frozen_epochs=2, batch_size=16), sys.argv[1],
                   image_set=toy_set(), verbose=0)
    np.savez(sys.argv[2], *[np.asarray(w) for w in result.model.get_weights()])
    print(json.dumps({"map_fine": result.metrics["test"]["map_fine"], "out": str(result.out_dir)}))
""")


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_role_from_tf_config():
    def config(task_type, index, chief=False):
        cluster = {"worker": ["a:1", "b:2"], **({"chief": ["c:3"]} if chief else {})}
        return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})

    assert role("") == ("worker", 0, True)  # no cluster: a single process is its own chief
    assert role(config("worker", 0)) == ("worker", 0, True)
    assert role(config("worker", 1)) == ("worker", 1, False)
    assert role(config("worker", 0, chief=True)) == ("worker", 0, False)
    assert role(config("chief", 0, chief=True)) == ("chief", 0, True)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        role("{not json")


def test_two_workers_end_with_identical_weights_and_only_the_chief_writes(tmp_path):
    from mghash_tf.model.saving import load_model

    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT, str(tmp_path / f"run{i}"), str(tmp_path / f"w{i}.npz"),
             os.path.dirname(__file__)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-3000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert len(w0.files) == len(w1.files) > 10
    for name in w0.files:  # trainable weights and the averaged BatchNorm statistics alike
        np.testing.assert_array_equal(w0[name], w1[name], err_msg=name)
    assert outputs[0]["map_fine"] == outputs[1]["map_fine"]
    # The chief (worker 0) wrote the run; worker 1 wrote nothing under its directory.
    for name in ("model.keras", "config.json", "metrics.json", "log.csv"):
        assert (tmp_path / "run0" / name).exists(), name
    assert not (tmp_path / "run1").exists()
    saved = load_model(tmp_path / "run0" / "model.keras")
    for name, w in zip(w0.files, saved.get_weights()):
        np.testing.assert_array_equal(w0[name], w, err_msg=name)
