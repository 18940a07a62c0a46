"""The web page in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

Skips only when the browser is missing AND `CI` is unset; under CI a missing browser fails (`.ci/run` installs it).
Each scenario saves a screenshot under the test's tmp dir.
"""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'affectclip[serve]')")

from serve_live import running_server  # noqa: E402
from serve_media import PHOTO, write_video, write_y4m  # noqa: E402

import affectclip  # noqa: E402
from affectclip.serve.app import create_app  # noqa: E402
from affectclip.serve.settings import ServeSettings  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.slow


def _need_browser() -> None:
    import importlib.util

    if CHROMIUM and CHROMEDRIVER and importlib.util.find_spec("selenium"):
        return
    message = ("headless Chromium + chromedriver (apt-get install -y chromium chromium-driver) and selenium (the dev "
               "extra) are needed")
    if os.environ.get("CI"):
        pytest.fail(f"{message}; .ci/run must install them under CI")
    pytest.skip(message)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _need_browser()
    uploads = tmp_path_factory.mktemp("uploads")
    app = create_app(affectclip.load(), ServeSettings(temp_dir=uploads))
    with running_server(app) as url:
        yield url
    assert list(uploads.iterdir()) == []


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    clip = write_y4m(tmp_path_factory.mktemp("camera") / "clip.y4m")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,1000",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-video-capture={clip}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _open(driver, url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "labels").get_attribute("value"))
    return WebDriverWait


def _errors(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "status").text


def test_image_upload_shows_happiness(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    wait = _open(browser, server)
    assert browser.find_element(By.ID, "labels").get_attribute("value").startswith("neutral, happiness")
    browser.find_element(By.ID, "file-input").send_keys(str(PHOTO))
    cell = wait(browser, 60).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#faces-table tr[data-face-id] td.top-label"), _errors(browser))
    assert [c.text for c in cell] == ["happiness"]
    score = browser.find_element(By.CSS_SELECTOR, "#faces-table tr[data-face-id='0'] td.top-score").text
    assert float(score) > 0.9
    canvas = browser.find_element(By.ID, "canvas")
    assert (canvas.get_attribute("width"), canvas.get_attribute("height")) == ("512", "512")
    browser.save_screenshot(str(tmp_path / "image.png"))


def test_video_upload_shows_a_timeline(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    wait = _open(browser, server)
    video = write_video(tmp_path / "clip.mp4", seconds=2.0, fps=10)
    browser.find_element(By.ID, "file-input").send_keys(str(video))
    timelines = wait(browser, 120).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#timelines .timeline[data-face-id]"), _errors(browser))
    assert len(timelines) == 1
    lines = timelines[0].find_elements(By.CSS_SELECTOR, "polyline")
    assert [line.get_attribute("data-label") for line in lines][:2] == ["neutral", "happiness"] and len(lines) == 8
    happy = next(line for line in lines if line.get_attribute("data-label") == "happiness")
    assert len(happy.get_attribute("points").split()) == 10  # 2 s at 5 fps
    top = browser.find_element(By.CSS_SELECTOR, "#faces-table tr[data-face-id='0'] td.top-label").text
    assert top == "happiness"
    browser.save_screenshot(str(tmp_path / "video.png"))


def test_webcam_mode_shows_live_scores(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    wait = _open(browser, server)
    browser.find_element(By.ID, "webcam-start").click()
    frames = lambda d: int(d.find_element(By.ID, "live-frames").get_attribute("textContent"))  # noqa: E731
    wait(browser, 60).until(lambda d: frames(d) >= 10, "no live frames scored")
    cells = browser.find_elements(By.CSS_SELECTOR, "#live-table tr[data-face-id] td.top-label")
    assert [c.text for c in cells] == ["happiness"]
    fps = float(browser.find_element(By.ID, "live-fps").text)
    assert fps > 0
    browser.save_screenshot(str(tmp_path / "webcam.png"))
    browser.find_element(By.ID, "webcam-stop").click()


def test_token_server_page_works_after_opening_the_token_link(browser, tmp_path):
    """With a token, the page opened once as /?token=T carries it (HttpOnly cookie) on fetches and the WebSocket."""
    from selenium.webdriver.common.by import By

    token = "browser-test-token"
    app = create_app(affectclip.load(), ServeSettings(temp_dir=tmp_path, token=token, loopback_only=False))
    with running_server(app) as url:
        browser.get(f"{url}/api/v1/health")
        assert "missing token" in browser.page_source
        wait = _open(browser, f"{url}/?token={token}")
        browser.find_element(By.ID, "file-input").send_keys(str(PHOTO))
        cells = wait(browser, 60).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#faces-table tr[data-face-id] td.top-label"), "no result")
        assert [c.text for c in cells] == ["happiness"]
        browser.find_element(By.ID, "webcam-start").click()
        frames = lambda d: int(d.find_element(By.ID, "live-frames").get_attribute("textContent"))  # noqa: E731
        wait(browser, 60).until(lambda d: frames(d) >= 3, "no live frames scored with the token cookie")
        browser.find_element(By.ID, "webcam-stop").click()
        browser.save_screenshot(str(tmp_path / "token.png"))
