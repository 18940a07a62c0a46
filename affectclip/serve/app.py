"""The FastAPI application: REST API `/api/v1/...`, the live WebSocket, the web page and the offline API docs.

`create_app(model, settings)` wraps one loaded `EmotionModel` (the same one `affectclip predict` uses); every model
call runs on the `Worker` thread. Images are answered in the request; videos become jobs (202 + a status URL with
progress, then a result URL), so no request holds a connection for minutes. Errors are JSON `{"error": "one line"}`.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import (
    FastAPI,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    UploadFile,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from affectclip.infer.predictor import DEFAULT_PROMPTS, FERPLUS_LABELS, EmotionModel, resolve_labels
from affectclip.serve import uploads
from affectclip.serve.guard import Guard
from affectclip.serve.results import embedding_lists, records, table_response
from affectclip.serve.settings import ServeSettings
from affectclip.serve.worker import Busy, Job, Worker, one_line

API = "/api/v1"
STATIC = Path(__file__).resolve().parent / "static"
Detector = Literal["default", "blazeface", "haar", "mtcnn"]
Format = Literal["json", "csv"]
DEFAULT_MODEL_NOTES = (
    "Shipped affectclip default model: MobileNetV2 + MiniLM trained on FER2013 images (released without a "
    "redistribution licence; research, development and evaluation use) with FER+ labels (MIT, Microsoft). "
    "It scores how a face looks, not what a person feels; do not use it for decisions about people. "
    "See MODEL_CARD.md."
)


class Models:
    """One EmotionModel per face detector, all sharing the loaded network (built on the model thread on demand)."""

    def __init__(self, base: EmotionModel) -> None:
        self.base = base
        self._by_detector = {base.detector_name: base}

    def get(self, detector: str) -> EmotionModel:
        if detector not in self._by_detector:
            base = self.base
            self._by_detector[detector] = EmotionModel(base.model, base.device, detector=detector, source=base.source)
        return self._by_detector[detector]


def parse_labels(labels: str | list[str] | None, prompts: str | None) -> list[str] | None:
    """'a, b, c' (or a list) -> validated labels; None keeps the model's defaults; 400 with the reason otherwise."""
    items = None
    if labels is not None:
        items = [s.strip() for s in labels.split(",")] if isinstance(labels, str) else [str(s).strip() for s in labels]
        items = [s for s in items if s]
        if not items:
            raise HTTPException(400, "labels is empty: give comma-separated labels, e.g. 'happy, sad', or leave it "
                                     f"out for the defaults ({', '.join(FERPLUS_LABELS)})")
    try:
        resolve_labels(items, prompts or None)
    except ValueError as exc:
        raise HTTPException(400, one_line(exc)) from exc
    return items


def model_info(em: EmotionModel, settings: ServeSettings) -> dict:
    from affectclip.eval.prompts import prompt_set_names
    from affectclip.models.default import DEFAULT_MODEL_FILE

    source = Path(em.source) if em.source and not em.source.startswith("<") else None
    meta: dict = {}
    if source is not None and source.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(source), "pt") as f:
            meta = {k: v for k, v in (f.metadata() or {}).items() if k in ("recipe", "trained_on", "steps")}
    shipped = source is not None and source == DEFAULT_MODEL_FILE.resolve()
    return {
        "name": "affectclip default model" if shipped else (source.name if source else em.source),
        "file": source.name if source else None,
        **meta,
        "embed_dim": int(em.model.embed_dim),
        "input_size": int(em.image_size),
        "logit_scale": em.logit_scale,
        "default_labels": list(FERPLUS_LABELS),
        "default_prompts": DEFAULT_PROMPTS,
        "prompt_sets": [*prompt_set_names(), "text"],
        "detectors": list(Detector.__args__),
        "licence_notes": DEFAULT_MODEL_NOTES if shipped else "a user-supplied checkpoint: its terms are its owner's",
        "limits": {"max_upload_mb": settings.max_upload_mb, "max_video_seconds": settings.max_video_seconds,
                   "max_image_pixels": settings.max_image_pixels, "max_frame_bytes": settings.max_frame_bytes},
    }


