"""A corpus of inputs that can hurt, each with the exact complaint a user should get (API and HTTP).

The model limits used here: 4 visual prompt tokens, 512 positions, questions up to 256 tokens, 64x48 image.
"""
import http.client
import json

import numpy as np
import pytest

from fake_pixelsail import FakePixelSail, png_bytes, png_header_only, scene
from pixelsail.predictor import InputError, Predictor
from pixelsail.web import DemoApp, DemoServer, Limits


LONG_TEXT = "the red square " * 120  # 360 words
IMG = scene()
P = Predictor(model=FakePixelSail(num_vp_tokens=4, max_position_embeddings=512))
P_NO_QUESTION_CAP = Predictor(model=FakePixelSail(num_vp_tokens=4, max_position_embeddings=512),
                              max_question_tokens=100_000)

API_CASES = [
    ("missing file", lambda: P.segment("/nope/scene.png", "the red square"), "image file not found: /nope/scene.png"),
    ("not an image", lambda: P.segment(b"GIF? no, just text", "x"), "uploaded data is not an image"),
    ("truncated png", lambda: P.segment(png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))[:300],
                                        "x"), "uploaded data is truncated or corrupt"),
    ("decompression bomb", lambda: P.segment(png_header_only(50_000, 50_000), "x"), "too large to decode safely"),
    ("too many pixels", lambda: Predictor(model=FakePixelSail(), max_pixels=1000).segment(IMG, "x"),
     "array is too large: 64x48 = 3,072 pixels, the limit is 1,000"),
    ("zero-size image", lambda: P.segment(np.zeros((0, 4, 3), np.uint8), "x"), "array is empty (4x0 pixels)"),
    ("wrong dtype", lambda: P.segment(np.zeros((4, 4, 3), np.int8), "x"), "unsupported dtype int8"),
    ("channels first", lambda: P.segment(np.zeros((3, 48, 64), np.uint8), "x"), "looks channels-first"),
    ("empty expression", lambda: P.segment(IMG, "   "), "the referring expression is empty"),
    ("empty question", lambda: P.ask(IMG, "\n\t "), "the question is empty"),
    ("question not text", lambda: P.ask(IMG, 42), "the question must be text, got int"),
    ("over-long question", lambda: P.ask(IMG, LONG_TEXT), "the question is too long"),
    ("over-long conversation", lambda: P_NO_QUESTION_CAP.ask(IMG, LONG_TEXT),
     "the conversation is too long"),
    ("unknown vp token", lambda: P.ask(IMG, "What is <vp_7>?", prompts=[(5, 5)]),
     "unknown visual prompt <vp_7>: this model has <vp_0>..<vp_3>"),
    ("named vp without prompt", lambda: P.ask(IMG, "Is <vp_0> left of <vp_1>?", prompts=[(5, 5)]),
     "the question names <vp_1> but no visual prompt was given for it (1 prompt(s) given)"),
    ("too many prompts", lambda: P.ask(IMG, "Hi", prompts=[(i, i) for i in range(5)]),
     "too many visual prompts: 5 given, this model has 4 (<vp_0>..<vp_3>)"),
    ("point outside", lambda: P.ask(IMG, "What is <vp_0>?", prompts=[(100, 5)]),
     "visual prompt <vp_0>: point (100.0, 5.0) lies outside the 64x48 image"),
    ("box outside", lambda: P.ask(IMG, "What is <vp_0>?", prompts=[(70, 50, 90, 60)]),
     "visual prompt <vp_0>: box (70.0, 50.0, 90.0, 60.0) lies outside the 64x48 image"),
    ("empty box", lambda: P.describe(IMG, (20, 5, 10, 9)), "box (20.0, 5.0, 10.0, 9.0) is empty"),
    ("mask of wrong size", lambda: P.ask(IMG, "What is <vp_0>?", prompts=[np.ones((10, 10), bool)]),
     "visual prompt <vp_0>: prompt mask has shape (10, 10), image is (48, 64)"),
    ("empty mask", lambda: P.describe(IMG, np.zeros((48, 64), bool)), "prompt mask is empty"),
    ("malformed prompt", lambda: P.describe(IMG, (1, 2, 3)), "cannot read a visual prompt of shape (3,)"),
    ("describe without region", lambda: P.describe(IMG, None), "describe() needs a region"),
]


