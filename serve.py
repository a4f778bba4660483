"""The web UI: caption an image and show where the model looked for each word.

    python serve.py                                   # the bundled demo model at http://127.0.0.1:7860
    python serve.py --checkpoint runs/coco/best.pt    # a COCO-trained model
    python serve.py --host 0.0.0.0 --port 8080        # reachable from other machines (no login: think first)

This file owns the Gradio app: its layout, the named API endpoint /caption (JSON for
gradio_client) and the limits the server is launched with. The work is the project's one path:
`images.load_image` (the safe loader), the model's transform, encoder and beam search
(`Captioner.encode` / `decode`) and `overlay` (the attention renderer caption.py uses too).
The model is loaded in main(), never at import; build_demo(captioner) returns the gr.Blocks.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import functools
import io
import logging
import math
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
import numpy as np
from gradio import processing_utils
from gradio.utils import get_upload_folder
from PIL import Image

from captioner.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from captioner.model import Captioner, CaptionOutput
from captioner.options import option
from captioner.overlay import attention_figure, overlay, scaled
from captioner.search import DEFAULT_MAX_LEN
from cli import DEFAULT_CHECKPOINT, ROOT, add_options, setup_logging

log = logging.getLogger("serve")

EXAMPLES_DIR = ROOT / "examples"
EXAMPLES = ["shapes-one.jpg", "shapes-two.jpg", "shapes-three.jpg", "chelsea.jpg", "astronaut.jpg", "coffee.jpg"]
VIEW_SIDE = 512  # long side of the large view
TILE_SIDE = 256  # long side of the gallery's overlays: sharp as thumbnails, a quarter of the work of a view
SEP = " · "  # between a word's number and the word in the gallery captions

DEMO_NOTE = """\
**This is the bundled demo model, and it knows only the shapes world**: coloured shapes on
textured backgrounds, like the first three examples. It describes any photo as shapes. For real
photos, train on COCO (see the README) and load that checkpoint:
`python serve.py --checkpoint runs/coco/best.pt`"""


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server. Every field is a command-line option."""
    # Gradio refuses bigger uploads before storing them
    max_upload_mb: float = option(10.0, "largest upload, in MB")
    # checked from the header, before decoding: stops decompression bombs
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "largest image, in pixels, checked before decoding")
    min_side: int = option(16, "smallest image side, in pixels")  # smaller images hold nothing to caption
    # longer strips are squashed past recognition by the square resize
    max_aspect: float = option(10.0, "most elongated image, long side / short side")
    max_beam: int = option(10, "widest beam a request may ask for")
    max_len: int = option(50, "longest caption a request may ask for, in tokens (<end> included)")

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


LIMITS = tuple(f.name for f in fields(Limits))  # every one is a command-line option


@dataclass
class Captioned:
    """One request's result: the image as loaded (upright RGB), its caption, the time of each stage."""
    name: str  # the upload's file name
    image: Image.Image
    out: CaptionOutput
    seconds: dict[str, float] = field(default_factory=dict)


class Shown(NamedTuple):
    """What the page's later steps need from the Caption step: kept in the session, small."""
    name: str  # the upload's file name
    view_path: str  # the image at VIEW_SIDE, a JPEG in Gradio's cache: a file, not megabytes per session
    out: CaptionOutput  # words, attention (T, h, w), beams
    seconds: dict[str, float]
    size: tuple[int, int]  # of the image as loaded


def image_input(**kwargs: Any) -> gr.Image:
    """A gr.Image whose handler gets the uploaded file itself, as a path.

    gr.Image's own preprocess opens every upload with PIL before the handler runs (failing with
    its own message on a broken file) and, unless image_mode is None, converts and re-saves it
    (RGBA flattened on black). Our one safe loader must see the bytes as they were sent. (An
    instance attribute, not a subclass: Gradio writes a .pyi stub next to the module of every
    Component subclass, here into the repository, on import.)
    """
    image = gr.Image(type="filepath", **kwargs)
    image.preprocess = functools.partial(_uploaded_path, image.GRADIO_CACHE)
    return image


def _uploaded_path(cache_dir: str, payload: Any) -> str | None:
    if payload is None:
        return None
    if payload.url and payload.url.startswith("data:"):  # an inline image: keep its bytes as sent
        return _save_data_url(payload.url, cache_dir)
    return payload.path


def _save_data_url(url: str, cache_dir: str) -> str:
    head, _, data = url.partition(",")
    try:
        raw = base64.b64decode(data, validate=True) if head.endswith(";base64") else data.encode()
    except binascii.Error as e:
        raise gr.Error(f"the inline image is not valid base64 ({e})") from e
    return processing_utils.save_bytes_to_cache(raw, "inline-image.bin", cache_dir)


