"""Latency of the web UI's server, as a client sees it: `python serve.py` driven by gradio_client.

    python bench/serve_latency.py                  # 60 requests per endpoint, beam 3, a 640x480 photo
    python bench/serve_latency.py --n 200 --image my.jpg --checkpoint runs/coco/best.pt

Starts `python serve.py --port P` (default limits and concurrency) and measures wall time
per request at the client, upload included, over plain HTTP (Gradio's REST protocol: upload the
file, POST /gradio_api/call/NAME, read the result stream; ~20 ms for a no-op):
  * /caption      the JSON API: caption, tokens, attention grids, beams;
  * /caption_ui   what the Caption button runs: the same plus one overlay per word, encoded for the
                  page (the large view and the gallery's JPEGs); the PNG figure follows in a step
                  of its own, timed here on the server's own figure code in this process;
  * /caption with 8 clients at once (5 requests each): latency under load and requests/s;
  * /caption through gradio_client, which adds its own ~90 ms: it polls for messages every 50 ms.
Then it prints p50 / p95, the server's start-up time (to the first answered HTTP request) and
its peak RSS (VmHWM), with the machine. It asserts nothing about time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx
from gradio_client import Client, handle_file
from PIL import Image

from cli import DEFAULT_CHECKPOINT
from machine import cpu_name

TARGET_P50_MS = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int, field: str) -> int:
    """A memory figure of /proc/PID/status, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def start_server(port: int, checkpoint: str, device: str, concurrency: int,
                 log: Path) -> tuple[subprocess.Popen, float]:
    start = time.monotonic()
    with open(log, "wb") as out:
        cmd = [sys.executable, str(ROOT / "serve.py"), "--port", str(port), "--checkpoint", checkpoint,
               "--device", device, "--concurrency", str(concurrency)]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"serve.py exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return proc, time.monotonic() - start
        except httpx.TransportError:
            time.sleep(0.1)


def test_image(path: str | None, folder: str) -> str:
    """A 640x480 JPEG: the given image, or the cat from examples/, resized."""
    src = Image.open(path or ROOT / "examples" / "chelsea.jpg").convert("RGB")
    out = os.path.join(folder, "bench-640x480.jpg")
    src.resize((640, 480), Image.Resampling.BICUBIC).save(out, quality=90)
    return out


class RestClient:
    """Gradio's REST protocol with one keep-alive connection: what `curl` users and scripts do."""

    def __init__(self, url: str):
        self.url, self.http = url, httpx.Client(timeout=120)

    def predict(self, image: str, *args, api_name: str):
        with open(image, "rb") as f:
            path = self.http.post(f"{self.url}gradio_api/upload", files={"files": (Path(image).name, f)}).json()[0]
        name = api_name.strip("/")
        data = [{"path": path, "meta": {"_type": "gradio.FileData"}}, *args]
        event_id = self.http.post(f"{self.url}gradio_api/call/{name}", json={"data": data}).json()["event_id"]
        event = None
        with self.http.stream("GET", f"{self.url}gradio_api/call/{name}/{event_id}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    if event == "error":
                        raise RuntimeError(f"{api_name} failed: {line}")
                    out = json.loads(line[5:])
                    return out[0] if len(out) == 1 else out
        raise RuntimeError(f"{api_name}: the result stream ended without a result")


class GradioClient:
    def __init__(self, url: str):
        self.client = Client(url, verbose=False, download_files=False)

    def predict(self, image: str, *args, api_name: str):
        return self.client.predict(handle_file(image), *args, api_name=api_name)


def timed_requests(client, n: int, *args, api_name: str) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(n):
        t = time.perf_counter()
        result = client.predict(*args, api_name=api_name)
        times.append(time.perf_counter() - t)
    return times, result


def concurrent(url: str, image: str, beam: int, clients: int, each: int) -> tuple[list[float], float]:
    times: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def user() -> None:
        try:
            ts, _ = timed_requests(RestClient(url), each, image, beam, 30, api_name="/caption")
            with lock:
                times.extend(ts)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=user) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"{len(errors)} clients failed: {errors[0]!r}")
    return times, clients * each / (time.perf_counter() - start)


