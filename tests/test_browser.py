"""End to end in real headless Chromium (Debian packages chromium + chromium-driver; python package selenium)."""
import json
import os
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from fake_pixelsail import FakePixelSail, scene
from pixelsail.predictor import Predictor, shipped_model_dir
from pixelsail.web import DemoApp, DemoServer, Limits

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                       reason="Debian chromium + chromium-driver not installed "
                              "(apt-get install -y chromium chromium-driver)"),
]

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

# pixel colours of the page's result <img>, read back through a canvas
READ_PIXEL = """
const img = document.getElementById('overlay');
const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext('2d'); g.drawImage(img, 0, 0);
return Array.from(g.getImageData(arguments[0], arguments[1], 1, 1).data.slice(0, 3));
"""
VIEWPORT = (1200, 900)  # a laptop screen: the whole flow must fit it without scrolling
BOX = ("const r = document.getElementById(arguments[0]).getBoundingClientRect(); "
       "return [r.left, r.top, r.right, r.bottom];")


@pytest.fixture()
def browser():
    profile = tempfile.mkdtemp(prefix="pixelsail-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", "--hide-scrollbars"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    # the window size includes the browser's frame; this sets the page's own viewport exactly
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": VIEWPORT[0], "height": VIEWPORT[1],
                                                                  "deviceScaleFactor": 1, "mobile": False})
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def serve(predictor, samples, limits=None):
    return DemoServer(DemoApp(predictor, samples=samples, limits=limits), port=0).start()


def screenshot(driver, tmp_path, name):
    """Saved for a person to look at (PIXELSAIL_SCREENSHOTS=DIR keeps them; default: the test's tmp dir)."""
    folder = Path(os.environ.get("PIXELSAIL_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    assert driver.save_screenshot(str(path)), path
    return path


def assert_in_viewport(driver, element_id):
    x0, y0, x1, y1 = driver.execute_script(BOX, element_id)
    assert x1 > x0 and y1 > y0, f"#{element_id} is not shown: {(x0, y0, x1, y1)}"
    assert 0 <= x0 and x1 <= VIEWPORT[0] and 0 <= y0 and y1 <= VIEWPORT[1], \
        f"#{element_id} at {(x0, y0, x1, y1)} is outside the {VIEWPORT[0]}x{VIEWPORT[1]} viewport"


def wait(driver, seconds=60):
    return WebDriverWait(driver, seconds)


def pick_sample_and_ask(driver, url, index, mode, text):
    driver.get(url)
    wait(driver).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    driver.find_elements(By.CSS_SELECTOR, "#samples button")[index].click()
    wait(driver).until(lambda d: d.find_element(By.ID, "submit").is_enabled())
    Select(driver.find_element(By.ID, "mode")).select_by_value(mode)
    box = driver.find_element(By.ID, "text")
    box.clear()
    box.send_keys(text)


def submit_and_wait(driver):
    before = driver.find_element(By.ID, "answer").text
    driver.find_element(By.ID, "submit").click()
    wait(driver).until(lambda d: d.find_element(By.ID, "status").text.startswith("Answered")
                       or "error" in d.find_element(By.ID, "status").get_attribute("class"))
    wait(driver).until(EC.visibility_of_element_located((By.ID, "overlay")))
    wait(driver).until(lambda d: d.execute_script("return document.getElementById('overlay').complete"))
    return before


def test_referring_expression_shows_a_mask(browser):
    srv = serve(Predictor(model=FakePixelSail()), [("scene", scene())])
    try:
        pick_sample_and_ask(browser, srv.url, 0, "segment", "the red square")
        submit_and_wait(browser)
        assert browser.find_element(By.ID, "answer").text == "Sure, [SEG]."
        masks = browser.find_elements(By.CSS_SELECTOR, "#masks li.mask")
        assert len(masks) == 1 and int(masks[0].get_attribute("data-area")) == 256
        # the overlay picture is tinted inside the red square's mask and untouched far from it
        assert browser.execute_script(READ_PIXEL, 12, 12) != list(scene()[12, 12])
        assert browser.execute_script(READ_PIXEL, 60, 2) == list(scene()[2, 60])
    finally:
        srv.stop()


def test_clicked_point_becomes_vp0(browser):
    srv = serve(Predictor(model=FakePixelSail()), [("scene", scene())])
    try:
        pick_sample_and_ask(browser, srv.url, 0, "ask", "What colour is <vp_0>?")
        canvas = browser.find_element(By.ID, "canvas")
        rect = browser.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];",
                                      canvas)
        # click the blue square's centre (x=38, y=36 of the 64x48 image), offsets are from the element's centre
        dx, dy = (38 / 64 - 0.5) * rect[0], (36 / 48 - 0.5) * rect[1]
        webdriver.ActionChains(browser).move_to_element_with_offset(canvas, int(dx), int(dy)).click().perform()
        assert "vp_0" in browser.find_element(By.ID, "prompt-list").text
        submit_and_wait(browser)
        assert browser.find_element(By.ID, "answer").text == "<vp_0>: blue."
    finally:
        srv.stop()