@pytest.mark.parametrize("name, call, message", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_refuses_with_a_clear_message(name, call, message):
    with pytest.raises(InputError) as ei:
        call()
    assert message in str(ei.value)


@pytest.fixture(scope="module")
def server():
    app = DemoApp(Predictor(model=FakePixelSail(num_vp_tokens=4), max_pixels=100_000), samples=[("scene", scene())],
                  limits=Limits(max_upload_bytes=20_000))
    srv = DemoServer(app, port=0).start()
    yield srv
    srv.stop()


def raw_request(srv, method, path, body=b"", headers=None):
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.putrequest(method, path)
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    conn.endheaders()
    if body:
        conn.send(body)
    res = conn.getresponse()
    data = res.read()
    conn.close()
    return res.status, json.loads(data) if data.startswith(b"{") else data


def post(srv, path, body, ctype="application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return raw_request(srv, "POST", path, data, {"Content-Type": ctype, "Content-Length": str(len(data))})


def session(srv):
    return post(srv, "/api/session", {"sample": 0})[1]["session_id"]


def ask(srv, **fields):
    return post(srv, "/api/ask", {"session_id": session(srv), "mode": "segment", "text": "the red square", **fields})


HTTP_CASES = [
    ("invalid json", lambda s: post(s, "/api/ask", b"{not json"), 400, "request body is not valid JSON"),
    ("json not an object", lambda s: post(s, "/api/ask", b"[1, 2]"), 400, "request body must be a JSON object"),
    ("no session id", lambda s: post(s, "/api/ask", {"mode": "segment", "text": "x"}), 400, "missing session_id"),
    ("unknown session", lambda s: post(s, "/api/ask", {"session_id": "forged", "text": "x"}), 404,
     "unknown session (the server may have restarted): load the image again"),
    ("no content length", lambda s: raw_request(s, "POST", "/api/session", headers={"Content-Type": "image/png"}),
     411, "Content-Length header required"),
    ("upload too large", lambda s: post(s, "/api/session", b"\0" * 30_000, "image/png"), 413,
     "image upload is too large: 30,000 bytes, the limit is 20,000"),
    ("upload not an image", lambda s: post(s, "/api/session", b"hello", "image/png"), 400,
     "uploaded data is not an image"),
    ("upload too many pixels", lambda s: post(s, "/api/session", png_bytes(np.zeros((400, 400, 3), np.uint8)),
                                              "image/png"), 400,
     "uploaded data is too large: 400x400 = 160,000 pixels, the limit is 100,000"),
    ("upload empty", lambda s: post(s, "/api/session", b"", "image/png"), 400, "empty image data"),
    ("unknown sample", lambda s: post(s, "/api/session", {"sample": 7}), 400, "unknown sample 7"),
    ("unknown mode", lambda s: ask(s, mode="paint"), 400, "unknown mode 'paint'"),
    ("empty text", lambda s: ask(s, text=""), 400, "the referring expression is empty"),
    ("text not a string", lambda s: ask(s, text=["a"]), 400, "\"text\" must be a string"),
    ("prompts not a list", lambda s: ask(s, mode="ask", prompts={"a": 1}), 400, "\"prompts\" must be a list"),
    ("unknown prompt type", lambda s: ask(s, mode="ask", text="Hi", prompts=[{"type": "lasso"}]), 400,
     "prompt 0: unknown type 'lasso'"),
    ("point outside", lambda s: ask(s, mode="ask", text="What is <vp_0>?",
                                    prompts=[{"type": "point", "x": 64, "y": 3}]), 400,
     "visual prompt <vp_0>: point (64.0, 3.0) lies outside the 64x48 image"),
    ("point not numbers", lambda s: ask(s, mode="ask", text="Hi", prompts=[{"type": "point", "x": "a"}]), 400,
     "point (x, y) must be 2 numbers"),
    ("scribble outside", lambda s: ask(s, mode="ask", text="Hi", prompts=[{"type": "scribble",
                                                                          "points": [[-9, -9], [-1, -5]]}]), 400,
     "prompt 0: scribble lies entirely outside the 64x48 image"),
    ("scribble too long", lambda s: ask(s, mode="ask", text="Hi", prompts=[{"type": "scribble",
                                                                           "points": [[1, 1]] * 5001}]), 400,
     "a scribble may have at most 5000 points"),
    ("too many prompts", lambda s: ask(s, mode="ask", text="Hi", prompts=[{"type": "point", "x": i, "y": 1}
                                                                          for i in range(5)]), 400,
     "too many visual prompts: 5 given, this model has 4"),
    ("vp token unknown", lambda s: ask(s, mode="ask", text="What is <vp_9>?"), 400, "unknown visual prompt <vp_9>"),
    ("describe two regions", lambda s: ask(s, mode="describe", prompts=[{"type": "point", "x": 1, "y": 1},
                                                                        {"type": "point", "x": 2, "y": 2}]), 400,
     "describe needs exactly one visual prompt, got 2"),
    ("over-long text", lambda s: ask(s, mode="ask", text=LONG_TEXT), 400, "the question is too long"),
    ("unknown endpoint", lambda s: post(s, "/api/delete-everything", {}), 404, "no such endpoint"),
    ("path traversal", lambda s: raw_request(s, "GET", "/static/../../predictor.py"), 404, "no such page"),
]


@pytest.mark.parametrize("name, call, status, message", HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_http_refuses_with_status_and_message(server, name, call, status, message):
    got_status, body = call(server)
    assert got_status == status, body
    assert message in body["error"]


def test_server_is_still_up_after_the_corpus(server):
    for _, call, _, _ in HTTP_CASES:
        call(server)
    status, body = ask(server)
    assert status == 200 and body["text"] == "Sure, [SEG]." and body["masks"][0]["area"] == 256