def figure_ms(image: str, checkpoint: str, beam: int, n: int) -> list[float]:
    """The figure step's own code (serve.save_figure on the view), in this process."""
    import serve
    from captioner.model import Captioner

    service = serve.CaptionService(Captioner.from_checkpoint(checkpoint))
    r = service.run(image, beam, 30)
    view = serve.scaled(r.image, serve.VIEW_SIDE)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        serve.save_figure(view, r.out, "bench")
        times.append(time.perf_counter() - t)
    return times


def summary(times: list[float]) -> dict[str, float]:
    ms = sorted(1e3 * t for t in times)
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1),
            "p95_ms": round(ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))], 1),
            "mean_ms": round(statistics.fmean(ms), 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60, help="timed requests per endpoint (default %(default)s, at least 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed requests first (default %(default)s)")
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--image", help="image to resize to 640x480 (default: examples/chelsea.jpg)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--device", default="auto")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients, 5 requests each (0: skip)")
    p.add_argument("--concurrency", type=int, default=2, help="serve.py --concurrency (default %(default)s)")
    args = p.parse_args(argv)
    if args.n < 50:
        p.error("--n must be at least 50")

    with tempfile.TemporaryDirectory() as tmp:
        image = test_image(args.image, tmp)
        proc, ready_s = start_server(free_port(), args.checkpoint, args.device, args.concurrency,
                                     Path(tmp) / "serve.log")
        url = f"http://127.0.0.1:{proc.args[proc.args.index('--port') + 1]}/"
        try:
            client, gclient = RestClient(url), GradioClient(url)
            timed_requests(client, args.warmup, image, args.beam, 30, api_name="/caption")
            timed_requests(client, args.warmup, image, args.beam, 30, api_name="/caption_ui")
            api, result = timed_requests(client, args.n, image, args.beam, 30, api_name="/caption")
            page, _ = timed_requests(client, args.n, image, args.beam, 30, api_name="/caption_ui")
            load = concurrent(url, image, args.beam, args.clients, 5) if args.clients else None
            via_client, _ = timed_requests(gclient, args.n, image, args.beam, 30, api_name="/caption")
            rss = {"peak_rss_mb": round(proc_status(proc.pid, "VmHWM") / 2**20, 1),
                   "rss_now_mb": round(proc_status(proc.pid, "VmRSS") / 2**20, 1)}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        figure = figure_ms(image, args.checkpoint, args.beam, 10)

    import gradio
    import torch

    report = {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} "
                   f"threads), gradio {gradio.__version__}, Python {platform.python_version()}",
        "image": "640x480 JPEG", "beam": args.beam, "tokens": len(result["tokens"]), "caption": result["caption"],
        "server_ready_s": round(ready_s, 1), "concurrency": args.concurrency,
        "caption_api": summary(api),
        "caption_ui": summary(page),
        "caption_api_gradio_client": summary(via_client),
        "figure_step_in_process": summary(figure),
        **rss,
    }
    if load:
        report["caption_api_8_clients"] = {**summary(load[0]), "requests_per_s": round(load[1], 2)}
    print(f"machine: {report['machine']}")
    print(f"image 640x480, beam {args.beam}, {report['tokens']} tokens: {result['caption']!r}")
    print(f"server ready in {report['server_ready_s']} s (process start to first HTTP answer)")
    for key, what in (("caption_ui", "/caption_ui (the page's request: + overlays)"),
                      ("caption_api", "/caption (JSON)"),
                      ("caption_api_8_clients", f"/caption, {args.clients} clients at once"),
                      ("caption_api_gradio_client", "/caption through gradio_client"),
                      ("figure_step_in_process", "PNG figure step (server code, in this process)")):
        if key in report:
            s = report[key]
            print(f"{what:48s} p50 {s['p50_ms']:7.1f} ms   p95 {s['p95_ms']:7.1f} ms   ({s['n']} requests)"
                  + (f"   {s['requests_per_s']} requests/s" if "requests_per_s" in s else ""))
    print(f"server peak RSS {report['peak_rss_mb']} MB (VmHWM)")
    print(f"target: p50 <= {TARGET_P50_MS} ms for the page's request: "
          f"{'met' if report['caption_ui']['p50_ms'] <= TARGET_P50_MS else 'NOT met'}")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