@pytest.mark.skipif(not (shipped_model_dir() / "config.json").is_file(), reason="the shipped shapes model is absent")
def test_shipped_model_segments_a_shapes_scene(browser):
    """The page shows exactly the mask the shipped model computes through the API (mask quality is evaluate's job;
    the shipped model is weak, so the scene is the first whose largest object gets a non-empty mask)."""
    from pixelsail.data.shapes import attribute_referrals, generate_scene

    predictor = Predictor()
    for index in range(8):
        scene_ = generate_scene("test", index)
        target = max(scene_.visible_objects, key=lambda o: o.area)
        expression = next((r.expression for r in attribute_referrals(scene_) if r.targets == [target]), None)
        if expression is None:
            continue
        expected = predictor.segment(scene_.image, expression)
        if expected.masks and expected.masks[0].any():
            break
    else:
        pytest.fail("the shipped model gave no non-empty mask for the largest object of 8 test scenes")
    srv = serve(predictor, [("shapes", scene_.image)])
    try:
        pick_sample_and_ask(browser, srv.url, 0, "segment", expression)
        submit_and_wait(browser)
        masks = browser.find_elements(By.CSS_SELECTOR, "#masks li.mask")
        assert masks, browser.find_element(By.ID, "answer").text
        assert int(masks[0].get_attribute("data-area")) == int(expected.masks[0].sum())
    finally:
        srv.stop()


def test_the_whole_flow_fits_a_laptop_screen(browser, tmp_path):
    """Sample strip, image, prompt box, Ask button and answer all inside 1200x900 with the page never scrolled."""
    from pixelsail.commands.use import sample_scenes

    srv = serve(Predictor(model=FakePixelSail()), sample_scenes(8))
    try:
        browser.get(srv.url)
        wait(browser).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
        screenshot(browser, tmp_path, "1-start")
        for element in ("samples", "canvas", "text", "submit", "answer"):
            assert_in_viewport(browser, element)
        pick_sample_and_ask(browser, srv.url, 0, "segment", "the blue circle")
        submit_and_wait(browser)
        screenshot(browser, tmp_path, "2-answered")
        assert browser.execute_script("return window.scrollY") == 0
        assert browser.find_element(By.ID, "answer").text == "Sure, [SEG]."
        for element in ("canvas", "text", "submit", "answer", "overlay"):
            assert_in_viewport(browser, element)
    finally:
        srv.stop()


def test_sample_tiles_show_before_their_thumbnails_arrive(browser, tmp_path):
    srv = serve(Predictor(model=FakePixelSail()), [("scene", scene()), ("again", scene())])
    slow_png = srv.app.sample_png

    def delayed(index):  # thumbnails that take a while, as on a slow connection
        time.sleep(1.5)
        return slow_png(index)

    srv.app.sample_png = delayed
    try:
        browser.get(srv.url)
        wait(browser).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
        tiles = browser.find_elements(By.CSS_SELECTOR, "#samples button")
        screenshot(browser, tmp_path, "3-thumbnails-pending")
        assert [t.text for t in tiles] == ["1", "2"]  # numbered placeholders while the images load
        assert all(t.size["width"] >= 50 and t.size["height"] >= 50 for t in tiles)
        wait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#samples button img")) == 2)
        assert all(t.text == "" for t in browser.find_elements(By.CSS_SELECTOR, "#samples button"))
    finally:
        srv.stop()


def test_a_session_closed_for_newer_visitors_says_so_on_the_page(browser, tmp_path):
    srv = serve(Predictor(model=FakePixelSail()), [("scene", scene())], Limits(max_sessions=1))
    try:
        pick_sample_and_ask(browser, srv.url, 0, "segment", "the red square")
        request = urllib.request.Request(srv.url + "/api/session", data=json.dumps({"sample": 0}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as res:  # another visitor takes the only place
            assert res.status == 200
        browser.find_element(By.ID, "submit").click()
        wait(browser).until(lambda d: "error" in d.find_element(By.ID, "status").get_attribute("class"))
        screenshot(browser, tmp_path, "4-session-closed")
        assert browser.find_element(By.ID, "status").text.startswith(
            "this image's session was closed to make room for newer visitors")
        assert not browser.find_element(By.ID, "submit").is_enabled()
    finally:
        srv.stop()
