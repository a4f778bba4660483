"""Tokenizer comparison: the previous hand-ported PTB rules, the NLTK-based tokenizer, Java PTB.

    python bench/tokenizer_compare.py                          # a small generated shapes world + varied captions
    python bench/tokenizer_compare.py --shapes-dir data/shapes # every caption of an existing world instead
    python bench/tokenizer_compare.py --no-java                # old vs new only
    python bench/tokenizer_compare.py --predictions runs/eval/predictions_test_beam3.json  # BLEU table only

Three tokenizers are run on every caption:
  * old:  the previous pure-Python tokenizer (hand-ported Treebank rules), frozen in
          tests/old_tokenizer.py for this comparison;
  * new:  captioner.text.tokenize (nltk's TreebankWordTokenizer + the project's clean-up);
  * java: pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1, what the COCO scores are computed
          on), through captioner.metrics, with pycocoevalcap's punctuation removal.
Corpora: (a) every caption of a shapes world (generated into a temporary folder unless
--shapes-dir is given), (b) the hand-written varied English captions of
tests/data/captions_varied.txt (one per line). For each corpus it prints how many captions
differ between each pair, then every differing caption with the three token lists, and on the
shapes world whether the vocabulary built with each tokenizer is the same (and whether it is
--checkpoint's, as it is for the demo model on the default world, --shapes-dir data/shapes).

With --predictions (a COCO results file written by evaluate.py) it instead prints BLEU-1..4 of
those predictions computed four ways, to show what moves the number:
  * pycocoevalcap (Java PTB tokens)   what evaluate.py reports as BLEU-n;
  * pycocoevalcap (tokenize() tokens) the same scorer on the project's tokens;
  * nltk corpus_bleu                  captioner.metrics.nltk_corpus_bleu (tokenize() tokens, once
                                      per image);
  * tutorial-style                    as sgrvinod's a-PyTorch-Tutorial-to-Image-Captioning eval.py:
                                      Karpathy-file tokens, words outside the model's vocabulary
                                      as <unk> on both sides, 5 references per image and every
                                      image repeated once per reference (5x); also without the
                                      repetition and without <unk>, to separate the two, and with
                                      the vocabulary cut to its 40 most frequent words, to show
                                      what <unk> does where a vocabulary leaves words out.
References come from the Karpathy-style file of the world (dataset_shapes.json in --shapes-dir,
default data/shapes), the vocabulary from --checkpoint. Asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from captioner import metrics
from captioner.text import Vocab, tokenize
from old_tokenizer import old_tokenize  # tests/old_tokenizer.py: the frozen previous tokenizer

VARIED = ROOT / "tests" / "data" / "captions_varied.txt"
UNK_ILLUSTRATION_WORDS = 40  # the BLEU table's <unk> illustration keeps this many most frequent words


def read_varied(path: Path = VARIED) -> list[str]:
    return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def shapes_captions(shapes_dir: Path | None, seed: int, n_train: int) -> tuple[list[str], list[str]]:
    """(captions, their splits) of every image of a world; a small world is generated when no dir is given."""
    def read(world: Path) -> tuple[list[str], list[str]]:
        data = json.loads((world / "dataset_shapes.json").read_text())
        pairs = [(s["raw"], im["split"]) for im in data["images"] for s in im["sentences"]]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    if shapes_dir is not None:
        return read(Path(shapes_dir))
    from captioner import shapes

    with tempfile.TemporaryDirectory() as tmp:
        sizes = {"train": n_train, "val": n_train // 10, "test": n_train // 10, "test_novel": n_train // 10}
        world = shapes.generate_world(tmp, seed=seed, sizes=sizes, workers=1)
        return read(world)


def java_tokens(captions: list[str]) -> list[list[str]] | None:
    if not metrics.java_available():
        return None
    out, _ = metrics._tokenize_corpus({i: [c] for i, c in enumerate(captions)}, use_java=True)
    return [out[i][0].split() for i in range(len(captions))]


def timed(fn, captions: list[str]) -> tuple[list[list[str]], float]:
    start = time.perf_counter()
    toks = [fn(c) for c in captions]
    return toks, (time.perf_counter() - start) / max(1, len(captions)) * 1e6


def compare(name: str, captions: list[str], use_java: bool, show: int) -> dict:
    tokenize(".")  # import nltk outside the timing
    old, old_us = timed(old_tokenize, captions)
    new, new_us = timed(tokenize, captions)
    java = java_tokens(captions) if use_java else None
    pairs = {"old != new": (old, new)}
    if java is not None:
        pairs.update({"new != java": (new, java), "old != java": (old, java)})
    counts = {k: sum(a != b for a, b in zip(*v)) for k, v in pairs.items()}
    print(f"\n== {name}: {len(captions)} captions ({len(set(captions))} distinct); "
          f"old {old_us:.0f} us/caption, new {new_us:.0f} us/caption")
    for k, n in counts.items():
        print(f"   {k}: {n} captions")
    seen: set[str] = set()
    differing = [i for i in range(len(captions))
                 if old[i] != new[i] or (java is not None and (java[i] != new[i] or java[i] != old[i]))]
    listed = 0
    for i in differing:
        if captions[i] in seen:
            continue
        seen.add(captions[i])
        if listed == show:
            print(f"   ... ({len(differing) - listed} more not shown; --show to list more)")
            break
        listed += 1
        print(f"\n   {captions[i]!r}")
        print(f"     old : {old[i]}")
        print(f"     new : {new[i]}{'' if new[i] != old[i] else '   (= old)'}")
        if java is not None:
            same = [n for n, t in (("old", old[i]), ("new", new[i])) if t == java[i]]
            print(f"     java: {java[i]}{'   (= ' + ', '.join(same) + ')' if same else ''}")
    return {"old": old, "new": new, "java": java, "counts": counts}


# ------------------------------------------------------------------------------ BLEU table

def tutorial_style_bleu(hyps: dict, karpathy_refs: dict, vocab: Vocab | None, copies: int = 5,
                        refs_per_image: int = 5) -> dict[str, float]:
    """nltk corpus BLEU-1..4 the way sgrvinod's tutorial computes its test BLEU-4 (eval.py).

    hyps: image id -> predicted words; karpathy_refs: image id -> reference token lists (the
    Karpathy file's "tokens"). Words outside `vocab` become <unk> on both sides (the tutorial
    encodes references with its word map and keeps <unk>; it drops only <start>, <end>, <pad>).
    Each image keeps `refs_per_image` references (the tutorial samples 5; here the first 5) and
    is appended `copies` times, as its test DataLoader yields every image once per caption.
    """
    def encode(tokens: list[str]) -> list[str]:
        return list(tokens) if vocab is None else [t if t in vocab else "<unk>" for t in tokens]

    list_of_references, hypotheses = [], []
    for img_id, words in hyps.items():
        refs = [encode(r) for r in karpathy_refs[img_id][:refs_per_image]]
        for _ in range(copies):
            list_of_references.append(refs)
            hypotheses.append(encode(words))
    return metrics._nltk_bleu_tokens(list_of_references, hypotheses)


def bleu_table(predictions_path: Path, shapes_dir: Path, checkpoint: Path, use_java: bool) -> None:
    from pycocoevalcap.bleu.bleu import Bleu

    preds = {p["image_id"]: p["caption"] for p in json.loads(predictions_path.read_text())}
    data = json.loads((shapes_dir / "dataset_shapes.json").read_text())
    karpathy = {im["cocoid"]: im["sentences"] for im in data["images"] if im["cocoid"] in preds}
    missing = set(preds) - set(karpathy)
    if missing:
        raise SystemExit(f"{len(missing)} predicted images are not in {shapes_dir}/dataset_shapes.json")
    raw_refs = {i: [s["raw"] for s in sents] for i, sents in karpathy.items()}
    tok_refs = {i: [s["tokens"] for s in sents] for i, sents in karpathy.items()}
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    vocab = Vocab.from_state_dict(state["model"]["vocab"])

    rows: list[tuple[str, dict[str, float]]] = []
    if use_java:
        scores, _ = metrics.coco_caption_scores(preds, raw_refs, metrics=[f"BLEU-{n}" for n in range(1, 5)])
        rows.append(("pycocoevalcap, Java PTB tokens (evaluate.py's BLEU)", scores))
    res = {i: [" ".join(tokenize(c))] for i, c in preds.items()}
    gts = {i: [" ".join(tokenize(r)) for r in refs] for i, refs in raw_refs.items()}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rows.append(("pycocoevalcap, tokenize() tokens", {f"BLEU-{n}": b for n, b in enumerate(bleu, 1)}))
    rows.append(("nltk corpus_bleu, tokenize() tokens (nltk_corpus_bleu)", metrics.nltk_corpus_bleu(preds, raw_refs)))
    hyp_words = {i: c.split() for i, c in preds.items()}  # the model's own words, as the tutorial's ids
    rows.append(("tutorial-style: Karpathy tokens, <unk>, 5 refs, each image 5x",
                 tutorial_style_bleu(hyp_words, tok_refs, vocab)))
    rows.append(("  same, each image once", tutorial_style_bleu(hyp_words, tok_refs, vocab, copies=1)))
    rows.append(("  same, each image once, no <unk> mapping", tutorial_style_bleu(hyp_words, tok_refs, None, copies=1)))
    # What <unk> does where a vocabulary leaves words out (COCO: words seen <= 5 times): every
    # predicted <unk> matches any reference <unk>. Illustrated by keeping only frequent words.
    small = Vocab(vocab.itos[: 4 + UNK_ILLUSTRATION_WORDS])
    rows.append((f"  illustration: tutorial-style, vocabulary cut to {UNK_ILLUSTRATION_WORDS} words",
                 tutorial_style_bleu(hyp_words, tok_refs, small)))

    n_ref_tokens = sum(len(r) for refs in tok_refs.values() for r in refs)
    n_unk = sum(t not in vocab for refs in tok_refs.values() for r in refs for t in r)
    short = sum(len(tokenize(c)) < 4 for c in preds.values())
    print(f"{len(preds)} images, {sum(map(len, raw_refs.values()))} references; reference tokens outside "
          f"the model's vocabulary: {n_unk} of {n_ref_tokens}; predictions under 4 tokens: {short}")
    first = [v for _, v in sorted(rows[0][1].items())]
    print(f"\n| {'computed as':<62} | BLEU-1   | BLEU-2   | BLEU-3   | BLEU-4   | max diff to row 1 |")
    print(f"|{'-' * 64}|---------:|---------:|---------:|---------:|------------------:|")
    for name, scores in rows:
        vals = [v for _, v in sorted(scores.items())]
        diff = max(abs(a - b) for a, b in zip(vals, first))
        print(f"| {name:<62} | " + " | ".join(f"{v:.6f}" for v in vals) + f" | {diff:17.1e} |")
    print("\n(0-1 scale; the tutorial prints BLEU-4 x 100, e.g. 33.29)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes-dir", type=Path, default=None, help="an existing world (default: generate a small one)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated world")
    p.add_argument("--train", type=int, default=300, help="train images of the generated world (val/test: 1/10 each)")
    p.add_argument("--varied", type=Path, default=VARIED, help="one caption per line")
    p.add_argument("--no-java", action="store_true", help="skip pycocoevalcap's Java PTBTokenizer")
    p.add_argument("--show", type=int, default=200, help="most differing captions listed per corpus")
    p.add_argument("--predictions", type=Path, default=None,
                   help="a COCO results file (evaluate.py's predictions_*.json): print the BLEU table instead")
    p.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "shapes_demo.pt",
                   help="model whose vocabulary the tutorial-style BLEU maps to <unk> (default: the demo model)")
    args = p.parse_args(argv)
    use_java = not args.no_java
    if use_java and not metrics.java_available():
        print("java not found: no Java PTBTokenizer")
        use_java = False
    if args.predictions is not None:
        bleu_table(args.predictions, args.shapes_dir or ROOT / "data" / "shapes", args.checkpoint, use_java)
        return 0

    caps, splits = shapes_captions(args.shapes_dir, args.seed, args.train)
    res = compare(f"shapes world ({args.shapes_dir or f'generated, seed {args.seed}'})", caps, use_java, args.show)
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    model_vocab = Vocab.from_state_dict(state["model"]["vocab"])
    for min_count in (1, 5):
        vocabs = [Vocab.build((t for t, s in zip(res[k], splits) if s == "train"), min_count=min_count)
                  for k in ("old", "new")]
        same_as_model = "; equal to the checkpoint's" if vocabs[1] == model_vocab else ""
        print(f"   vocabulary (train captions, min_count={min_count}): {len(vocabs[1])} words, "
              f"{'identical' if vocabs[0] == vocabs[1] else 'DIFFERENT'} under old and new{same_as_model}")
    shown = args.varied.relative_to(ROOT) if args.varied.is_relative_to(ROOT) else args.varied
    compare(f"varied English captions ({shown})", read_varied(args.varied), use_java, args.show)
    return 0


if __name__ == "__main__":
    sys.exit(main())
