"""The committed demo model: small, safe to load, and as good as the README says.

Runs evaluate.py exactly as a newcomer would (defaults: the demo checkpoint, the shapes test
split, beam 3), on the default shapes world (generated into data/shapes when missing).
"""
from __future__ import annotations

import json

import pytest
import torch

import evaluate
from cli import DEFAULT_CHECKPOINT


def test_checkpoint_is_small_and_plain():
    assert DEFAULT_CHECKPOINT.stat().st_size <= 10 * 1024 * 1024
    ck = torch.load(DEFAULT_CHECKPOINT, weights_only=True)  # no pickled objects inside
    assert ck["model"]["encoder"] is None and "train" not in ck  # encoder weights come from the package
    assert ck["model"]["vocab"]["itos"][:4] == ["<pad>", "<start>", "<end>", "<unk>"]


@pytest.fixture(scope="module")
def test_metrics(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    result = evaluate.main(["--out", str(out), "--no-progress"])
    return result, out


def test_demo_model_meets_the_floors(test_metrics):
    """Floors the committed model holds (README, "Results: the demo model").

    The model-quality issue's floors on test: scene accuracy >= 0.90 (0.904), CHAIR_i <= 0.05 (0.035), and
    relation_rate >= 0.20 with relation accuracy >= 0.80 (0.515 at 0.867, 315 statements). The tighter floors are
    this model's with a margin, as the README says. The previous demo model (`--preset shapes-base`: scene accuracy
    0.922, BLEU-4 0.828) states no relation, so it fails the relation floors.
    """
    result, out = test_metrics
    m, info = result["metrics"], result["info"]
    assert info["split"] == "test" and info["beam"] == 3
    assert info["images"] == 1000
    assert m["scene_accuracy"] >= 0.90 and m["CHAIR_i"] <= 0.05, m  # the issue's
    assert m["relation_rate"] >= 0.20 and m["relation_accuracy"] >= 0.80, m  # the issue's
    assert m["relation_rate"] >= 0.45 and m["relation_accuracy"] >= 0.84 and info["relations_checked"] >= 250, info
    assert m["BLEU-4"] >= 0.72, m
    assert m["object_recall"] >= 0.93, m
    assert m["grounding"] >= 0.75 and m["grounding"] >= 5 * m["grounding_chance"], m
    assert m["count_error_rate"] <= 0.02, m
    saved = json.loads((out / "metrics_test_beam3.json").read_text())
    assert saved["metrics"]["BLEU-4"] == pytest.approx(m["BLEU-4"])


def test_demo_model_on_unseen_colour_shape_pairs(tmp_path):
    result = evaluate.main(["--split", "test_novel", "--out", str(tmp_path), "--no-progress", "--no-meteor"])
    assert result["info"]["images"] == 1000
    assert result["metrics"]["scene_accuracy"] >= 0.70, result["metrics"]  # the floor; 0.734


def test_demo_model_captions_a_shapes_image_sensibly(test_metrics):  # the fixture made sure the world exists
    from captioner.model import Captioner
    from captioner.scene_metrics import parse_objects
    from captioner.shapes import load_objects
    from cli import DEFAULT_SHAPES_DIR

    model = Captioner.from_checkpoint(DEFAULT_CHECKPOINT)
    objects = load_objects(DEFAULT_SHAPES_DIR / "annotations" / "instances_test.json")
    ids = sorted(objects)[:20]
    paths = [DEFAULT_SHAPES_DIR / "images" / "test" / f"{i:06d}.jpg" for i in ids]
    outs = model.caption(paths, beam_size=3)
    right = 0
    for iid, o in zip(ids, outs):
        assert o.alphas.shape == (len(o.words), *model.grid)
        truth = {(ob["colour"], ob["shape"]) for ob in objects[iid]}
        right += set(parse_objects(o.text)) == truth
    assert right >= 14, [o.text for o in outs]  # 17 of 20