def _fps(fps: float) -> float | None:
    if fps < 0:
        raise HTTPException(400, f"fps must be >= 0 (0 = every frame), got {fps}")
    return fps or None


def create_app(model: EmotionModel, settings: ServeSettings | None = None) -> FastAPI:
    """The server around an already loaded model; the worker thread starts and stops with the app's lifespan."""
    settings = settings or ServeSettings()
    worker = Worker(settings.max_queue, settings.max_jobs, settings.max_finished_jobs, settings.job_ttl_s,
                    settings.retry_after_s)
    models = Models(model)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, worker.stop)

    app = FastAPI(title="affectclip", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Open-vocabulary facial emotion scores per face, for images, videos and a webcam. "
                              "Images are answered at once; videos run as jobs (poll the status URL, then fetch "
                              "the result URL). Errors are JSON {\"error\": message}.")
    app.state.worker, app.state.settings = worker, settings
    app.add_middleware(Guard, settings=settings)

    @app.exception_handler(StarletteHTTPException)  # also the router's own 404 / 405
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in err.get("loc", ())[1:]) or "request"
        return JSONResponse({"error": f"{where}: {err.get('msg', 'invalid value')}"}, 422)

    @app.exception_handler(ValueError)
    async def _bad_value(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"error": one_line(exc)}, 400)

    @app.exception_handler(Busy)
    async def _busy_error(request: Request, exc: Busy) -> JSONResponse:
        return JSONResponse({"error": str(exc), "retry_after": exc.retry_after}, 503,
                            headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error: {one_line(exc)}"}, 500)

    async def run(fn):
        return await asyncio.wrap_future(worker.submit(fn))

    def job_view(job: Job) -> dict:
        url = f"{API}/jobs/{job.id}"
        return {"id": job.id, "kind": job.kind, "source": job.name, "status": job.status, "error": job.error,
                "progress": job.progress(), "status_url": url,
                "result_url": f"{url}/result" if job.status == "done" else None}

    def start_job(kind: str, upload: uploads.Upload, fps: float | None, work) -> JSONResponse:
        job = Job(kind=kind, name=upload.name, run=work, total=uploads.expected_frames(upload, fps),
                  folder=upload.folder, redact=upload.redact)
        worker.submit_job(job)  # Busy -> 503 (and the folder is removed)
        return JSONResponse(job_view(job), 202, headers={"Location": f"{API}/jobs/{job.id}"})

    # ----------------------------------------------------------------------------------------------- routes

    @app.get(f"{API}/health", tags=["service"], summary="liveness and queue load")
    async def health() -> dict:
        return {"status": "ok", **worker.load()}

    @app.get(f"{API}/info", tags=["service"], summary="model name, default labels, prompt sets, input size, limits")
    async def info() -> dict:
        return model_info(model, settings)

    @app.post(f"{API}/predict", tags=["predict"], status_code=200,
              summary="emotion probabilities per face (image: 200 with rows; video: 202 with a job)",
              responses={202: {"description": "a video: a job; poll `status_url`, then GET `result_url`"},
                         400: {"description": "bad labels / parameters / undecodable file"},
                         413: {"description": "upload, frame size or video duration over the limit"},
                         415: {"description": "not an image or video (by content)"},
                         503: {"description": "queue full; retry after the Retry-After seconds"}})
    async def predict(
        file: Annotated[UploadFile, File(description="an image or a video; its type is read from its content")],
        labels: Annotated[str | None, Form(description="comma-separated labels; default: the 8 FER+ classes")] = None,
        prompts: Annotated[str | None, Form(description="prompt set (see /info), 'text' = labels verbatim")] = None,
        fps: Annotated[float, Form(description="video sampling rate, 0 = every frame")] = 5.0,
        detector: Annotated[Detector, Form()] = "default",
        detect_faces: Annotated[bool, Form(description="false: score the whole image as one face")] = True,
        agg: Annotated[Literal["embedding", "logit"], Form()] = "embedding",
        format: Annotated[Format, Form(description="json or csv")] = "json",
    ) -> Response:
        label_list = parse_labels(labels, prompts)
        rate = _fps(fps)
        upload = await uploads.receive(file, settings)
        kwargs = {"labels": label_list, "prompts": prompts or None, "detect_faces": detect_faces, "agg": agg}

        if upload.sniffed.kind == "image":
            def work():
                image = uploads.decode_image(upload, settings)
                return upload.label_rows(models.get(detector).predict(image, fps=rate, **kwargs))

            return table_response(await run(work), format, upload.name)

        def video_work(on_frame):
            return upload.label_rows(models.get(detector).predict(str(upload.path), fps=rate, on_frame=on_frame,
                                                                  **kwargs))

        return start_job("predict", upload, rate, video_work)

    @app.post(f"{API}/embed", tags=["embed"],
              summary="L2-normalised embeddings per face (image: 200; video: 202 job, plus one clip row per face)",
              responses={202: {"description": "a video: a job"}, 413: {"description": "too large"},
                         415: {"description": "not an image or video"}, 503: {"description": "busy"}})
    async def embed(
        file: Annotated[UploadFile, File(description="an image or a video")],
        fps: Annotated[float, Form(description="video sampling rate, 0 = every frame")] = 5.0,
        detector: Annotated[Detector, Form()] = "default",
        detect_faces: Annotated[bool, Form()] = True,
    ) -> Response:
        rate = _fps(fps)
        upload = await uploads.receive(file, settings)

        def finish(meta, emb) -> dict:
            meta = upload.label_rows(meta)
            return {"columns": list(meta.columns), "rows": records(meta), "embeddings": embedding_lists(emb)}

        if upload.sniffed.kind == "image":
            def work():
                image = uploads.decode_image(upload, settings)
                return finish(*models.get(detector).embed(image, detect_faces=detect_faces, clips=False))

            return JSONResponse(await run(work))

        def video_work(on_frame):
            return finish(*models.get(detector).embed(str(upload.path), detect_faces=detect_faces, fps=rate,
                                                      on_frame=on_frame))

        return start_job("embed", upload, rate, video_work)

    @app.get(f"{API}/jobs/{{job_id}}", tags=["jobs"], summary="a job's status and progress",
             responses={404: {"description": "unknown job"}})
    async def job_status(job_id: str) -> dict:
        return job_view(_job(job_id))

    @app.get(f"{API}/jobs/{{job_id}}/result", tags=["jobs"], summary="a finished job's rows (JSON or CSV)",
             responses={404: {"description": "unknown job"}, 409: {"description": "not finished, or failed"}})
    async def job_result(job_id: str, format: Annotated[Format, Query()] = "json") -> Response:
        job = _job(job_id)
        if job.status != "done":
            why = f": {job.error}" if job.error else f"; poll {API}/jobs/{job.id} until status is done"
            raise HTTPException(409, f"job {job.id} is {job.status}{why}")
        if job.kind == "embed":
            return JSONResponse(job.result)
        return table_response(job.result, format, job.name)

    @app.delete(f"{API}/jobs/{{job_id}}", tags=["jobs"], summary="cancel a job (or forget a finished one)",
                responses={404: {"description": "unknown job"}})
    async def job_cancel(job_id: str) -> dict:
        job = worker.cancel(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id} (finished jobs are kept {settings.job_ttl_s:g} s)")
        return job_view(job)

    def _job(job_id: str) -> Job:
        job = worker.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id} (finished jobs are kept {settings.job_ttl_s:g} s)")
        return job

    # ----------------------------------------------------------------------------------------------- live

    @app.websocket(f"{API}/live")
    async def live(ws: WebSocket) -> None:
        """Webcam frames in (binary JPEG/PNG/WebP), per-face scores out; a JSON text message sets labels/prompts.
        Face ids are tracked across the connection's frames (greedy IoU, as `predict` tracks video faces)."""
        from affectclip.data.tracking import IoUTracker

        await ws.accept()
        config: dict = {"labels": None, "prompts": None, "detector": "default", "tracker": IoUTracker()}
        n = 0
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    await ws.send_json(_configure(config, message["text"]))
                    continue
                data = message.get("bytes") or b""
                n += 1
                await ws.send_json(await _live_frame(n, data, config))
        except WebSocketDisconnect:
            return

    def _configure(config: dict, text: str) -> dict:
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict):
                raise ValueError("send a JSON object like {\"labels\": \"happy, sad\"}")
            prompts = doc.get("prompts") or None
            labels = parse_labels(doc.get("labels"), prompts)
            detector = doc.get("detector", "default")
            if detector not in Detector.__args__:
                raise ValueError(f"unknown detector {detector!r}; choose one of {', '.join(Detector.__args__)}")
        except HTTPException as exc:
            return {"error": exc.detail}
        except ValueError as exc:
            return {"error": one_line(exc)}
        config.update(labels=labels, prompts=prompts, detector=detector)
        return {"config": {"labels": labels or list(FERPLUS_LABELS), "prompts": prompts or DEFAULT_PROMPTS,
                           "detector": detector}}

    async def _live_frame(n: int, data: bytes, config: dict) -> dict:
        if len(data) > settings.max_frame_bytes:
            return {"frame": n, "error": f"frame of {len(data)} bytes is over the {settings.max_frame_bytes} limit"}
        sniffed = uploads.sniff(data[: uploads.HEAD_BYTES])
        if sniffed is None or sniffed.kind != "image":
            return {"frame": n, "error": "a frame must be a JPEG, PNG or WebP image"}
        upload = uploads.Upload(f"frame {n}", sniffed, data=data)
        start = time.perf_counter()

        def work():
            image = uploads.decode_image(upload, settings)
            df = models.get(config["detector"]).predict(image, labels=config["labels"], prompts=config["prompts"])
            return image.shape, df

        try:
            (h, w, _), df = await run(work)
        except Busy as exc:
            return {"frame": n, "busy": True, "retry_after": exc.retry_after}
        except HTTPException as exc:
            return {"frame": n, "error": exc.detail}
        labels, rows = df.attrs["labels"], records(df[df["status"] == "ok"])
        ids = config["tracker"].update([[r["x0"], r["y0"], r["x1"], r["y1"]] for r in rows])
        faces = [{"face_id": face_id, "box": [r["x0"], r["y0"], r["x1"], r["y1"]], "top_label": r["top_label"],
                  "top_score": r["top_score"], "scores": {k: r[k] for k in labels}}
                 for face_id, r in zip(ids, rows, strict=True)]
        return {"frame": n, "width": w, "height": h, "labels": labels, "faces": faces,
                "ms": round(1000 * (time.perf_counter() - start), 1)}

    # ----------------------------------------------------------------------------------------------- page, docs

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _mount_docs(app)
    return app


def _mount_docs(app: FastAPI) -> None:
    """The OpenAPI page at /docs with Swagger UI served from the `swagger-ui-bundle` package (no CDN, offline)."""
    from fastapi.openapi.docs import get_swagger_ui_html

    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:  # the page then lists /openapi.json only
        swagger_ui_path = None
    if swagger_ui_path is not None:
        app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        if swagger_ui_path is None:
            return JSONResponse({"openapi": "/openapi.json", "note": "install swagger-ui-bundle for the docs page"})
        return get_swagger_ui_html(openapi_url="/openapi.json", title="affectclip API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")
