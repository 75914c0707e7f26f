"""The web app (`python -m musegen.app`) on a smoke checkpoint, used as a person uses it: in headless
Chromium driven by Selenium (prompt, duration, reference upload, variations, a bad upload, Stop), and
as a program uses it, through gradio_client.

The browser is Debian's chromium with its chromedriver (`make system-deps` installs both), named
explicitly so that Selenium Manager never runs and nothing is downloaded. Without them the browser
tests are skipped and say so. MUSEGEN_APP_SCREENSHOT=docs/app.png saves the page after a generation.
"""
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="headless Chromium and chromedriver are not installed (`make system-deps` installs Debian's "
           "chromium and chromium-driver)")
#: a generation on the smoke model takes seconds; the first one also loads the text encoder
GENERATION_TIMEOUT = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(smoke_run, tmp_path_factory):
    """`python -m musegen.app` on the smoke checkpoint, as a user starts it, on a free port; its
    console log in `log`, its files in `out`."""
    folder = tmp_path_factory.mktemp("app")
    out, log = folder / "out", folder / "app.log"
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log.open("w") as console:
        proc = subprocess.Popen([sys.executable, "-m", "musegen.app", f"ckpt={smoke_run['ckpt']}", f"port={port}",
                                 "max_duration=600", f"out={out}"], cwd=ROOT, env=env, stdout=console,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the app did not start:\n{log.read_text()[-4000:]}")
            time.sleep(1)
    yield SimpleNamespace(url=url, log=log, out=out)
    proc.terminate()
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1500"):
        options.add_argument(arg)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SE_OFFLINE", "true")   # Selenium Manager, were it ever reached, must not go online
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def open_page(browser, url: str) -> WebDriverWait:
    browser.get(url)
    wait = WebDriverWait(browser, GENERATION_TIMEOUT)
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#prompt textarea"))
    return wait


def set_number(browser, elem_id: str, value: float) -> None:
    """Type into a slider's number box, as a person would (select all, type, Enter)."""
    box = browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.ENTER)


def generate(browser, prompt: str, duration: float, variations: int = 1, reference: Path | None = None) -> None:
    browser.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys(prompt)
    set_number(browser, "duration", duration)
    set_number(browser, "variations", variations)
    if reference is not None:
        upload(browser, reference)
    browser.find_element(By.ID, "generate").click()


def upload(browser, path: Path) -> None:
    """Choose `path` as the reference audio; returns once the server holds it (the page links to it).
    The file input can appear after the prompt box on a busy machine, so it is waited for too."""
    (chooser,) = WebDriverWait(browser, 60).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, "#reference input[type=file]"))
    chooser.send_keys(str(path))
    WebDriverWait(browser, 60).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, f"#reference a[data-testid=download-link][href$='/{path.name}']"))


def player_sources(browser, count: int) -> list[str]:
    """The audio sources of the first `count` variation players, once they all have one."""
    sources = [browser.find_elements(By.CSS_SELECTOR, f"#variation-{i} audio[src]") for i in range(count)]
    return [found[0].get_attribute("src") for found in sources] if all(sources) else []


def download_audio(url: str) -> tuple[np.ndarray, int]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return sf.read(io.BytesIO(response.read()), dtype="float32")


def toast(browser) -> str:
    """The text of the message the page shows (Gradio's toast), once it has one."""
    WebDriverWait(browser, GENERATION_TIMEOUT).until(
        lambda b: any(t.text for t in b.find_elements(By.CSS_SELECTOR, "[data-testid=toast-text]")))
    return " ".join(t.text for t in browser.find_elements(By.CSS_SELECTOR, "[data-testid=toast-text]"))


def save_screenshot(browser, path: Path) -> None:
    """The whole page as a PNG of 256 colours: a third of the size, small enough to keep in git."""
    from PIL import Image

    browser.set_window_size(1280, browser.execute_script("return document.body.scrollHeight") + 150)
    Image.open(io.BytesIO(browser.get_screenshot_as_png())).quantize(256).save(path, optimize=True)


def reference_wav(path: Path, seconds: float = 2.0, sr: int = 22050) -> Path:
    """A short melody: four sine notes."""
    t = np.arange(int(seconds * sr / 4)) / sr
    notes = [0.3 * np.sin(2 * np.pi * f * t) for f in (262, 330, 392, 523)]
    sf.write(path, np.concatenate(notes).astype(np.float32), sr)
    return path


