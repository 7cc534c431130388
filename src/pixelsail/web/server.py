"""The web demo: a stdlib HTTP server, one model behind a bounded job queue, per-visitor sessions.

Design: every model call (image decoding included) runs on ONE worker thread fed by a bounded queue
(:mod:`pixelsail.web.worker`), so memory and CPU stay bounded however many people click; a full queue answers 503
with Retry-After at once, and the listening socket's backlog is large enough that a burst is answered, not reset.
Each visitor's image, visual prompts' prefix cache and conversation live in a session keyed by a random id
(:mod:`pixelsail.web.sessions`); sessions expire after a while and the oldest are dropped beyond a cap; either way
a later request gets 410 and the reason. Every failure is a JSON ``{"error": message}`` with a 4xx/5xx status and
the server keeps serving.

JSON API (used by ``static/app.js``)::

    GET  /api/config                       limits, palette, sample list
    GET  /api/samples/<i>.png              a sample image
    POST /api/session   (image bytes | {"sample": i})   -> {session_id, width, height, image_url}
    GET  /api/session/<id>/image.png       the session's image as the model sees it (EXIF-rotated, RGB)
    POST /api/ask       {session_id, mode: segment|ask|describe, text, prompts: [...], remember: bool}
                                           -> {text, masks: [{rle, area, box, score}], overlay (PNG data URL), ...}
    POST /api/reset     {session_id}       forget the conversation
"""
from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from pixelsail.imageio import ImageInputError
from pixelsail.predictor import DESCRIBE_QUESTION, ChatSession, InputError, Predictor
from pixelsail.prompts import scribble_to_mask
from pixelsail.viz import MASK_COLORS
from pixelsail.web.errors import HttpError
from pixelsail.web.sessions import Session, SessionStore
from pixelsail.web.worker import Worker

log = logging.getLogger("pixelsail.web")

STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
                "/static/style.css": ("style.css", "text/css; charset=utf-8")}
MAX_SCRIBBLE_POINTS = 5000