# --- the work: shared by the UI and the API ----------------------------------------------------

class CaptionService:
    """Loads, captions and (for the UI) draws one image; every failure a person can cause is a gr.Error."""

    def __init__(self, captioner: Captioner, limits: Limits = Limits()):
        self.captioner, self.limits = captioner, limits
        self.transform = captioner.transform()

    def run(self, path: str | None, beam_size: float, max_len: float) -> Captioned:
        """The one function behind both the Caption button and /caption."""
        start = time.perf_counter()
        beam_size, max_len = self._check_request(path, beam_size, max_len)
        name = Path(path).name  # the upload's own name: the server's folders stay out of messages
        lim = self.limits
        try:
            image = load_image(path, max_pixels=lim.max_pixels, max_bytes=lim.max_bytes, min_side=lim.min_side,
                               max_aspect=lim.max_aspect, name=name)
        except ImageLoadError as e:
            log.info("refused: %s", e)
            raise gr.Error(str(e), title="Cannot caption this image") from None
        loaded = time.perf_counter()
        # Captioner.caption() without its load_image: the image was just loaded, with the server's limits.
        feats = self.captioner.encode(self.transform(image)[None])  # (1, N, C)
        out = self.captioner.decode(feats, beam_size, max_len)[0]
        done = time.perf_counter()
        return Captioned(name, image, out, {"load": loaded - start, "model": done - loaded})

    def _check_request(self, path: str | None, beam_size: float, max_len: float) -> tuple[int, int]:
        if not path:
            raise gr.Error("No image: upload, paste or take a picture first.", title="No image")
        lim = self.limits
        for what, value, top in (("beam size", beam_size, lim.max_beam), ("maximum length", max_len, lim.max_len)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value) \
                    or not 1 <= value <= top:
                raise gr.Error(f"{what} must be a whole number from 1 to {top}, got {value!r}", title="Bad request")
        return int(beam_size), int(max_len)

    def api(self, path: str | None, beam_size: float = 3, max_len: float = DEFAULT_MAX_LEN) -> dict[str, Any]:
        """/caption: the caption, its tokens, every token's attention grid and the beams, as JSON."""
        start = time.perf_counter()
        r = self.run(path, beam_size, max_len)
        result = result_json(r, self.captioner.grid)
        result["seconds"] = round(time.perf_counter() - start, 4)  # on the server, transfers not included
        log.info("/caption %s: %d words in %.0f ms", _size(r.image), len(r.out.words), 1e3 * result["seconds"])
        return result

    def ui(self, path: str | None, beam_size: float, max_len: float) -> tuple:
        """The Caption button: the caption, every word's overlay, the beams; the figure follows."""
        r = self.run(path, beam_size, max_len)
        t0 = time.perf_counter()
        view = scaled(r.image, VIEW_SIDE)
        tile = scaled(view, TILE_SIDE)
        tiles = [(overlay(tile, a), f"{i}{SEP}{w}") for i, (w, a) in enumerate(zip(r.out.words, r.out.alphas), 1)]
        shown = Shown(r.name, save_to_cache(view, f"{Path(r.name).stem}-view.jpg"), r.out, r.seconds, r.image.size)
        first = word_view(shown, 1, view)
        r.seconds["overlays"] = time.perf_counter() - t0
        log.info("caption %s: %d words in %.0f ms", _size(r.image), len(tiles), 1e3 * sum(r.seconds.values()))
        return (r.out.text or "(an empty caption)", timing_text(r.seconds, r.image.size, len(tiles)), first,
                gr.update(value=1, maximum=max(1, len(tiles))), tiles,
                [[text, round(score, 2)] for text, score in r.out.beams], None, shown)

    def figure(self, shown: Shown | None) -> tuple:
        """Then the PNG figure: a separate step, so the page shows the overlays without waiting for it.

        PNG-encoding a photo figure costs about as much as all the overlays together.
        """
        view = _open_view(shown)
        if view is None:
            return None, gr.update()
        t0 = time.perf_counter()
        path = save_figure(view, shown.out, Path(shown.name).stem)
        seconds = {**shown.seconds, "figure": time.perf_counter() - t0}
        return path, timing_text(seconds, shown.size, len(shown.out.words))


def _size(image: Image.Image) -> str:
    return f"{image.width}x{image.height}"


