"""Caption many images: batched, resumable, one record per image.

    python caption.py photos/ --out captions.jsonl
    python caption.py 'shots/**/*.jpg' more.txt --out captions.csv
    python caption.py val2014/ --format coco --out results.json --image-ids captions_val2014.json
    python caption.py photos/ --out captions.jsonl --resume      # after Ctrl-C or a kill

INPUT: image files, folders (searched recursively for .jpg .jpeg .png .gif .webp .bmp .tif .tiff,
any case; hidden files skipped), glob patterns (quote them; ** recurses) or .txt files listing
one image path per line (blank lines and # comments ignored; relative paths are relative to the
.txt file). Records follow the order of the inputs, sorted within each folder or pattern; a file
named twice is captioned once. An INPUT that matches nothing stops the run before any work; a
listed file that is missing or unreadable gets an error record.

Images are decoded in DataLoader workers and captioned a batch at a time (one encoder pass and
one batched beam search per batch). Records are appended and synced to disk after every batch.
"""
from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import io
import json
import logging
import os
import re
import shlex
import sys
import time
from pathlib import Path

from captioner.atomic import atomic_write_text
from captioner.search import DEFAULT_MAX_LEN
from cli import DEFAULT_CHECKPOINT, setup_logging

log = logging.getLogger("caption")

MAX_BEAM, MAX_LEN = 20, 100
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
CSV_FIELDS = ["path", "caption", "score", "error"]
SUFFIX = {"jsonl": ".jsonl", "csv": ".csv", "coco": ".json"}

EPILOG = """\
output records (--format, default: from the --out suffix, .csv -> csv, .json -> coco, else jsonl):
  jsonl  {"path", "caption", "score"} per line (+ "beams": [[text, score], ...] with --beams-out);
         {"path", "error"} for an image that could not be read
  csv    columns path,caption,score,error
  coco   [{"image_id", "caption"}], the COCO results format, written atomically at the end; image
         ids from --image-ids, else the number in the file name (COCO_val2014_000000391895.jpg ->
         391895). Per-image records, errors included, go to OUT.partial.jsonl, which is kept.

resuming: after Ctrl-C (which prints the command) or a kill, run the same command with --resume:
  a torn last line is cut off, every image that already has a record is skipped (error records
  count as done: delete an error line to try that image again) and only the rest is captioned.

exit status: 0 every image captioned; 2 some images failed (listed in the summary), or a bad
  argument, an INPUT matching nothing, or an existing output without --resume / --overwrite;
  130 interrupted by Ctrl-C (what was finished is saved).
"""


class InputError(ValueError):
    """A bad INPUT or --image-ids file, or an output file caption.py did not write."""


# --- inputs -------------------------------------------------------------------------------------

def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def _walk(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(root, f) for f in files if _is_image(f) and not f.startswith(".")]
    return sorted(found)


def _listed(txt: str) -> list[str]:
    base = os.path.dirname(os.path.abspath(txt))
    with open(txt, encoding="utf-8-sig") as f:
        lines = [line.strip() for line in f]
    return [os.path.join(base, os.path.expanduser(s)) for s in lines if s and not s.startswith("#")]


def expand_inputs(inputs: list[str]) -> list[str]:
    """INPUT arguments -> absolute image paths, in argument order, each file once."""
    paths, seen = [], set()
    for arg in inputs:
        if os.path.isdir(arg):
            found, why = _walk(arg), f"folder holds no image files ({' '.join(IMAGE_EXTS)})"
        elif os.path.isfile(arg) and arg.lower().endswith(".txt"):
            found, why = _listed(arg), "list file names no paths"
        elif os.path.isfile(arg):
            found, why = [arg], ""
        elif any(c in arg for c in "*?["):
            found = sorted(p for p in glob.glob(arg, recursive=True) if os.path.isfile(p) and _is_image(p))
            why = "pattern matches no image files"
        else:
            raise InputError(f"{arg}: no such file or folder (and not a glob pattern)")
        if not found:
            raise InputError(f"{arg}: {why}")
        for p in found:
            if (key := os.path.realpath(p)) not in seen:
                seen.add(key)
                paths.append(os.path.abspath(p))
    return paths


def load_image_ids(path: str) -> dict[str, int]:
    """File name -> image id from a COCO captions/instances json or a Karpathy split json (the readers' rule)."""
    from captioner.datasets import DatasetError, image_ids_by_file_name

    try:
        return image_ids_by_file_name(path)
    except DatasetError as e:
        raise InputError(str(e)) from e


def image_id(path: str, ids: dict[str, int] | None) -> int | None:
    """The id from --image-ids when given, else the last number in the file name."""
    name = os.path.basename(path)
    if ids is not None:
        return ids.get(name)
    digits = re.findall(r"\d+", os.path.splitext(name)[0])
    return int(digits[-1]) if digits else None


def attention_png(path: str) -> str:
    """A figure name per image that images of the same name in other folders cannot collide with."""
    return f"{Path(path).stem}-{hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]}.png"


# --- the record journal -------------------------------------------------------------------------