@dataclass
class Limits:
    max_upload_bytes: int = 8 * 1024 * 1024
    max_json_bytes: int = 1024 * 1024
    max_sessions: int = 64
    session_ttl_s: float = 30 * 60
    queue_size: int = 8
    job_timeout_s: float = 120.0


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def png_data_url(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def parse_prompt(item: Any, index: int, h: int, w: int) -> Any:
    """One prompt of the JSON API -> something :func:`pixelsail.prompts.as_prompt_mask` accepts."""
    where = f"prompt {index}"
    if not isinstance(item, dict):
        raise InputError(f"{where}: expected an object like {{\"type\": \"point\", \"x\": 10, \"y\": 20}}")
    kind = item.get("type")
    if kind == "point":
        return (item.get("x"), item.get("y"))
    if kind == "box":
        box = item.get("box")
        if not isinstance(box, list):
            raise InputError(f"{where}: a box needs \"box\": [x0, y0, x1, y1]")
        return box
    if kind == "scribble":
        pts = item.get("points")
        if not isinstance(pts, list) or not pts:
            raise InputError(f"{where}: a scribble needs \"points\": [[x, y], ...]")
        if len(pts) > MAX_SCRIBBLE_POINTS:
            raise InputError(f"{where}: a scribble may have at most {MAX_SCRIBBLE_POINTS} points, got {len(pts)}")
        try:
            return scribble_to_mask(pts, h, w, width=max(3, round(min(h, w) / 64)))
        except (ValueError, TypeError) as e:
            raise InputError(f"{where}: {e}") from None
    raise InputError(f"{where}: unknown type {kind!r}; expected point, box or scribble")


class DemoApp:
    """Everything but HTTP plumbing: sessions, the model worker, request handling as plain functions."""

    def __init__(self, predictor: Predictor, samples: Sequence[tuple[str, np.ndarray]] = (),
                 limits: Limits | None = None):
        self.predictor = predictor
        self.samples = list(samples)
        self.limits = limits or Limits()
        self.sessions = SessionStore(self.limits.max_sessions, self.limits.session_ttl_s)
        self.worker = Worker(self.limits.queue_size, self.limits.job_timeout_s)

    def config(self) -> dict:
        return {"max_upload_bytes": self.limits.max_upload_bytes, "max_pixels": self.predictor.max_pixels,
                "num_vp_tokens": self.predictor.num_vp_tokens, "palette": [list(c) for c in MASK_COLORS],
                "samples": [{"id": i, "name": name, "width": int(im.shape[1]), "height": int(im.shape[0]),
                             "url": f"/api/samples/{i}.png"} for i, (name, im) in enumerate(self.samples)]}

    def sample_png(self, index: str) -> bytes:
        if not index.isdigit() or int(index) >= len(self.samples):
            raise HttpError(404, f"no sample image {index!r}")
        return png_bytes(self.samples[int(index)][1])

    def new_session(self, image_source: Any) -> dict:
        def work() -> dict:
            image = self.predictor.load_image(image_source)
            sid = self.sessions.add(Session(image, ChatSession(self.predictor, image)))
            return {"session_id": sid, "width": int(image.shape[1]), "height": int(image.shape[0]),
                    "image_url": f"/api/session/{sid}/image.png"}
        return self.worker.submit(work)

    def new_session_from_json(self, body: dict) -> dict:
        idx = body.get("sample")
        if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < len(self.samples):
            raise InputError(f"unknown sample {idx!r}; there are {len(self.samples)} sample images")
        return self.new_session(self.samples[idx][1])

    def session_png(self, sid: str) -> bytes:
        return png_bytes(self.sessions.get(sid).image)

    def ask(self, body: dict) -> dict:
        session = self.sessions.get(body.get("session_id"))
        mode = body.get("mode", "segment")
        text = body.get("text", "")
        if not isinstance(text, str):
            raise InputError("\"text\" must be a string")
        raw_prompts = body.get("prompts")  # absent: a remembered conversation keeps its earlier prompts
        if raw_prompts is not None and not isinstance(raw_prompts, list):
            raise InputError("\"prompts\" must be a list")
        h, w = session.image.shape[:2]

        def work() -> dict:
            t0 = time.perf_counter()
            # the page labels the i-th drawn prompt vp_i, so the numbering is explicit
            prompts = None if raw_prompts is None else {i: parse_prompt(p, i, h, w) for i, p in enumerate(raw_prompts)}
            if mode == "segment":
                question, prompts = self.predictor.segment_question(text), {}
            elif mode == "ask":
                question = text
            elif mode == "describe":
                if not prompts or len(prompts) != 1:
                    raise InputError(f"describe needs exactly one visual prompt, got {len(prompts or {})}")
                question, prompts = DESCRIBE_QUESTION, {0: next(iter(prompts.values()))}
            else:
                raise InputError(f"unknown mode {mode!r}; expected segment, ask or describe")
            if body.get("remember"):
                result = session.chat.send(question, prompts=prompts)
            else:
                result = self.predictor.ask(session.image, question, prompts=prompts)
            out = result.to_dict()
            out["overlay"] = png_data_url(result.overlay())
            out["total_seconds"] = round(time.perf_counter() - t0, 4)
            return out
        return self.worker.submit(work)

    def reset(self, body: dict) -> dict:
        self.sessions.get(body.get("session_id")).chat.reset()
        return {"ok": True}

    def close(self) -> None:
        self.worker.stop()


class Handler(BaseHTTPRequestHandler):
    server_version = "pixelsail-demo"
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a client may take to send a request

    @property
    def app(self) -> DemoApp:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, fmt: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), fmt % args)

    def do_GET(self) -> None:
        self._handle(self._get)

    def do_POST(self) -> None:
        self._handle(self._post)

    def _get(self) -> tuple[int, bytes, str]:
        path = self.path.split("?", 1)[0]
        if path in STATIC_FILES:
            name, ctype = STATIC_FILES[path]
            return 200, (resources.files("pixelsail.web") / "static" / name).read_bytes(), ctype
        if path == "/api/config":
            return self._json(self.app.config())
        if path.startswith("/api/samples/") and path.endswith(".png"):
            return 200, self.app.sample_png(path[len("/api/samples/"):-4]), "image/png"
        parts = path.split("/")
        if len(parts) == 5 and parts[:3] == ["", "api", "session"] and parts[4] == "image.png":
            return 200, self.app.session_png(parts[3]), "image/png"
        raise HttpError(404, f"no such page: {path}")

    def _post(self) -> tuple[int, bytes, str]:
        path = self.path.split("?", 1)[0]
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if path == "/api/session":
            if ctype == "application/json":
                return self._json(self.app.new_session_from_json(self._read_json()))
            data = self._read_body(self.app.limits.max_upload_bytes, "image upload")
            return self._json(self.app.new_session(data))
        if path == "/api/ask":
            return self._json(self.app.ask(self._read_json()))
        if path == "/api/reset":
            return self._json(self.app.reset(self._read_json()))
        raise HttpError(404, f"no such endpoint: POST {path}")

    def _read_body(self, limit: int, what: str) -> bytes:
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise HttpError(411, f"{what}: Content-Length header required")
        try:
            n = int(raw)
        except ValueError:
            raise HttpError(400, f"{what}: bad Content-Length {raw!r}") from None
        if n < 0:
            raise HttpError(400, f"{what}: bad Content-Length {raw!r}")
        if n > limit:
            self.close_connection = True  # the body is not read; the connection cannot be reused
            raise HttpError(413, f"{what} is too large: {n:,} bytes, the limit is {limit:,}")
        return self.rfile.read(n)

    def _read_json(self) -> dict:
        data = self._read_body(self.app.limits.max_json_bytes, "request body")
        try:
            body = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HttpError(400, "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise HttpError(400, "request body must be a JSON object")
        return body

    @staticmethod
    def _json(obj: Any, status: int = 200) -> tuple[int, bytes, str]:
        return status, json.dumps(obj).encode(), "application/json"

    def _handle(self, route: Callable[[], tuple[int, bytes, str]]) -> None:
        retry_after = None
        try:
            status, body, ctype = route()
        except HttpError as e:
            status, body, ctype = self._json({"error": e.message}, e.status)
            retry_after = e.retry_after
        except (InputError, ImageInputError) as e:
            status, body, ctype = self._json({"error": str(e)}, 400)
        except Exception as e:  # noqa: BLE001 - the server must stay up; the client gets a message
            log.exception("internal error on %s %s", self.command, self.path)
            status, body, ctype = self._json({"error": f"internal error: {type(e).__name__}: {e}"}, 500)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


class DemoServer(ThreadingHTTPServer):
    """The HTTP server (one thread per connection). ``app`` may be attached after the port is bound, so a busy
    port is reported before the model loads."""

    daemon_threads = True
    # connections the kernel holds until they are accepted: the stdlib default of 5 made bursts of requests end in
    # TCP resets; with room for them every client gets an HTTP answer (200, or 503 + Retry-After from the queue)
    request_queue_size = 1024
    allow_reuse_address = True  # restart at once after a stop (TIME_WAIT); a port in use still fails to bind
    allow_reuse_port = False    # never share a port with a second server (some Python versions default to True)

    def __init__(self, app: DemoApp | None, host: str = "127.0.0.1", port: int = 7860):
        super().__init__((host, port), Handler)
        self.app = app
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "DemoServer":
        """Serve on a background thread (tests, notebooks); ``serve_forever`` for the foreground."""
        self._thread = threading.Thread(target=self.serve_forever, name="pixelsail-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self.app is not None:
            self.app.close()
