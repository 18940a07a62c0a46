"""Load on loopback: 16 concurrent clients x 25 image requests against a real uvicorn server.

Every request must be answered (the result, or 503 + Retry-After when the bounded queue is full), every result must
equal the single-client result, the queue never grows past its bound and memory stays flat. Small images keep it
fast on 2 cores; speed itself is measured in benchmarks/serve.py, not here.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'affectclip[serve]')")

import httpx  # noqa: E402
from PIL import Image  # noqa: E402
from serve_live import running_server  # noqa: E402
from serve_media import PHOTO  # noqa: E402

import affectclip  # noqa: E402
from affectclip.serve.app import create_app  # noqa: E402
from affectclip.serve.settings import ServeSettings  # noqa: E402

CLIENTS, REQUESTS, QUEUE = 16, 25, 8


def small_face() -> bytes:
    """The example face cropped and shrunk to 128 px: detection + one crop, the least work a request can be."""
    buf = io.BytesIO()
    Image.open(PHOTO).convert("RGB").crop((130, 30, 320, 220)).resize((128, 128)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def model():
    return affectclip.load()


def test_streamed_upload_without_length_is_cut_off(model, tmp_path):
    """A chunked body (no Content-Length) is counted as it arrives and refused past the limit; nothing is kept."""
    boundary = "affectclip-test-boundary"

    def body(chunks: int):
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\n').encode()
        yield b"\x00\x00\x00\x18ftypmp42"
        for _ in range(chunks):
            yield bytes(1 << 16)
        yield f"\r\n--{boundary}--\r\n".encode()

    app = create_app(model, ServeSettings(temp_dir=tmp_path, max_upload_mb=1))
    with running_server(app) as url:
        r = httpx.post(f"{url}/api/v1/predict", content=body(64), timeout=60,
                       headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == 413 and r.json() == {"error": "request body over the 1 MB upload limit (--max-upload-mb)"}
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sixteen_clients_all_answered_with_identical_results(model, tmp_path):
    image = small_face()
    app = create_app(model, ServeSettings(temp_dir=tmp_path, max_queue=QUEUE))
    with running_server(app) as url:
        with httpx.Client(base_url=url, timeout=120) as client:
            single = client.post("/api/v1/predict", files={"file": ("face.jpg", image)})
            assert single.status_code == 200 and single.json()["rows"][0]["top_label"] == "happiness"
            before = rss_mb()
        answers: list[tuple[int, dict, str | None]] = []
        lock = threading.Lock()

        def client_loop() -> None:
            with httpx.Client(base_url=url, timeout=120) as c:
                for _ in range(REQUESTS):
                    r = c.post("/api/v1/predict", files={"file": ("face.jpg", image)})
                    with lock:
                        answers.append((r.status_code, r.json(), r.headers.get("retry-after")))

        threads = [threading.Thread(target=client_loop) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads), "a client hung"
        with httpx.Client(base_url=url, timeout=30) as client:
            health = client.get("/api/v1/health").json()
        grown = rss_mb() - before
    assert len(answers) == CLIENTS * REQUESTS
    statuses = {status for status, _, _ in answers}
    assert statuses <= {200, 503}, statuses
    ok = [body for status, body, _ in answers if status == 200]
    busy = [(body, retry) for status, body, retry in answers if status == 503]
    assert len(ok) >= CLIENTS, f"only {len(ok)} of {len(answers)} requests got a result"
    assert all(body == single.json() for body in ok), "a result under load differs from the single-client result"
    assert all(retry is not None and body["retry_after"] == int(retry) for body, retry in busy)
    assert health["peak_queue"] <= QUEUE and health["queued"] == 0
    assert grown < 200, f"resident memory grew by {grown:.0f} MB under load"
    assert list(tmp_path.iterdir()) == []