class Journal:
    """Append-only records, one per line (jsonl or csv), synced every batch; read() repairs a kill's damage."""

    def __init__(self, path: str, fmt: str):
        self.path, self.fmt, self.f = path, fmt, None

    def _parse(self, line: str) -> dict | None:
        try:
            if self.fmt == "csv":
                row = next(csv.reader([line]))
                if len(row) != len(CSV_FIELDS) or not row[0]:
                    return None
                rec = dict(zip(CSV_FIELDS, row))  # the same keys as a jsonl record
                return {k: v for k, v in rec.items() if v != "" or (k == "caption" and not rec["error"])}
            rec = json.loads(line)
            return rec if isinstance(rec, dict) and isinstance(rec.get("path"), str) else None
        except (ValueError, csv.Error, StopIteration):
            return None

    def _line(self, rec: dict) -> str:
        if self.fmt == "jsonl":
            return json.dumps(rec, ensure_ascii=False) + "\n"
        buf = io.StringIO()  # newlines inside a field would break the one-record-per-line repair
        csv.writer(buf, lineterminator="\n").writerow([str(rec.get(k, "")).replace("\r", " ").replace("\n", " ")
                                                       for k in CSV_FIELDS])
        return buf.getvalue()

    def read(self) -> list[dict]:
        """The complete records: a torn last line is truncated away, bad or repeated lines dropped."""
        if not os.path.exists(self.path):
            return []
        with open(self.path, "rb+") as f:
            data = f.read()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                log.warning("%s: cutting off an incomplete last line (%d bytes) left by an interrupted run",
                            self.path, len(data) - end)
                f.truncate(end)
        lines = [b.decode("utf-8", errors="replace") + "\n" for b in data[:end].split(b"\n")[:-1]]
        header = ""
        if self.fmt == "csv" and lines:
            header, lines = lines[0], lines[1:]
            if next(csv.reader([header])) != CSV_FIELDS:
                raise InputError(f"{self.path}: not a caption.py CSV (its header is not {','.join(CSV_FIELDS)})")
        records, keep, seen = [], [], set()
        for line in lines:
            rec = self._parse(line)
            if rec is not None and rec["path"] not in seen:
                seen.add(rec["path"])
                records.append(rec)
                keep.append(line)
        if len(keep) < len(lines):
            log.warning("%s: dropping %d unreadable or repeated lines", self.path, len(lines) - len(keep))
            atomic_write_text(self.path, header + "".join(keep))
        return records

    def append(self, records: list[dict]) -> None:
        if self.f is None:
            fresh = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
            self.f = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 (open across batches)
            if self.fmt == "csv" and fresh:
                self.f.write(",".join(CSV_FIELDS) + "\n")
        self.f.write("".join(self._line(r) for r in records))
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


# --- captioning ---------------------------------------------------------------------------------

def make_record(path: str, out, error: str, beams: bool) -> dict:
    if error:
        return {"path": path, "error": error}
    rec = {"path": path, "caption": out.text, "score": round(out.score, 4)}
    if beams:
        rec["beams"] = [[t, round(s, 4)] for t, s in out.beams]
    return rec


def resume_command(argv: list[str]) -> str:
    script = sys.argv[0] if sys.argv[0].endswith("caption.py") else "caption.py"
    args = [a for a in argv if a != "--overwrite"]
    return shlex.join(["python", script, *args] + ([] if "--resume" in args else ["--resume"]))


