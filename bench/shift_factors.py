"""Which of test_shift's rendering factors a shapes-world model fails on, one factor at a time.

    python bench/shift_factors.py                              # 300 scenes per row, the demo model, beam 3
    python bench/shift_factors.py --n 100 --factors none blur noise --checkpoint runs/x/best.pt --out runs/sf-x

`test_shift` mixes seven factors, each on in half of its scenes (``shapes.STYLES["shift"]``): other
background families, shades further from each colour's centre, larger rotations, stronger blur,
JPEG artefacts, image noise and object sizes between and beyond the trained ones. Its figures say
how much a model loses, not to what. This script renders, with the generator's own code
(``shapes.make_scene`` with ``shapes.factor_style``), one set of scenes per row:

* ``none``: the training style (what ``val`` and ``test`` are drawn from);
* one row per factor of ``shapes.SHIFT_FACTORS``: the training style with that factor alone shifted;
* ``all``: every factor shifted at once (harder than any test_shift scene, where each is on half the time).

Row r, scene i is drawn from the RNG stream (seed, r's place in ROWS, i); the colour-shape pairs are
the seen ones (test's: --world-seed's held-out pairs left out), up to three objects, about 5% empty
scenes. Every scene is captioned with the checkpoint (beam --beam) through the project's one image
loader and scored against its objects by captioner.scene_metrics (object recall, scene accuracy,
CHAIR_i / CHAIR_s, count errors) and bench/foreign_scenes.py's comparison (images naming a phantom
colour-shape pair, one-object scenes described with two or more objects, the most frequent colour
confusions).

It writes OUT/metrics.json (every row's figures and the settings) and OUT/predictions.json, and prints
a Markdown table. The scenes are written under OUT/scenes/ROW/ (JPEG, quality as the world's).
Nothing is asserted about the model's quality.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from bench.foreign_scenes import caption_scenes, compare, score
from captioner import shapes
from captioner.atomic import atomic_write_json

ROWS = ("none",) + shapes.SHIFT_FACTORS + ("all",)
_RENDER_STREAM = 7  # the third RNG key: no stream of the world generator uses [seed, 7, row, index]


def render_row(row: str, out_dir: str | Path, n: int, seed: int = 0, world_seed: int = 0) -> list[dict]:
    """Write n scenes of one row to out_dir/NNNNNN.jpg; their records ({"id", "path", "objects", "background"}).

    The colour-shape pairs are those a world of `world_seed` trains on (its held-out pairs left out).
    """
    if row not in ROWS:
        raise ValueError(f"unknown row {row!r}; expected one of {ROWS}")
    shifted = () if row == "none" else shapes.SHIFT_FACTORS if row == "all" else (row,)
    out, held_out = Path(out_dir), shapes.choose_held_out(world_seed)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(n):
        rng = np.random.default_rng([seed, _RENDER_STREAM, ROWS.index(row), index])
        image, objects, background = shapes.make_scene(rng, "test", held_out, style=shapes.factor_style(rng, shifted))
        path = out / f"{index + 1:06d}.jpg"
        image.save(path, quality=shapes.JPEG_QUALITY)
        records.append({"id": index + 1, "path": str(path), "objects": objects, "background": background})
    return records


def measure_row(records: Sequence[dict], outputs: Sequence[Any]) -> dict[str, Any]:
    """A row's figures from its scene records and their CaptionOutputs (in the same order)."""
    preds = {r["id"]: o.text for r, o in zip(records, outputs)}
    objects = {r["id"]: r["objects"] for r in records}
    figures = score(preds, objects)
    keep = ("images", "objects", "object_recall", "scene_accuracy", "CHAIR_i", "CHAIR_s", "count_error_rate",
            "phantom_rate", "one_object_images", "one_object_multi", "colour_confusions", "shape_confusions")
    return {k: figures[k] for k in keep if k in figures}


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:.3f}"
    return str(v)


def table(rows: dict[str, dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = ["| shifted | images | object recall | scene acc. | CHAIR_i | CHAIR_s | count errors | phantom images"
             " | 1 object called 2+ | top colour confusions (true->said) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, f in rows.items():
        conf = ", ".join(f"{t}->{s} {k}" for t, s, k in f["colour_confusions"][:3]) or "none"
        lines.append(f"| {name} | {f['images']} | {_cell(f['object_recall'])} | {_cell(f['scene_accuracy'])} | "
                     f"{_cell(f['CHAIR_i'])} | {_cell(f['CHAIR_s'])} | "
                     f"{_cell(f.get('count_error_rate', float('nan')))} | "
                     f"{_cell(f['phantom_rate'])} | {f['one_object_multi']}/{f['one_object_images']} | {conf} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from cli import DEFAULT_CHECKPOINT

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=300, help="scenes per row (default 300)")
    p.add_argument("--seed", type=int, default=0, help="the scenes' seed")
    p.add_argument("--world-seed", type=int, default=0,
                   help="the seed of the world the model was trained on (its held-out pairs are left out; default 0)")
    p.add_argument("--factors", nargs="+", choices=ROWS, default=list(ROWS), metavar="ROW",
                   help=f"rows to measure (default all): {', '.join(ROWS)}")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default=str(ROOT / "runs" / "shift_factors"),
                   help="output folder: scenes/ROW/, metrics.json, predictions.json")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    wanted = [r for r in ROWS if r in args.factors]
    t0 = time.perf_counter()
    rendered = {row: render_row(row, out / "scenes" / row, args.n, args.seed, args.world_seed) for row in wanted}
    print(f"rendered {len(wanted)} x {args.n} scenes in {time.perf_counter() - t0:.0f}s", flush=True)
    # one model load and one batched pass over every row's images
    every = caption_scenes(args.checkpoint, [r["path"] for row in wanted for r in rendered[row]], args.beam,
                           args.device, args.batch_size)
    rows, predictions = {}, {}
    for k, row in enumerate(wanted):
        records, outputs = rendered[row], every[k * args.n:(k + 1) * args.n]
        rows[row] = measure_row(records, outputs)
        predictions[row] = [{"id": r["id"], "file": r["path"], "background": r["background"], "caption": o.text,
                             "objects": r["objects"], **{k: v for k, v in compare(o.text, r["objects"]).items()
                                                         if k != "stated"}}
                            for r, o in zip(records, outputs)]
        f = rows[row]
        print(f"{row:12s} recall {_cell(f['object_recall'])}  scene {_cell(f['scene_accuracy'])}  "
              f"CHAIR_s {_cell(f['CHAIR_s'])}")
    result = {"rows": rows, "checkpoint": str(args.checkpoint), "beam": args.beam,
              "settings": {"n": args.n, "seed": args.seed, "world_seed": args.world_seed, "styles": shapes.STYLES},
              "scorer": "captioner.scene_metrics (colour-shape pairs parsed from the caption)"}
    atomic_write_json(out / "metrics.json", result, indent=1)
    atomic_write_json(out / "predictions.json", predictions, indent=1)
    print(f"\ncheckpoint {args.checkpoint}, beam {args.beam}, {args.n} scenes per row, seed {args.seed}, "
          f"{time.perf_counter() - t0:.0f}s\n")
    print(table(rows))
    print(f"\nwrote {out / 'metrics.json'} and {out / 'predictions.json'}")
    return result


if __name__ == "__main__":
    main()
