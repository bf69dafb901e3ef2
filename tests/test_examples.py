"""The README's Keras-native example runs end to end on tiny data."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


def test_keras_native_example_runs_end_to_end(tmp_path, capsys):
    import keras_native

    result = keras_native.main(["--epochs", "1", "--max-images", "256", "--out", str(tmp_path)])
    assert result["model"].is_file() and Path(result["tflite"]).is_file()
    assert len(result["hits"]) == 5 and all(len(row) == 5 for row in result["hits"])
    assert capsys.readouterr().out.count("query ") == 5
