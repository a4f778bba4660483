"""bench/shift_factors.py: each row shifts what it names and nothing else, its scenes are deterministic, and
a run of the script with the demo model writes figures that agree with its own predictions."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import shift_factors as sf  # the root is on pytest's pythonpath (pyproject.toml)
from captioner import shapes


def test_rows_are_deterministic_and_draw_from_the_named_style(tmp_path):
    a = sf.render_row("backgrounds", tmp_path / "a", 12, seed=1)
    b = sf.render_row("backgrounds", tmp_path / "b", 12, seed=1)
    assert [Path(r["path"]).read_bytes() for r in a] == [Path(r["path"]).read_bytes() for r in b]
    assert {r["background"] for r in a} <= set(shapes.STYLES["shift"]["backgrounds"])
    none = sf.render_row("none", tmp_path / "none", 12, seed=1)
    assert {r["background"] for r in none} <= set(shapes.STYLES["train"]["backgrounds"])
    # the pairs are the trained ones: the world's held-out pairs never appear
    held = {tuple(p) for p in shapes.choose_held_out(0)}
    many = sf.render_row("sides", tmp_path / "sides", 60, seed=2)
    assert not {(o["colour"], o["shape"]) for r in many for o in r["objects"]} & held
    # object sizes beyond the trained ones (cells up to 84 px in training, up to 100 here)
    assert max(max(o["bbox"][2:]) for r in many for o in r["objects"]) > 86
    assert max(max(o["bbox"][2:]) for r in none for o in r["objects"]) <= 84
    with pytest.raises(ValueError, match="unknown row"):
        sf.render_row("colour", tmp_path / "x", 1)


def test_a_run_with_the_demo_model_agrees_with_its_predictions(tmp_path):
    out = tmp_path / "run"
    result = sf.main(["--n", "6", "--factors", "none", "jpeg", "--out", str(out), "--threads", "1"])
    metrics = json.loads((out / "metrics.json").read_text())
    preds = json.loads((out / "predictions.json").read_text())
    assert set(metrics["rows"]) == set(preds) == {"none", "jpeg"} and metrics["beam"] == 3
    for row, records in preds.items():
        f = metrics["rows"][row]
        assert f["images"] == len(records) == 6
        n_objects = sum(len(r["objects"]) for r in records)
        named = n_objects - sum(len(r["missed"]) for r in records)
        assert f["objects"] == n_objects
        if n_objects:
            assert f["object_recall"] == pytest.approx(named / n_objects)
        assert f["phantom_rate"] == pytest.approx(sum(bool(r["phantoms"]) for r in records) / 6)
        assert all(Path(r["file"]).is_file() and r["caption"] for r in records)
    assert result["rows"]["none"]["images"] == 6
    assert "| none | 6 |" in sf.table(result["rows"])
