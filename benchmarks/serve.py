"""`affectclip serve` on loopback: requests/s and p50/p95 latency of image predictions for 1, 4 and 16 concurrent
clients, and the frames/s of the live WebSocket (the webcam mode: one 480x360 JPEG in flight at a time, as the page
sends them). The server runs as `affectclip serve` in a subprocess with its defaults (queue of 8: beyond it a request
gets 503 + Retry-After, counted as `busy`, not retried); clients are threads with one HTTP connection each.

    python benchmarks/serve.py [--requests 25] [--frames 100] [--out benchmarks/results/serve.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "astronaut.jpg"


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "affectclip.cli", "serve", "--port", str(port), "--quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import httpx

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start: {proc.stderr.read().decode()[-2000:]}")


def http_load(url: str, image: bytes, clients: int, per_client: int) -> dict:
    import httpx

    latencies: list[float] = []
    busy = 0
    lock = threading.Lock()

    def loop() -> None:
        nonlocal busy
        with httpx.Client(base_url=url, timeout=300) as c:
            for _ in range(per_client):
                t0 = time.perf_counter()
                r = c.post("/api/v1/predict", files={"file": ("photo.jpg", image)})
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code == 200:
                        latencies.append(dt)
                    elif r.status_code == 503:
                        busy += 1
                    else:
                        raise RuntimeError(f"unexpected {r.status_code}: {r.text[:200]}")

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"clients": clients, "requests": clients * per_client, "ok": len(latencies), "busy": busy,
            "req_per_s": len(latencies) / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95))}


def live_fps(port: int, frame: bytes, frames: int) -> dict:
    from websockets.sync.client import connect

    times = []
    with connect(f"ws://127.0.0.1:{port}/api/v1/live", max_size=None) as ws:
        ws.send(json.dumps({"labels": None}))
        json.loads(ws.recv())
        t0 = time.perf_counter()
        for _ in range(frames):
            t = time.perf_counter()
            ws.send(frame)
            msg = json.loads(ws.recv())
            if "faces" not in msg:
                raise RuntimeError(f"live frame failed: {msg}")
            times.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
    ms = np.array(times) * 1000
    return {"frames": frames, "frames_per_s": frames / wall, "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "frame": "480x360 JPEG, one face"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=25, help="requests per client")
    parser.add_argument("--frames", type=int, default=100, help="live frames")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serve.json"))
    args = parser.parse_args()
    photo = PHOTO.read_bytes()
    face = Image.open(PHOTO).convert("RGB").resize((480, 480)).crop((0, 40, 480, 400))
    frame = _jpeg(face)
    port = _free_port()
    proc = start_server(port)
    try:
        url = f"http://127.0.0.1:{port}"
        http_load(url, photo, 1, 3)  # warm-up: classifier built, detector loaded
        rows = [http_load(url, photo, n, args.requests) for n in (1, 4, 16)]
        live = live_fps(port, frame, args.frames)
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"{'clients':>7} {'requests':>8} {'ok':>5} {'busy':>5} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7}")
    for r in rows:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['ok']:>5} {r['busy']:>5} {r['req_per_s']:>7.1f} "
              f"{r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f}")
    print(f"live WebSocket: {live['frames_per_s']:.1f} frames/s (p50 {live['p50_ms']:.1f} ms, p95 {live['p95_ms']:.1f} ms)")
    result = {"image": f"{PHOTO.name} ({len(photo)} bytes, 512x512, one face)", "http": rows, "live": live,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "load_average": os.getloadavg()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
