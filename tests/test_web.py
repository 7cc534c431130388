import base64
import io
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from fake_pixelsail import FakePixelSail, png_bytes, scene
from pixelsail.predictor import Predictor
from pixelsail.web import DemoApp, DemoServer, Limits


def request(base, path, body=None, ctype="application/json", method=None):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(base + path, data=data, method=method or ("POST" if data is not None else "GET"))
    if data is not None:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            return res.status, res.read(), res.headers.get("Content-Type")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type")


def post_json(base, path, body):
    status, data, _ = request(base, path, body)
    return status, json.loads(data)


def blue_scene():
    img = np.full((40, 40, 3), 128, np.uint8)
    img[0:10, 0:10] = (10, 20, 230)
    return img


def start(limits=None, model=None):
    app = DemoApp(Predictor(model=model or FakePixelSail()), samples=[("scene", scene()), ("blue", blue_scene())],
                  limits=limits)
    return DemoServer(app, port=0).start()


@pytest.fixture()
def server():
    srv = start()
    yield srv
    srv.stop()


def decode_data_url(url):
    assert url.startswith("data:image/png;base64,")
    return np.array(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_page_static_files_and_config(server):
    status, body, ctype = request(server.url, "/")
    assert status == 200 and ctype.startswith("text/html") and b'id="canvas"' in body
    status, body, ctype = request(server.url, "/static/app.js")
    assert status == 200 and b"/api/ask" in body
    status, cfg = 200, json.loads(request(server.url, "/api/config")[1])
    assert cfg["num_vp_tokens"] == 4 and [s["name"] for s in cfg["samples"]] == ["scene", "blue"]
    assert cfg["samples"][0]["width"] == 64 and cfg["samples"][0]["height"] == 48
    status, body, ctype = request(server.url, "/api/samples/1.png")
    assert ctype == "image/png"
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(body))), blue_scene())


def test_segment_through_the_api(server):
    status, sess = post_json(server.url, "/api/session", {"sample": 0})
    assert status == 200 and (sess["width"], sess["height"]) == (64, 48)
    status, r = post_json(server.url, "/api/ask", {"session_id": sess["session_id"], "mode": "segment",
                                                   "text": "the red square"})
    assert status == 200 and r["text"] == "Sure, [SEG]."
    (m,) = r["masks"]
    assert m["area"] == 256 and m["box"] == [4, 8, 20, 24]
    mask = mask_utils.decode({"size": m["rle"]["size"], "counts": m["rle"]["counts"].encode()}).astype(bool)
    assert mask[8:24, 4:20].all() and mask.sum() == 256
    overlay = decode_data_url(r["overlay"])
    assert overlay.shape == (48, 64, 3) and (overlay[12, 10] != scene()[12, 10]).any()


def test_prompts_through_the_api(server):
    sid = post_json(server.url, "/api/session", {"sample": 0})[1]["session_id"]
    ask = {"session_id": sid, "mode": "ask", "text": "What colour is <vp_1>?",
           "prompts": [{"type": "point", "x": 10, "y": 10}, {"type": "box", "box": [30, 30, 46, 42]}]}
    assert post_json(server.url, "/api/ask", ask)[1]["text"] == "<vp_1>: blue."
    scribble = {"session_id": sid, "mode": "describe", "prompts": [{"type": "scribble", "points": [[5, 9], [18, 22]]}]}
    assert post_json(server.url, "/api/ask", scribble)[1]["text"] == "<vp_0>: red."


def test_upload_creates_a_session_with_the_normalised_image(server):
    rgba = np.zeros((10, 12, 4), np.uint8)  # fully transparent -> white once loaded
    status, body, _ = request(server.url, "/api/session", png_bytes(rgba), ctype="application/octet-stream")
    sess = json.loads(body)
    assert status == 200 and (sess["width"], sess["height"]) == (12, 10)
    status, body, _ = request(server.url, sess["image_url"])
    assert (np.array(Image.open(io.BytesIO(body))) == 255).all()


