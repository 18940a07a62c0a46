"""`affectclip serve` API, in process (FastAPI TestClient): every endpoint, every refusal, and no temp file left."""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'affectclip[serve]')")

from fastapi.testclient import TestClient  # noqa: E402
from serve_media import PHOTO, write_video  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

import affectclip  # noqa: E402
from affectclip.serve.app import create_app  # noqa: E402
from affectclip.serve.settings import ServeSettings, resolve_token  # noqa: E402

BASE = "http://127.0.0.1:8000"
WS = "ws://127.0.0.1:8000/api/v1/live"
JPEG = PHOTO.read_bytes()


@pytest.fixture(scope="module")
def model():
    return affectclip.load()


@pytest.fixture
def serve(model, tmp_path):
    """`serve(**settings)` -> a TestClient on a fresh app; at teardown the upload folder must be empty."""
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    opened = []

    def make(**kwargs) -> TestClient:
        app = create_app(model, ServeSettings(temp_dir=uploads, **kwargs))
        client = TestClient(app, base_url=BASE)
        client.__enter__()
        opened.append(client)
        return client

    make.uploads = uploads
    yield make
    for client in opened:
        client.__exit__(None, None, None)
    assert list(uploads.iterdir()) == [], "temporary upload files were left behind"


def photo(name: str = "astronaut.jpg", data: bytes = JPEG) -> dict:
    return {"file": (name, data)}


