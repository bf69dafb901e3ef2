"""The dependency rule, checked on the source: apps (export, edge_demo, demo) -> library ->
core; the core never imports TensorFlow/Keras or the rest of the library; export and edge_demo
never import each other; nobody imports another module's private names; no import circle."""

from pathlib import Path

from import_graph import cycles, imports_of, project_imports, violations

REPO = Path(__file__).resolve().parents[1]
KNOWN = {"mghash_tf", "mghash_tf.core", "mghash_tf.core.layout", "mghash_tf.model",
         "mghash_tf.model.network", "mghash_tf.training.train", "export", "export.convert",
         "edge_demo", "edge_demo.photos", "demo", "demo.run"}


def test_the_project_keeps_the_dependency_rule():
    imports = project_imports(REPO)
    assert len(imports) > 200  # the walk found the code
    assert violations(imports) == []


def test_the_import_graph_has_no_circle():
    assert cycles(project_imports(REPO)) == []


def _check(source: str, text: str) -> list:
    return violations(imports_of(source, text, KNOWN))


def test_the_checker_catches_each_kind_of_violation():
    assert _check("mghash_tf.core.layout", "import keras\n")
    assert _check("mghash_tf.core.layout", "def f():\n    from tensorflow import lite\n")
    assert _check("mghash_tf.core.layout", "from mghash_tf.model import build_model\n")
    assert _check("mghash_tf.model.network", "from edge_demo import photos\n")
    assert _check("mghash_tf.model.network", "from demo.run import run_demo\n")
    assert _check("export.convert", "import edge_demo.photos\n")
    assert _check("edge_demo.photos", "from export.convert import convert_model\n")
    assert _check("demo.run", "from mghash_tf.training.train import _build\n")
    assert _check("mghash_tf.model", "from mghash_tf.model.network import _private\n")
    # Allowed: the core's own modules and the package version; apps on the library and core.
    assert not _check("mghash_tf.core.layout", "from mghash_tf import __version__\nimport numpy\n")
    assert not _check("edge_demo.photos", "from mghash_tf.core.layout import get_layout\n")
    assert not _check("demo.run", "from export.convert import convert_model\nimport edge_demo.photos\n")


def test_the_cycle_finder_finds_a_circle():
    a = imports_of("mghash_tf.model.network", "from mghash_tf.training.train import train\n", KNOWN)
    b = imports_of("mghash_tf.training.train", "from mghash_tf.model.network import f\n", KNOWN)
    assert cycles(a + b) == [["mghash_tf.model.network", "mghash_tf.training.train",
                              "mghash_tf.model.network"]]
