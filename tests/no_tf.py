"""Run device code in a subprocess where TensorFlow and Keras cannot be imported."""

import os
import textwrap

BLOCK_TF = textwrap.dedent("""
    import sys

    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
                raise ImportError(f"{name} is blocked: device code must not import it")
            return None

    sys.meta_path.insert(0, _Block())
""")


def no_tf_env(tmp_path, repo) -> dict:
    """Environment whose ``sitecustomize`` blocks TensorFlow/Keras imports; ``repo`` importable."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCK_TF)
    return {"PYTHONPATH": f"{site}{os.pathsep}{repo}", "PATH": os.environ.get("PATH", "")}