def wait_job(client: TestClient, job: dict, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = client.get(job["status_url"]).json()
        if body["status"] not in ("queued", "running"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job['id']} did not finish in {timeout} s")


def hold_worker(client: TestClient) -> threading.Event:
    """Occupy the model thread until the returned event is set (to fill queues deterministically)."""
    release, started = threading.Event(), threading.Event()
    client.app.state.worker.submit(lambda: (started.set(), release.wait(30)))
    assert started.wait(10)
    return release


# ------------------------------------------------------------------------------------------- service


def test_health_and_info(serve):
    c = serve()
    health = c.get("/api/v1/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    info = c.get("/api/v1/info").json()
    assert info["name"] == "affectclip default model"
    assert info["default_labels"][:2] == ["neutral", "happiness"] and len(info["default_labels"]) == 8
    assert info["input_size"] == 80 and info["embed_dim"] == 256
    assert "expression" in info["prompt_sets"] and "text" in info["prompt_sets"]
    assert "FER2013" in info["licence_notes"]
    assert info["limits"]["max_video_seconds"] == 600


def test_openapi_page_is_served_offline(serve):
    c = serve()
    spec = c.get("/openapi.json").json()
    assert {"/api/v1/predict", "/api/v1/embed", "/api/v1/info", "/api/v1/health", "/api/v1/jobs/{job_id}",
            "/api/v1/jobs/{job_id}/result"} <= set(spec["paths"])
    docs = c.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert c.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    page = c.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert c.get("/static/app.js").status_code == 200


# ------------------------------------------------------------------------------------------- predict


def test_predict_image_matches_the_library(serve, model):
    c = serve()
    r = c.post("/api/v1/predict", files=photo())
    assert r.status_code == 200
    body = r.json()
    expected = model.predict(str(PHOTO))
    assert body["columns"] == list(expected.columns)
    assert body["labels"] == expected.attrs["labels"]
    assert len(body["rows"]) == len(expected) == 1
    row, want = body["rows"][0], expected.iloc[0]
    assert row["source"] == "astronaut.jpg" and row["status"] == "ok" and row["top_label"] == "happiness"
    for col in [*expected.attrs["labels"], "x0", "y0", "x1", "y1", "top_score"]:
        assert row[col] == pytest.approx(float(want[col]), rel=1e-5, abs=1e-7), col


def test_predict_csv_and_custom_labels(serve, model):
    c = serve()
    r = c.post("/api/v1/predict", files=photo(), data={"labels": "joyful, bored", "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    got = pd.read_csv(io.StringIO(r.text))
    want = model.predict(str(PHOTO), labels=["joyful", "bored"])
    assert list(got.columns) == list(want.columns)
    assert got.loc[0, "top_label"] == "joyful"
    np.testing.assert_allclose(got[["joyful", "bored"]].to_numpy(), want[["joyful", "bored"]].to_numpy(), rtol=1e-5)


def test_content_is_sniffed_not_the_name(serve):
    c = serve()
    ok = c.post("/api/v1/predict", files=photo("holiday.txt"))
    assert ok.status_code == 200 and ok.json()["rows"][0]["top_label"] == "happiness"
    fake = c.post("/api/v1/predict", files=photo("face.jpg", b"#EXTM3U\nfile:///etc/passwd\n"))
    assert fake.status_code == 415
    assert fake.json() == {"error": "face.jpg: not an image (JPEG, PNG, BMP, WebP) or a video (MP4/MOV, WebM/MKV, "
                                    "AVI, WMV, FLV, MPEG) (judged by its content, not its name)"}


@pytest.mark.parametrize(("data", "fields", "status", "message"), [
    (b"", {}, 400, "x.jpg: the file is empty"),
    (JPEG[:400], {}, 400, "x.jpg: cannot decode this jpeg image"),
    (JPEG, {"labels": " , "}, 400, "labels is empty"),
    (JPEG, {"labels": "happy, Happy"}, 400, "duplicate labels ['Happy', 'happy']"),
    (JPEG, {"prompts": "nope"}, 400, "unknown prompt set 'nope'"),
    (JPEG, {"fps": "-1"}, 400, "fps must be >= 0"),
    (JPEG, {"detector": "nope"}, 422, "detector: Input should be"),
    (JPEG, {"format": "xml"}, 422, "format: Input should be"),
])
def test_predict_bad_input_is_one_json_line(serve, data, fields, status, message):
    r = serve().post("/api/v1/predict", files=photo("x.jpg", data), data=fields)
    assert r.status_code == status
    error = r.json()["error"]
    assert error.startswith(message) and "\n" not in error


def test_unknown_route_and_method_are_json_errors(serve):
    c = serve()
    assert c.get("/api/v1/nope").json() == {"error": "Not Found"}
    r = c.get("/api/v1/predict")
    assert r.status_code == 405 and r.json() == {"error": "Method Not Allowed"}


def test_missing_file_field(serve):
    r = serve().post("/api/v1/predict", data={"labels": "happy, sad"})
    assert r.status_code == 422 and r.json()["error"].startswith("file: Field required")


def test_upload_limits(serve):
    c = serve(max_upload_mb=0.01)
    r = c.post("/api/v1/predict", files=photo())  # 35 KB > 10 KB
    assert r.status_code == 413
    assert r.json()["error"] == "astronaut.jpg is over the limit of 0.01 MB (--max-upload-mb)"
    big = c.post("/api/v1/predict", files=photo("big.jpg", JPEG + bytes(2 << 20)))  # over limit + form slack
    assert big.status_code == 413 and "upload limit" in big.json()["error"]
    small = serve(max_image_pixels=100 * 100).post("/api/v1/predict", files=photo())
    assert small.status_code == 413 and "512x512" in small.json()["error"]


# ------------------------------------------------------------------------------------------- video jobs


def test_video_job_progress_and_results(serve, model, tmp_path):
    c = serve()
    video = write_video(tmp_path / "clip.mp4", seconds=2.0, fps=10)
    r = c.post("/api/v1/predict", files={"file": ("clip.mp4", video.read_bytes())}, data={"fps": "5"})
    assert r.status_code == 202 and r.headers["location"] == r.json()["status_url"]
    assert r.json()["progress"]["frames_expected"] == 10
    job = wait_job(c, r.json())
    assert job["status"] == "done" and job["progress"]["fraction"] == 1.0 and job["progress"]["frames_done"] == 10
    assert list(c.app.state.settings.temp_dir.iterdir()) == []  # the video is removed once the job ends
    body = c.get(job["result_url"]).json()
    want = model.predict(str(video), fps=5)
    assert body["columns"] == list(want.columns) and len(body["rows"]) == len(want) == 10
    assert [row["frame"] for row in body["rows"]] == want["frame"].tolist()
    assert {row["top_label"] for row in body["rows"]} == {"happiness"}
    np.testing.assert_allclose([row["happiness"] for row in body["rows"]], want["happiness"], rtol=1e-5)
    csv = c.get(job["result_url"], params={"format": "csv"})
    assert csv.status_code == 200 and len(pd.read_csv(io.StringIO(csv.text))) == 10
    assert c.delete(job["status_url"]).status_code == 200  # forget it
    assert c.get(job["status_url"]).status_code == 404


def test_video_limits_and_corrupt_video(serve, tmp_path):
    c = serve(max_video_seconds=1)
    video = write_video(tmp_path / "clip.mp4", seconds=2.0)
    r = c.post("/api/v1/predict", files={"file": ("clip.mp4", video.read_bytes())})
    assert r.status_code == 413
    assert r.json()["error"] == "clip.mp4: the video (2 s) is over the limit of 1 s (--max-video-seconds)"
    broken = c.post("/api/v1/predict", files={"file": ("b.mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(500))})
    assert broken.status_code == 400
    error = broken.json()["error"]
    assert error.startswith("b.mp4: not a readable video") and str(c.app.state.settings.temp_dir) not in error


def test_unknown_and_unfinished_jobs(serve, tmp_path):
    c = serve()
    assert c.get("/api/v1/jobs/nope").json() == {"error": "no job nope (finished jobs are kept 3600 s)"}
    assert c.get("/api/v1/jobs/nope").status_code == 404
    assert c.get("/api/v1/jobs/nope/result").status_code == 404
    assert c.delete("/api/v1/jobs/nope").status_code == 404
    release = hold_worker(c)
    video = write_video(tmp_path / "clip.mp4", seconds=1.0).read_bytes()
    job = c.post("/api/v1/predict", files={"file": ("clip.mp4", video)}).json()
    early = c.get(f"/api/v1/jobs/{job['id']}/result")
    assert early.status_code == 409 and early.json()["error"].startswith(f"job {job['id']} is queued")
    cancelled = c.delete(job["status_url"]).json()
    assert cancelled["status"] == "cancelled"
    assert list(c.app.state.settings.temp_dir.iterdir()) == []
    release.set()


def test_full_queues_answer_503_with_retry_after(serve, tmp_path):
    c = serve(max_queue=1, max_jobs=1, retry_after_s=3)
    release = hold_worker(c)
    c.app.state.worker.submit(lambda: None)  # the one queue slot
    r = c.post("/api/v1/predict", files=photo())
    assert r.status_code == 503 and r.headers["retry-after"] == "3"
    assert r.json() == {"error": "the server is busy (work queue full); retry in 3 s", "retry_after": 3}
    video = write_video(tmp_path / "clip.mp4", seconds=1.0).read_bytes()
    first = c.post("/api/v1/predict", files={"file": ("a.mp4", video)})
    assert first.status_code == 202
    second = c.post("/api/v1/predict", files={"file": ("b.mp4", video)})
    assert second.status_code == 503 and second.headers["retry-after"] == "15"
    assert len(list(c.app.state.settings.temp_dir.iterdir())) == 1  # only the accepted job's video
    release.set()
    assert wait_job(c, first.json())["status"] == "done"


# ------------------------------------------------------------------------------------------- embed


def test_embed_image_and_video(serve, model, tmp_path):
    c = serve()
    body = c.post("/api/v1/embed", files=photo()).json()
    meta, emb = model.embed(str(PHOTO), clips=False)
    assert len(body["rows"]) == 1 and body["rows"][0]["level"] == "face"
    got = np.array(body["embeddings"][0])
    assert got.shape == (256,) and np.linalg.norm(got) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(got, emb[0], atol=1e-6)
    video = write_video(tmp_path / "clip.mp4", seconds=1.0)
    r = c.post("/api/v1/embed", files={"file": ("clip.mp4", video.read_bytes())})
    assert r.status_code == 202
    job = wait_job(c, r.json())
    result = c.get(job["result_url"]).json()
    levels = [row["level"] for row in result["rows"]]
    assert levels.count("face") == 5 and levels.count("clip") == 1
    assert all(v is not None for v in result["embeddings"])


# ------------------------------------------------------------------------------------------- safety


def test_token_is_required_on_every_request(serve):
    token = "s3cret-token-123"
    c = serve(token=token, loopback_only=False)
    for path in ("/", "/static/app.js", "/api/v1/health", "/api/v1/info", "/openapi.json", "/docs"):
        r = c.get(path)
        assert r.status_code == 401 and r.json()["error"].startswith("missing token"), path
    assert c.post("/api/v1/predict", files=photo()).status_code == 401
    wrong = c.get("/api/v1/health", headers={"Authorization": "Bearer nope-nope-nope"})
    assert wrong.status_code == 403 and wrong.json() == {"error": "wrong token"}
    assert c.get("/api/v1/health", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert c.get("/api/v1/health", headers={"X-Affectclip-Token": token}).status_code == 200
    with pytest.raises(WebSocketDisconnect) as closed:
        with c.websocket_connect(WS):
            pass
    assert closed.value.code == 1008
    page = c.get(f"/?token={token}")  # the page link sets an HttpOnly cookie the page's requests then carry
    cookie = page.headers["set-cookie"]
    assert page.status_code == 200 and cookie.startswith(f"affectclip_token_8000={token};") and "HttpOnly" in cookie
    assert c.get("/api/v1/info").status_code == 200
    with c.websocket_connect(WS) as ws:
        ws.send_text(json.dumps({"labels": "happy, sad"}))
        assert ws.receive_json()["config"]["labels"] == ["happy", "sad"]


def test_open_address_needs_a_token(monkeypatch):
    monkeypatch.delenv("AFFECTCLIP_SERVE_TOKEN", raising=False)
    assert resolve_token("127.0.0.1", None) is None
    with pytest.raises(ValueError, match="serving on 0.0.0.0 .* needs a token"):
        resolve_token("0.0.0.0", None)
    monkeypatch.setenv("AFFECTCLIP_SERVE_TOKEN", "from-the-environment")
    assert resolve_token("0.0.0.0", None) == "from-the-environment"
    with pytest.raises(ValueError, match="at least 8 characters"):
        ServeSettings(token="short")


def test_loopback_server_refuses_foreign_hosts_and_origins(serve):
    c = serve()
    r = c.get("/api/v1/health", headers={"host": "attacker.example:8000"})
    assert r.status_code == 400 and "loopback only" in r.json()["error"]
    with pytest.raises(WebSocketDisconnect) as closed:
        with c.websocket_connect(WS, headers={"origin": "http://attacker.example"}):
            pass
    assert closed.value.code == 1008


# ------------------------------------------------------------------------------------------- live


def test_live_websocket_scores_frames(serve):
    c = serve(max_frame_bytes=100_000)
    with c.websocket_connect(WS, headers={"origin": BASE}) as ws:
        ws.send_text(json.dumps({"labels": "happy, sad, angry"}))
        assert ws.receive_json() == {"config": {"labels": ["happy", "sad", "angry"], "prompts": "expression",
                                                "detector": "default"}}
        ws.send_bytes(JPEG)
        frame = ws.receive_json()
        assert frame["frame"] == 1 and (frame["width"], frame["height"]) == (512, 512)
        (face,) = frame["faces"]
        assert face["top_label"] == "happy" and set(face["scores"]) == {"happy", "sad", "angry"}
        assert sum(face["scores"].values()) == pytest.approx(1.0, abs=1e-6)
        def shifted(dx: int) -> bytes:
            buf = io.BytesIO()
            Image.fromarray(np.roll(np.asarray(Image.open(PHOTO)), dx, axis=1)).save(buf, "JPEG")
            return buf.getvalue()

        ws.send_bytes(shifted(6))  # the same face moved a little keeps its id (tracked across frames)
        again = ws.receive_json()
        assert [f["face_id"] for f in again["faces"]] == [0]
        assert again["faces"][0]["box"][0] == pytest.approx(face["box"][0] + 6, abs=3)
        ws.send_bytes(shifted(200))  # a face far from every tracked one is a new face
        assert [f["face_id"] for f in ws.receive_json()["faces"]] == [1]
        ws.send_bytes(b"not an image")
        assert ws.receive_json() == {"frame": 4, "error": "a frame must be a JPEG, PNG or WebP image"}
        ws.send_bytes(JPEG + bytes(100_000))
        assert "over the 100000 limit" in ws.receive_json()["error"]
        ws.send_text(json.dumps({"labels": ""}))
        assert ws.receive_json()["error"].startswith("labels is empty")
        ws.send_text("[1, 2]")
        assert ws.receive_json()["error"].startswith("send a JSON object")


def test_rows_never_show_the_server_temp_path(tmp_path):
    from affectclip.serve.sniff import sniff
    from affectclip.serve.uploads import Upload

    path = tmp_path / "affectclip-serve-x" / "upload.mp4"
    upload = Upload("clip.mp4", sniff(b"\x00\x00\x00\x18ftypmp42"), folder=path.parent, path=path)
    df = pd.DataFrame({"source": [str(path)] * 2, "status": ["ok", f"error: {path}: decoding failed at frame 7"]})
    rows = upload.label_rows(df)
    assert rows["source"].tolist() == ["clip.mp4", "clip.mp4"]
    assert rows["status"].tolist() == ["ok", "error: clip.mp4: decoding failed at frame 7"]


def test_images_are_answered_while_a_video_job_runs(serve):
    """A running job hands the model thread to waiting images between its frames: no image waits for a video."""
    from affectclip.serve.worker import Job

    c = serve()
    release, frames = threading.Event(), []

    def long_video(on_frame):
        deadline = time.time() + 10  # without the hand-over the image waits for this and the job is done
        while not release.is_set() and time.time() < deadline:
            frames.append(1)
            on_frame()
            time.sleep(0.01)
        return pd.DataFrame()

    job = c.app.state.worker.submit_job(Job(kind="predict", name="long.mp4", run=long_video, total=1000))
    while c.get(f"/api/v1/jobs/{job.id}").json()["status"] != "running":
        time.sleep(0.01)
    r = c.post("/api/v1/predict", files=photo())
    status = c.get(f"/api/v1/jobs/{job.id}").json()
    release.set()
    assert r.status_code == 200 and r.json()["rows"][0]["top_label"] == "happiness"
    assert status["status"] == "running" and 0 < status["progress"]["fraction"] < 1


def test_failed_job_reports_why(serve):
    from affectclip.serve.worker import Job

    c = serve()
    job = c.app.state.worker.submit_job(Job(kind="predict", name="x.mp4", run=lambda on_frame: 1 / 0))
    body = wait_job(c, {"id": job.id, "status_url": f"/api/v1/jobs/{job.id}"})
    assert body["status"] == "failed" and body["error"] == "division by zero" and body["result_url"] is None
    r = c.get(f"/api/v1/jobs/{job.id}/result")
    assert r.status_code == 409 and r.json() == {"error": f"job {job.id} is failed: division by zero"}