# --- the CLI ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, glob patterns, .txt path lists")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="model (default: the bundled demo model)")
    p.add_argument("--out", help="output file (default: captions.jsonl / .csv / .json by --format)")
    p.add_argument("--format", choices=list(SUFFIX), help="record format (default: from the --out suffix, else jsonl)")
    p.add_argument("--beam", type=int, default=3,
                   help=f"beam width (default %(default)s; 1 = greedy, at most {MAX_BEAM})")
    p.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN,
                   help=f"most tokens per caption, <end> included (default %(default)s, at most {MAX_LEN})")
    p.add_argument("--batch-size", type=int, default=32,
                   help="images per encoder pass and beam search (default %(default)s)")
    p.add_argument("--workers", type=int, default=max(1, min(4, (os.cpu_count() or 2) // 2)),
                   help="DataLoader processes decoding images (default %(default)s; 0: in the main process)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--attention-dir", help="also write one PNG per image: the image and each word's attention (slower)")
    p.add_argument("--image-ids", metavar="FILE",
                   help="--format coco: COCO captions/instances or Karpathy json giving the ids")
    p.add_argument("--beams-out", action="store_true",
                   help="also record every kept beam with its score (jsonl, coco journal)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="keep the existing records (errors included) and caption the rest")
    again.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.format is None:
        suffix = Path(args.out or "").suffix.lower()
        args.format = {".csv": "csv", ".json": "coco"}.get(suffix, "jsonl")
    args.out = args.out or "captions" + SUFFIX[args.format]
    if not 1 <= args.beam <= MAX_BEAM:
        parser.error(f"--beam must be between 1 and {MAX_BEAM}")
    if not 1 <= args.max_len <= MAX_LEN:
        parser.error(f"--max-len must be between 1 and {MAX_LEN}")
    if args.batch_size < 1 or args.workers < 0:
        parser.error("--batch-size must be >= 1 and --workers >= 0")
    if args.image_ids and args.format != "coco":
        parser.error("--image-ids is for --format coco")
    if args.beams_out and args.format == "csv":
        parser.error("--beams-out needs --format jsonl or coco")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    setup_logging()
    coco = args.format == "coco"
    journal = Journal(args.out + ".partial.jsonl" if coco else args.out, "csv" if args.format == "csv" else "jsonl")
    try:
        paths = expand_inputs(args.inputs)
        ids = load_image_ids(args.image_ids) if args.image_ids else None
        existing = sorted({p for p in (args.out, journal.path) if os.path.exists(p)})
        if existing and not (args.resume or args.overwrite):
            raise InputError(f"{existing[0]} exists: add --resume to caption only the images it lacks, "
                             "or --overwrite to start again")
        for p in existing if args.overwrite else []:
            os.remove(p)
        done = journal.read()
    except (InputError, OSError, ValueError) as e:
        print(f"caption.py: error: {e}", file=sys.stderr)
        return 2

    have = {os.path.realpath(r["path"]) for r in done}
    todo = [p for p in paths if os.path.realpath(p) not in have]
    new: list[dict] = []
    if coco:
        todo, id_of, new = assign_ids(todo, done, ids)
    log.info("%d images: %d already done, %d to caption -> %s", len(paths), len(paths) - len(todo) - len(new),
             len(todo), journal.path)

    from tqdm import tqdm

    start, n_run = time.monotonic(), 0
    bar = tqdm(total=len(todo), unit="img", desc="caption", disable=args.no_progress or not todo)
    try:
        if new:
            journal.append(new)
        if todo:
            from captioner.evaluation import caption_files
            from captioner.model import Captioner
            from captioner.runtime import resolve_device

            model = Captioner.from_checkpoint(args.checkpoint, resolve_device(args.device))
            if args.attention_dir:
                os.makedirs(args.attention_dir, exist_ok=True)
            start = time.monotonic()
            for batch in caption_files(model, todo, beam_size=args.beam, max_len=args.max_len,
                                       batch_size=args.batch_size, num_workers=args.workers):
                recs = [make_record(p, o, e, args.beams_out) for p, o, e in batch]
                for r in recs:
                    if coco and "error" not in r:
                        r["image_id"] = id_of[r["path"]]
                journal.append(recs)
                new += recs
                n_run += len(batch)
                bar.update(len(batch))
                if args.attention_dir:
                    save_figures(batch, args.attention_dir)
    except KeyboardInterrupt:
        bar.close()
        print(f"\ninterrupted: {len(done) + len(new)} of {len(paths)} images have a record in {journal.path}.\n"
              f"continue with:\n  {resume_command(argv)}", file=sys.stderr)
        return 130
    finally:
        bar.close()
        journal.close()

    records = done + new
    if coco:
        atomic_write_text(args.out, json.dumps([{"image_id": r["image_id"], "caption": r["caption"]}
                                            for r in records if "error" not in r]))
    return summarize(records, n_run, time.monotonic() - start, args.out, journal.path)


def assign_ids(todo: list[str], done: list[dict], ids: dict[str, int] | None):
    """COCO ids for the images to caption; one without a usable id gets an error record instead."""
    used = {r["image_id"]: r["path"] for r in done if "image_id" in r}
    keep, id_of, errors = [], {}, []
    for p in todo:
        iid = image_id(p, ids)
        if iid is None:
            errors.append({"path": p, "error": f"{p}: no image id known (not in --image-ids, no number in the name)"})
        elif iid in used:
            errors.append({"path": p, "error": f"{p}: image id {iid} is already used by {used[iid]}"})
        else:
            used[iid], id_of[p] = p, iid
            keep.append(p)
    return keep, id_of, errors


def save_figures(batch, folder: str) -> None:
    from captioner.images import ImageLoadError, load_image
    from captioner.overlay import attention_figure

    for path, out, _ in batch:
        if out is None:
            continue
        try:
            fig = attention_figure(load_image(path), out.words, out.alphas, caption=out.text)
            fig.save(os.path.join(folder, attention_png(path)), compress_level=1)  # speed over size
        except ImageLoadError as e:  # changed since it was captioned
            log.warning("no attention figure: %s", e)


def summarize(records: list[dict], n_run: int, seconds: float, out: str, journal: str) -> int:
    failed = [r for r in records if "error" in r]
    rate = f", {n_run / seconds:.1f} images/s" if n_run and seconds > 0 else ""
    print(f"{len(records) - len(failed)} captioned, {len(failed)} failed ({n_run} images this run in "
          f"{seconds:.1f} s{rate}) -> {out}", file=sys.stderr)
    for r in failed[:10]:
        print(f"  failed: {r['error']}", file=sys.stderr)
    if len(failed) > 10:
        print(f"  ... and {len(failed) - 10} more (error records in {journal})", file=sys.stderr)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