def result_json(r: Captioned, grid: tuple[int, int]) -> dict[str, Any]:
    out = r.out
    return {
        "caption": out.text,
        "tokens": out.words,
        "score": round(out.score, 4),  # length-normalised log-probability
        "finished": out.finished,  # False: cut at the maximum length before <end>
        "grid": list(grid),  # [h, w] of every attention map
        "attention": np.round(out.alphas, 5).tolist(),  # (tokens, h, w); rows top to bottom
        "beams": [{"caption": text, "score": round(score, 4)} for text, score in out.beams],
        "image_size": [r.image.width, r.image.height],  # upright, as captioned
    }


def save_to_cache(image: Image.Image, name: str) -> str:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=92)
    return processing_utils.save_bytes_to_cache(buf.getvalue(), name, get_upload_folder())


def _open_view(shown: Shown | None) -> Image.Image | None:
    if shown is None:
        return None
    try:
        with Image.open(shown.view_path) as im:
            return im.convert("RGB")
    except OSError:  # swept from the cache (after an hour): the page asks to caption again
        return None


def save_figure(view: Image.Image, out: CaptionOutput, stem: str) -> str:
    """The PNG of every word's attention (the same figure caption.py writes), in Gradio's cache."""
    buf = io.BytesIO()
    attention_figure(view, out.words, out.alphas, caption=out.text).save(buf, "PNG", compress_level=1)
    return processing_utils.save_bytes_to_cache(buf.getvalue(), f"{stem}-attention.png", get_upload_folder())


def timing_text(seconds: dict[str, float], size: tuple[int, int], n_words: int) -> str:
    ms = {k: f"{1e3 * v:.0f} ms" for k, v in seconds.items()}
    text = (f"**{1e3 * (seconds['load'] + seconds['model'] + seconds['overlays']):.0f} ms** on the server: "
            f"reading the image {ms['load']}, model {ms['model']}, overlays {ms['overlays']}")
    if "figure" in ms:
        text += f", then the PNG figure {ms['figure']}"
    return text + f" ({size[0]}x{size[1]} pixels, {n_words} words)"


# --- following the selected word ---------------------------------------------------------------

def word_view(shown: Shown | None, k: float, view: Image.Image | None = None) -> Any:
    """The large view: word k (1-based) of the caption, its attention drawn over the view."""
    view = view if view is not None else _open_view(shown)
    if view is None or not shown.out.words:
        return gr.update(value=None, label="Attention (caption an image first)")
    words = shown.out.words
    k = min(max(int(k), 1), len(words))
    label = f"Where the model looked for word {k} of {len(words)}: \u201c{words[k - 1]}\u201d"
    return gr.update(value=overlay(view, shown.out.alphas[k - 1]), label=label)


def select_word(shown: Shown | None, evt: gr.SelectData) -> tuple[Any, int]:
    return word_view(shown, evt.index + 1), evt.index + 1


def scrub_word(shown: Shown | None, k: float) -> tuple[Any, Any]:
    """The slider moves the large view and the gallery's highlight together."""
    if shown is None or not shown.out.words:
        return word_view(shown, k), gr.update()
    return word_view(shown, k), gr.update(selected_index=min(max(int(k), 1), len(shown.out.words)) - 1)


# --- the page ----------------------------------------------------------------------------------

def example_images(folder: Path = EXAMPLES_DIR) -> list[str]:
    return [str(folder / n) for n in EXAMPLES if (folder / n).is_file()]


