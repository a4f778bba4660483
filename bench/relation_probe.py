"""Does a model know where things are? A teacher-forced probe of its relation words.

    python bench/relation_probe.py                                       # the demo model, test split
    python bench/relation_probe.py --checkpoint runs/ablations/none-s1/best.pt runs/ablations/soft-s1/best.pt

Beam search rarely states a relation, so the caption metrics say little about whether the
model could. This asks the model directly. Each reference caption of a multi-object image is
fed to the decoder (teacher forcing, the true words so far); at every word that decides a
spatial claim (left / right, above / below, top / bottom) the probe compares the probability
the model gives the reference's word with the one it gives its opposite ("left" against
"right"). The world's references are true, so a model that knows the layout prefers the
reference's word: 50% is guessing, 100% knowing. Counted per form of the claim:

  direct     "A is to the left of B", "A is above B"           (the relation to an object not yet named)
  pronoun    "... and C to its left", "... and C above it", "... and C to the left of it"
             (the relation to an object already named)
  position   "A in the top left" (a place in the image: 3 x 3)
  axis       the word that chooses the axis of a direct or pronoun claim: "to" (left/right) against
             "above" + "below", at "A [is] TO the left of B" / "A ABOVE B" / "... with A TO its left"

The ordering form ("A on the left and B on the right") is left out: the world names the objects
in their order along the axis, so once "on the"/"at the" is written its words follow from the
template (a model gets them 100% right without looking); what is visual there is which object
it names first, which the caption metrics' relation_accuracy checks.

and where the attention is at that word: the share of α on the box of the object named just
before the word (the subject; when exactly one object fits its colour and shape) and on the
boxes of the others. Prints a markdown table per checkpoint; nothing is trained or written.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above", "top": "bottom", "bottom": "top"}


def claim_form(toks: list[str], i: int) -> str | None:
    """The form of the spatial claim whose deciding word is toks[i] (one of OPPOSITE), or None."""
    w, before = toks[i], toks[max(0, i - 3):i]
    after = toks[i + 1] if i + 1 < len(toks) else ""
    if w in ("left", "right"):
        if before[-2:] == ["to", "its"]:
            return "pronoun"
        if before[-2:] == ["to", "the"] and after == "of":
            return "pronoun" if toks[i + 2:i + 3] == ["it"] else "direct"  # "C to the left of it": named
        if before[-1:] in (["top"], ["bottom"]) or before[-2:] == ["in", "the"]:
            return "position"  # "in the top left", "in the left" does not occur but reads as one
    elif w in ("above", "below"):
        return "pronoun" if after == "it" else "direct"
    elif w in ("top", "bottom") and before[-2:] == ["in", "the"]:
        return "position"
    return None  # the ordering form's "on the left" / "at the top" (see above), or no claim


def teacher_batch(chunk: list, vocab, cache):
    """(features (B, N, C) float32, tokens (B, T) padded) of (image id, token list) pairs: the batch
    collate_captions makes in training."""
    import numpy as np
    import torch

    from captioner.features import collate_captions

    return collate_captions([(torch.from_numpy(np.array(cache.features(i))),
                              torch.tensor(vocab.encode(t), dtype=torch.long)) for i, t in chunk])


def probe(model, records, cache, objects, image_sizes, batch_size: int = 100) -> dict:
    import numpy as np
    import torch

    from captioner.scene_metrics import _matches, box_coverage_grid, noun_phrases
    from captioner.text import tokenize

    vocab, dec = model.vocab, model.decoder
    grid = tuple(dec.cfg.grid)
    items = []  # (image id, token list) of every reference caption of a multi-object image
    for r in records:
        if len(objects.get(r.image_id, [])) >= 2 and r.image_id in cache.row_of:
            items += [(r.image_id, tokenize(c)) for c in r.captions]
    stats: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    model.eval()
    with torch.no_grad():
        for s in range(0, len(items), batch_size):
            chunk = items[s:s + batch_size]
            feats, tokens = teacher_batch(chunk, vocab, cache)
            logits, alphas = dec(feats, tokens)  # (B, T-1, V): logits[:, t] predicts tokens[:, t + 1]
            logp = logits.log_softmax(-1)
            for k, (iid, toks) in enumerate(chunk):
                objs, size = objects[iid], image_sizes[iid]
                boxes = [box_coverage_grid(o["bbox"], size, grid).reshape(-1) for o in objs]
                phrases = noun_phrases(toks)
                for i, w in enumerate(toks):
                    form = claim_form(toks, i) if w in OPPOSITE else None
                    if form is None or OPPOSITE[w] not in vocab.stoi:
                        continue
                    t = i  # toks[i] is tokens[k, i + 1], predicted at step i
                    right, wrong = logp[k, t, vocab.stoi[w]].item(), logp[k, t, vocab.stoi[OPPOSITE[w]]].item()
                    st = stats[form]
                    st["knows"].append(float(right > wrong))
                    st["p_right"].append(float(np.exp(right) / (np.exp(right) + np.exp(wrong))))
                    subject = [p for p in phrases if p.end <= i]
                    fits = _matches(subject[-1], objs) if subject else []
                    if len(fits) == 1:
                        a = alphas[k, t].numpy()
                        st["alpha_subject"].append(float((a * boxes[fits[0]]).sum()))
                        st["alpha_others"].append(float(sum((a * boxes[j]).sum() for j in range(len(objs))
                                                            if j != fits[0])))
                axis_words(toks, objs, logp[k], alphas[k].numpy(), boxes, vocab, stats["axis"])
    return stats


AXIS = {"to": ("to",), "above": ("above", "below"), "below": ("above", "below")}  # a word -> its axis' words


def axis_words(toks, objs, logp, alphas, boxes, vocab, st) -> None:
    """The axis row of `probe` for one reference: at the first word of each direct or pronoun claim's phrase
    (scene_metrics' relation phrase: "to" / "above" / "below"), P(its axis' words) against P(the other axis')."""
    from captioner.scene_metrics import _matches, _relation_words

    if any(w not in vocab.stoi for w in ("to", "above", "below")):
        return
    first: dict[tuple[int, int], tuple[int, int]] = {}  # (subject phrase, other object) -> its phrase's first word
    for i, phrase, other in _relation_words(toks, objs, span=True):
        first.setdefault((phrase.start, other), (i, _matches(phrase, objs)[0]))
    for i, subject in first.values():
        if toks[i] not in AXIS:  # an ordering's "on" / "at" / "in": not a direct or pronoun claim
            continue
        p = logp[i].exp().numpy()
        ours = sum(p[vocab.stoi[w]] for w in AXIS[toks[i]])
        theirs = sum(p[vocab.stoi[w]] for w in AXIS["above" if toks[i] == "to" else "to"])
        st["knows"].append(float(ours > theirs))
        st["p_right"].append(float(ours / (ours + theirs)))
        st["alpha_subject"].append(float((alphas[i] * boxes[subject]).sum()))
        st["alpha_others"].append(float(sum((alphas[i] * boxes[j]).sum() for j in range(len(objs)) if j != subject)))


def linear_readout(model, records, cache, objects, image_sizes, batch_size: int = 100) -> dict:
    """Is the relation within a linear read-out's reach? For each direct or pronoun claim with a single
    left/right/above/below word whose two objects each match one object of the scene, take the
    LSTM state entering that word's step (h_{t-1}) and the coordinates the context holds there (the
    attention's expectation of the cells' (x, y), what --coords appends). Fit, on the images of one half,
    ridge regressions of the subject's centre from h_{t-1}, and a linear classifier of the true word from
    [h_{t-1}, context (x, y)]; report R^2 and accuracy on the other half, with the attended (x, y)'s
    correlation with the other object's centre (and, as a check of the machinery, the R^2 of that centre
    regressed on the attended (x, y)). With --recall, also the subject's centre from the vector the step
    reads back from its memory, and the relation from [h_{t-1}, that vector, context (x, y)]."""
    import numpy as np
    import torch

    from captioner.decoder import cell_coords
    from captioner.scene_metrics import _matches, relation_statements
    from captioner.shapes import IMAGE_SIZE, _centre
    from captioner.text import tokenize

    vocab, dec = model.vocab, model.decoder
    items = [(r.image_id, tokenize(c)) for r in records if len(objects.get(r.image_id, [])) >= 2
             and r.image_id in cache.row_of for c in r.captions]
    rows = []  # (image id, h_{t-1}, context xy, subject centre, other centre, word is left/above (1) or not (0),
    #           the recalled vector r_t (with --recall; else empty))
    model.eval()
    with torch.no_grad():
        for s in range(0, len(items), batch_size):
            chunk = items[s:s + batch_size]
            feats, tokens = teacher_batch(chunk, vocab, cache)
            fx, proj = dec.prepare(feats)
            xy = cell_coords(dec.cfg.grid, fx)[0]  # (N, 2)
            state = dec.init_state(fx)
            hs, ctx, rec = [], [], []
            for t in range(tokens.shape[1] - 1):
                hs.append(state[0])  # h_{t-1}
                if dec.cfg.recall:  # what the step reads back from its memory
                    rec.append(dec.recall(dec.embed(tokens[:, t]), state)[2])
                else:
                    rec.append(state[0][:, :0])
                _, state, alpha = dec.step(tokens[:, t], state, fx, proj)
                ctx.append(alpha @ xy)
            for k, (iid, toks) in enumerate(chunk):
                objs = objects[iid]
                words = [i for i, w in enumerate(toks) if w in ("left", "right", "above", "below")]
                for st in relation_statements(toks):
                    a, b = _matches(st.subject, objs), _matches(st.object, objs)
                    if st.form == "positional" or len(a) != 1 or len(b) != 1 or a == b or len(words) != 1:
                        continue  # one claim per caption: its word is unambiguous
                    i = words[0]
                    centre = [np.array(_centre(objs[j])) / IMAGE_SIZE * 2 - 1 for j in (a[0], b[0])]
                    rows.append((iid, hs[i][k].numpy(), ctx[i][k].numpy(), centre[0], centre[1],
                                 float(toks[i] in ("left", "above")), rec[i][k].numpy()))
    if len(rows) < 20:
        return {"claims": len(rows)}
    images = sorted({r[0] for r in rows})
    halves, quarters = set(images[::2]), set(images[::4])
    fit = np.array([r[0] in halves for r in rows])
    inner = np.array([r[0] in quarters for r in rows])  # every other fitting image
    H, Z = np.stack([r[1] for r in rows]), np.stack([r[2] for r in rows])
    S, Ot, y = np.stack([r[3] for r in rows]), np.stack([r[4] for r in rows]), np.array([r[5] for r in rows])

    def ridge(X, Y):
        """Predictions for the scored half; the penalty chosen on the fitting half (fit on its even images,
        checked on its odd ones)."""
        X1 = np.hstack([X, np.ones((len(X), 1))])

        def solve(rows, lam):
            return np.linalg.solve(X1[rows].T @ X1[rows] + lam * np.eye(X1.shape[1]), X1[rows].T @ Y[rows])
        a, b = fit & inner, fit & ~inner
        lam = min((10.0 ** k for k in range(-1, 5)), key=lambda lam: ((X1[b] @ solve(a, lam) - Y[b]) ** 2).sum())
        return X1[~fit] @ solve(fit, lam)

    def r2(pred, Y):
        return float(1 - ((pred - Y[~fit]) ** 2).sum() / ((Y[~fit] - Y[~fit].mean(0)) ** 2).sum())

    Rc = np.stack([r[6] for r in rows])  # (claims, R), or (claims, 0) without recall
    relation_from = {}
    for name, X in (("h", H), ("h+context", np.hstack([H, Z * 10]))):
        relation_from[name] = float(((ridge(X, y * 2 - 1) > 0) == (y[~fit] > 0.5)).mean())
    out = {"claims": len(rows), "subject_from_h_R2": r2(ridge(H, S), S),
           "other_from_context_R2": r2(ridge(Z, Ot), Ot),  # the same regression where the answer is in its input
           "context_x_vs_other_x": float(np.corrcoef(Z[:, 0], Ot[:, 0])[0, 1]),
           "context_y_vs_other_y": float(np.corrcoef(Z[:, 1], Ot[:, 1])[0, 1]),
           "relation_from_h": relation_from["h"], "relation_from_h_and_context": relation_from["h+context"]}
    if Rc.shape[1]:  # --recall: does what the step reads back hold the subject's place?
        out["subject_from_recall_R2"] = r2(ridge(Rc, S), S)
        out["relation_from_h_recall_context"] = float(
            ((ridge(np.hstack([H, Rc, Z * 10]), y * 2 - 1) > 0) == (y[~fit] > 0.5)).mean())
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", nargs="+", default=[str(ROOT / "checkpoints" / "shapes_demo.pt")])
    p.add_argument("--split", default="test")
    p.add_argument("--shapes-dir", default=str(ROOT / "data" / "shapes"))
    p.add_argument("--cache-dir", default=str(ROOT / "cache"))
    p.add_argument("--linear", action="store_true",
                   help="also fit linear read-outs of the subject's place and the relation")
    args = p.parse_args(argv)
    import statistics

    from captioner.evaluation import split_features
    from captioner.model import Captioner
    from captioner.sources import shapes_source

    source = shapes_source(args.shapes_dir)
    records = source.split(args.split)
    print(f"{args.split} of {source.identity}: reference captions of multi-object images, teacher-forced; "
          "'prefers' = P(reference word) > P(its opposite); α shares at that word\n")
    print("| checkpoint | form | claims | prefers the true word | P(true) / (P(true) + P(opposite)) "
          "| α on the subject's box | α on the other objects' boxes |")
    print("|---|---|---|---|---|---|---|")
    linear = []
    for ck in args.checkpoint:
        model = Captioner.from_checkpoint(ck)
        cache = split_features(model, records, args.cache_dir, source.name, args.split, progress=False)
        stats = probe(model, records, cache, source.objects[args.split], source.image_sizes[args.split])
        for form in ("direct", "pronoun", "position", "axis"):
            st = stats.get(form)
            if not st:
                continue

            def mean(k: str, st=st) -> str:
                return f"{statistics.mean(st[k]):.3f}" if st.get(k) else "n/a"

            print(f"| {Path(ck).parent.name}/{Path(ck).name} | {form} | {len(st['knows'])} | {mean('knows')} "
                  f"| {mean('p_right')} | {mean('alpha_subject')} | {mean('alpha_others')} |")
        if args.linear:
            lin = linear_readout(model, records, cache, source.objects[args.split], source.image_sizes[args.split])
            linear.append((f"{Path(ck).parent.name}/{Path(ck).name}", lin))
    for name, lin in linear:
        print(f"\nlinear read-outs, {name} (multi-object scenes; fitted on half the images, scored on the other):")
        print("  " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in lin.items()))


if __name__ == "__main__":
    main()
