import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    from demo.run import run_demo

    result = run_demo(tmp_path, epochs=1, verbose=0)
    out = capsys.readouterr().out
    assert "int8 TFLite test mAP@all through the NumPy index" in out
    # chance is 0.1 for fine (10 balanced classes) and ~0.52 for coarse (40 % vehicles)
    assert result["int8_index"]["fine"] > 0.12
    assert result["int8_index"]["coarse"] > 0.55
    assert abs(result["int8_index"]["fine"] - result["keras"]["map_fine"]) < 0.05
