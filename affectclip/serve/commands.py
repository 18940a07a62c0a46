"""`affectclip serve`: the web app and REST API on one loaded model (imports FastAPI/uvicorn only when run)."""

from __future__ import annotations

import argparse
import sys


def _serve(args: argparse.Namespace) -> int:
    from affectclip.core.errors import UserError
    from affectclip.serve.settings import ServeSettings, is_loopback, resolve_token

    token = resolve_token(args.host, args.token)  # refuse an open address without a token before loading anything
    settings = ServeSettings(token=token, loopback_only=is_loopback(args.host) and token is None,
                             max_upload_mb=args.max_upload_mb, max_video_seconds=args.max_video_seconds,
                             max_image_pixels=args.max_image_pixels, max_queue=args.max_queue, max_jobs=args.max_jobs)
    try:
        import uvicorn

        from affectclip.serve.app import create_app
    except ModuleNotFoundError as exc:
        raise UserError(f"affectclip serve needs {exc.name}: pip install 'affectclip[serve]' "
                        "(scripts/install.sh installs it)") from exc
    from affectclip.infer.predictor import load

    model = load(args.model, device=args.device, detector=args.detector)
    app = create_app(model, settings)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown}:{args.port}/" + ("?token=TOKEN" if token else "")
    print(f"affectclip serve: {model.source} on {url}  (API docs: /docs)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="local web app + REST API (images, videos, webcam) on one model",
        description="Serve a web page and a versioned REST API (/api/v1, docs at /docs) around one loaded model. "
                    "Binds to 127.0.0.1; another address needs a token (--token or AFFECTCLIP_SERVE_TOKEN), "
                    "checked on every request.")
    p.add_argument("--model", help="model checkpoint (.safetensors); default: the installed default model")
    p.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, ...")
    p.add_argument("--detector", default="default", choices=["default", "haar", "blazeface", "mtcnn"],
                   help="default face detector (a request may choose another)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--token", help="require this token on every request (or set AFFECTCLIP_SERVE_TOKEN)")
    p.add_argument("--max-upload-mb", type=float, default=100.0, help="largest upload (default 100 MB)")
    p.add_argument("--max-video-seconds", type=float, default=600.0, help="longest video (default 600 s)")
    p.add_argument("--max-image-pixels", type=int, default=40_000_000, help="largest image / frame (pixels)")
    p.add_argument("--max-queue", type=int, default=8, help="images/frames waiting before 503 (default 8)")
    p.add_argument("--max-jobs", type=int, default=4, help="video jobs waiting before 503 (default 4)")
    p.add_argument("--quiet", action="store_true", help="log warnings only")
    p.set_defaults(func=_serve)