def build_demo(captioner: Captioner, limits: Limits = Limits(), *, demo_model: bool = False,
               examples: list[str] | None = None) -> gr.Blocks:
    """The app; launch() it (serve.launch() adds the queue and the limits). Nothing runs until then."""
    service = CaptionService(captioner, limits)
    examples = example_images() if examples is None else examples
    with gr.Blocks(title="captioner", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# captioner\nShow, Attend and Tell: a caption for your image, and for every word "
                    "the part of the image the model looked at.")
        if demo_model:
            gr.Markdown(DEMO_NOTE, elem_id="demo-note")
        with gr.Row():
            with gr.Column(scale=2):
                # The webcam is not mirrored: Gradio's default mirrors the photo itself, not only the
                # preview, which would swap left and right in the caption ("a circle to its right").
                image = image_input(label="Image", sources=["upload", "clipboard", "webcam"], elem_id="input-image",
                                    height=340, webcam_options=gr.WebcamOptions(mirror=False))
                beam = gr.Slider(1, limits.max_beam, value=min(3, limits.max_beam), step=1, label="Beam size",
                                 info="1 is greedy decoding", elem_id="beam-size")
                max_len = gr.Slider(1, limits.max_len, value=min(DEFAULT_MAX_LEN, limits.max_len), step=1,
                                    label="Maximum caption length (tokens)", elem_id="max-len")
                button = gr.Button("Caption", variant="primary", elem_id="caption-button")
                if examples:
                    gr.Examples([[p] for p in examples], inputs=[image], examples_per_page=len(examples),
                                label="Examples: the shapes world, then photos")
            with gr.Column(scale=3):
                caption = gr.Textbox(label="Caption", interactive=False, elem_id="caption-text")
                timing = gr.Markdown(elem_id="timing")
                big = gr.Image(label="Attention", type="pil", format="jpeg", interactive=False, height=420,
                               elem_id="word-view")
                word = gr.Slider(1, limits.max_len, value=1, step=1, label="Word (drag to scrub through the caption)",
                                 elem_id="word-slider")
                gallery = gr.Gallery(label="Every word's attention: click one for the large view", columns=6,
                                     format="jpeg", type="filepath", allow_preview=False, object_fit="contain",
                                     height="auto", interactive=False, elem_id="word-gallery")
                beams = gr.Dataframe(headers=["caption", "score"], datatype=["str", "number"], interactive=False,
                                     label="Beams, best first (score: mean log-probability per word)",
                                     column_widths=["80%", "20%"], wrap=True, elem_id="beams")
                figure = gr.File(label="Figure of every word (PNG)", interactive=False, height=90, elem_id="figure")
        shown = gr.State(None, time_to_live=3600)  # as long as Gradio's cache keeps the view file
        api_result = gr.JSON(visible=False)
        api_trigger = gr.Button(visible=False)  # /caption has no button of its own on the page

        # Both caption events share one concurrency group: the queue's default limit bounds the model.
        # The page's event is callable (undocumented) so bench/serve_latency.py can time what a person waits for.
        outputs = [caption, timing, big, word, gallery, beams, figure, shown]
        button.click(service.ui, [image, beam, max_len], outputs, api_name="caption_ui", api_visibility="undocumented",
                     concurrency_id="model").success(
            service.figure, [shown], [figure, timing], api_visibility="private",
            concurrency_id="figure", show_progress="hidden")
        api_trigger.click(service.api, [image, beam, max_len], api_result, api_name="caption",
                          concurrency_id="model")
        gallery.select(select_word, [shown], [big, word], api_visibility="private", concurrency_limit=4)
        word.input(scrub_word, [shown, word], [big, gallery], api_visibility="private", concurrency_limit=4,
                   show_progress="hidden")
    return demo


def launch(demo: gr.Blocks, args: argparse.Namespace, *, block: bool = True):
    """Start the server with the safety limits from args; block=False returns once it listens."""
    demo.queue(max_size=args.queue_size, default_concurrency_limit=args.concurrency)
    return demo.launch(
        server_name=args.host, server_port=args.port, share=False, prevent_thread_lock=not block,
        max_file_size=int(args.max_upload_mb * 1024 * 1024),
        enable_monitoring=False,  # no /monitoring dashboard
        show_error=False,  # gr.Error messages reach the page; unexpected exceptions stay in the log
        mcp_server=False, ssr_mode=False, pwa=False, quiet=not block)


# --- the CLI -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="model (default: the bundled demo model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    lim = p.add_argument_group("limits")
    add_options(lim, Limits)
    lim.add_argument("--queue-size", type=int, default=32, help="requests waiting at most; more are refused "
                     "(default %(default)s)")
    lim.add_argument("--concurrency", type=int, default=2, help="requests captioned at once (default %(default)s: on "
                     "2 CPU cores 8-12 requests/s, against 7 one at a time and 11 four at a time)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in [*LIMITS, "queue_size", "concurrency"]:
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.max_aspect < 1:
        parser.error("--max-aspect is long side / short side: at least 1")
    if not 1 <= args.port <= 65535:
        parser.error("--port must be between 1 and 65535")
    return args


def limits_from(args: argparse.Namespace) -> Limits:
    return Limits(**{name: getattr(args, name) for name in LIMITS})


def is_demo_model(checkpoint: str) -> bool:
    return Path(checkpoint).resolve() == DEFAULT_CHECKPOINT.resolve()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests, one line each
    from captioner.checkpoint import CheckpointError
    from captioner.runtime import resolve_device

    start = time.monotonic()
    try:
        captioner = Captioner.from_checkpoint(args.checkpoint, resolve_device(args.device))
    except (CheckpointError, RuntimeError, ValueError) as e:
        print(f"serve.py: error: {e}", file=sys.stderr)
        return 2
    # The first call pays for torch's lazy set-up per tensor shape; pay it before anyone waits.
    captioner.caption([Image.new("RGB", (64, 64))], beam_size=3, max_len=3)
    log.info("model %s on %s ready in %.1f s", args.checkpoint, captioner.device, time.monotonic() - start)
    demo = build_demo(captioner, limits_from(args), demo_model=is_demo_model(args.checkpoint))
    launch(demo, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