def test_sessions_do_not_mix(server):
    a = post_json(server.url, "/api/session", {"sample": 0})[1]["session_id"]
    b = post_json(server.url, "/api/session", {"sample": 1})[1]["session_id"]
    assert a != b
    ra = post_json(server.url, "/api/ask", {"session_id": a, "mode": "segment", "text": "the blue one"})[1]
    rb = post_json(server.url, "/api/ask", {"session_id": b, "mode": "segment", "text": "the blue one"})[1]
    assert ra["masks"][0]["box"] == [30, 30, 46, 42] and rb["masks"][0]["box"] == [0, 0, 10, 10]
    # a remembered conversation in one session is not seen by the other
    prompt = [{"type": "point", "x": 5, "y": 5}]
    post_json(server.url, "/api/ask", {"session_id": a, "mode": "ask", "text": "What colour is <vp_0>?",
                                       "prompts": prompt, "remember": True})
    post_json(server.url, "/api/ask", {"session_id": b, "mode": "ask", "text": "What colour is <vp_0>?",
                                       "prompts": prompt, "remember": True})
    model = server.app.predictor.model
    assert model.questions[-1][1] == []  # session b's first remembered turn had no history
    post_json(server.url, "/api/ask", {"session_id": a, "mode": "ask", "text": "And <vp_0>?", "remember": True})
    assert model.questions[-1][1] == [("What colour is <vp_0>?", "<vp_0>: grey.")]
    assert post_json(server.url, "/api/reset", {"session_id": a})[0] == 200
    post_json(server.url, "/api/ask", {"session_id": a, "mode": "ask", "text": "What colour is <vp_0>?",
                                       "prompts": prompt, "remember": True})
    assert model.questions[-1][1] == []


def test_full_queue_answers_503_and_the_server_recovers():
    srv = start(Limits(queue_size=1), model=FakePixelSail(prefill_seconds=0.4))
    try:
        sids = [post_json(srv.url, "/api/session", {"sample": i % 2})[1]["session_id"] for i in range(2)]
        statuses = []

        def ask(i):
            img = {"session_id": sids[i % 2], "mode": "ask", "text": "What colour is <vp_0>?",
                   "prompts": [{"type": "point", "x": 1 + i, "y": 1}]}  # a new prompt each time: a new prefill
            statuses.append(post_json(srv.url, "/api/ask", img))

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(s for s, _ in statuses)
        assert 200 in codes and 503 in codes, codes
        busy = next(body for s, body in statuses if s == 503)
        assert "busy" in busy["error"] and "try again in" in busy["error"]
        assert post_json(srv.url, "/api/ask", {"session_id": sids[0], "mode": "segment", "text": "red"})[0] == 200
    finally:
        srv.stop()


def test_sessions_expire_and_are_capped_and_say_so():
    srv = start(Limits(session_ttl_s=0.3, max_sessions=2))
    try:
        s = [post_json(srv.url, "/api/session", {"sample": 0})[1]["session_id"] for _ in range(3)]
        assert len(srv.app.sessions) == 2
        status, r = post_json(srv.url, "/api/ask", {"session_id": s[0], "mode": "segment", "text": "red"})
        assert status == 410 and r["error"] == ("this image's session was closed to make room for newer visitors "
                                                "(the server keeps 2 at once): load the image again")
        assert post_json(srv.url, "/api/ask", {"session_id": s[2], "mode": "segment", "text": "red"})[0] == 200
        time.sleep(0.4)
        status, r = post_json(srv.url, "/api/ask", {"session_id": s[2], "mode": "segment", "text": "red"})
        assert status == 410 and r["error"] == "this image's session expired after 0.3 s unused: load the image again"
        assert len(srv.app.sessions) == 0
        status, r = post_json(srv.url, "/api/reset", {"session_id": "never-issued"})
        assert status == 404 and r["error"].startswith("unknown session")
    finally:
        srv.stop()


def test_remembered_segment_and_describe_turns_join_the_conversation(server):
    sid = post_json(server.url, "/api/session", {"sample": 0})[1]["session_id"]
    post_json(server.url, "/api/ask", {"session_id": sid, "mode": "segment", "text": "the red square",
                                       "remember": True})
    r = post_json(server.url, "/api/ask", {"session_id": sid, "mode": "describe", "remember": True,
                                           "prompts": [{"type": "box", "box": [30, 30, 46, 42]}]})[1]
    assert r["text"] == "<vp_0>: blue."
    assert server.app.predictor.model.questions[-1] == ("Please describe <vp_0>.",
                                                        [("Please segment the red square.", "Sure, [SEG].")])