@needs_browser
def test_a_prompt_gives_a_player_whose_wav_has_the_asked_duration(server, browser):
    wait = open_page(browser, server.url)
    generate(browser, "calm piano melody", duration=3)
    (source,) = wait.until(lambda b: player_sources(b, 1))
    y, sr = download_audio(source)
    assert len(y) == round(3 * sr) and np.abs(y).max() > 0
    downloads = [a.get_attribute("download") or a.text for a in browser.find_elements(By.CSS_SELECTOR, "#files a")]
    for suffix in (".wav", ".mp3", ".mid"):
        assert any(name.endswith(suffix) for name in downloads), downloads
    for plot in ("spectrogram", "piano-roll"):
        assert browser.find_elements(By.CSS_SELECTOR, f"#{plot} img"), f"no {plot} image"
    assert not any(e.is_displayed() for e in browser.find_elements(By.ID, "variation-1"))   # one variation asked
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text


@needs_browser
def test_an_uploaded_reference_is_continued_in_each_variation(server, browser, tmp_path):
    wait = open_page(browser, server.url)
    generate(browser, "fast violin tune", duration=2, variations=2, reference=reference_wav(tmp_path / "melody.wav"))
    sources = wait.until(lambda b: player_sources(b, 2))
    for source in sources:
        y, sr = download_audio(source)
        assert len(y) == round(2 * sr)
    assert not np.array_equal(*(download_audio(s)[0] for s in sources))
    sidecars = [json.loads(p.read_text()) for p in server.out.glob("fast-violin-tune-s*.json")]
    assert sorted(s["seed"] for s in sidecars) == [0, 1]
    assert all(Path(s["audio"]).name == "melody.wav" for s in sidecars)
    if os.environ.get("MUSEGEN_APP_SCREENSHOT"):
        save_screenshot(browser, ROOT / os.environ["MUSEGEN_APP_SCREENSHOT"])


@needs_browser
def test_an_unreadable_upload_is_a_message_in_the_page(server, browser, tmp_path):
    open_page(browser, server.url)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all " * 64)
    upload(browser, garbage)
    browser.find_element(By.ID, "generate").click()
    message = toast(browser)
    assert "garbage.wav" in message and "not readable as audio" in message, message
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text
    assert "Traceback" not in server.log.read_text()


@needs_browser
def test_stop_ends_a_long_generation_at_its_next_segment(server, browser):
    wait = open_page(browser, server.url)
    generate(browser, "slow cello", duration=600)
    wait.until(lambda b: "segments" in b.find_element(By.ID, "variation-0").text)   # the progress bar
    browser.find_element(By.ID, "stop").click()
    deadline = time.monotonic() + 30
    while "stopped after" not in server.log.read_text():
        assert time.monotonic() < deadline, f"not stopped:\n{server.log.read_text()[-2000:]}"
        time.sleep(0.5)
    assert not list(server.out.glob("slow-cello-*"))


def test_gradio_client_gets_a_wav_of_the_asked_duration_and_a_message_for_bad_inputs(server, tmp_path):
    client = Client(server.url, download_files=str(tmp_path / "downloads"), verbose=False)
    result = client.predict("calm piano melody", None, 2.0, 3.0, 1.0, 7, 1, api_name="/generate")
    wav = Path(result[0]["value"])
    assert wav.is_relative_to(tmp_path / "downloads") and wav.name == "calm-piano-melody-s7.wav"
    assert sf.info(str(wav)).frames == round(2.0 * sf.info(str(wav)).samplerate)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"\x00\x01" * 500)
    with pytest.raises(AppError, match="garbage.wav: not readable as audio"):
        client.predict("calm piano melody", handle_file(str(garbage)), 2.0, 3.0, 1.0, 0, 1, api_name="/generate")
    with pytest.raises(AppError, match="less than minimum value"):   # the page's own range check
        client.predict("calm piano melody", None, 0.0, 3.0, 1.0, 0, 1, api_name="/generate")


def test_a_bad_checkpoint_is_one_line_and_exit_status_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "musegen.app", f"ckpt={tmp_path / 'missing.ckpt'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().startswith("musegen.app: ") and "missing.ckpt" in out.stderr
    assert "Traceback" not in out.stderr
