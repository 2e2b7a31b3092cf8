"""report.html in a real browser: headless Chromium, driven through its DevTools protocol over a pipe
(`--remote-debugging-pipe`: JSON messages on file descriptors 3 and 4, no port, no websocket library).

The run is real: a clip made from insightface's shipped photo, `emoengine run --weights random` with MTCNN on
ONNX Runtime. Chromium plays the H.264 files `run` writes (checked: a decoded frame is on screen)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (CI installs Debian's: "
                                                         "apt-get install -y chromium)")]
FPS = 12          # 24 frames: a two-second clip, long enough to watch every video start playing
FRAMES = 24
# what this machine's closed network and a root user need (see the report's merge notes)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--allow-file-access-from-files", "--autoplay-policy=no-user-gesture-required",
                  "--hide-scrollbars", "--mute-audio")


class Chromium:
    """Headless Chromium and one page, spoken to over the DevTools pipe (fd 3 in, fd 4 out, NUL-separated)."""

    def __init__(self, width: int = 1280, height: int = 1400) -> None:
        self.profile = tempfile.mkdtemp(prefix="emoengine-chromium-")
        child_in, self._out = os.pipe()
        self._in, child_out = os.pipe()

        def on_fds_3_and_4() -> None:   # in the child: dup (clears close-on-exec), then onto 3 and 4
            a, b = os.dup(child_in), os.dup(child_out)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                                      "--remote-debugging-pipe", "about:blank"], preexec_fn=on_fds_3_and_4,
                                     close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(child_in)
        os.close(child_out)
        self._buf, self._id, self.events = b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime"):
            self.call(f"{domain}.enable", page=True)
        self.call("Emulation.setDeviceMetricsOverride", page=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def _message(self, timeout: float) -> dict:
        while b"\0" not in self._buf:
            if not select.select([self._in], [], [], timeout)[0]:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (status {self.proc.poll()})")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, page: bool = False, timeout: float = 60, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": self.session} if page else {})}
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._message(timeout)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]
            self.events.append(m)

    def js(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        r = self.call("Runtime.evaluate", page=True, expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := self.js(expression):
                return value
            time.sleep(0.05)
        raise AssertionError(f"never true: {expression} (now {self.js(expression)!r})")

    def open(self, url: str) -> None:
        self.call("Page.navigate", page=True, url=url)
        self.wait_for("document.readyState === 'complete'")

    def click(self, x: float, y: float, to_x: float | None = None) -> None:
        """A real mouse click at (x, y) in CSS pixels; with `to_x`, a drag from x to to_x."""
        mouse = {"x": x, "y": y, "button": "left", "clickCount": 1}
        self.call("Input.dispatchMouseEvent", page=True, type="mousePressed", buttons=1, **mouse)
        if to_x is not None:
            mouse["x"] = to_x
            self.call("Input.dispatchMouseEvent", page=True, type="mouseMoved", buttons=1, **mouse)
        self.call("Input.dispatchMouseEvent", page=True, type="mouseReleased", buttons=0, **mouse)

    def key(self, key: str, code: str, keycode: int) -> None:
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", page=True, type=kind, key=key, code=code,
                      windowsVirtualKeyCode=keycode, **({"text": key} if key == " " and kind == "keyDown" else {}))

    def screenshot(self) -> np.ndarray:
        import cv2

        png = base64.b64decode(self.call("Page.captureScreenshot", page=True, format="png")["data"])
        return cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def exceptions(self) -> list[str]:
        return [json.dumps(e["params"])[:300] for e in self.events if e.get("method") == "Runtime.exceptionThrown"]

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._in, self._out):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory, cli) -> Path:
    """A real `emoengine run` (random weights, MTCNN, ort) on a 24-frame 320×240 clip of one moving face."""
    from emoengine.engine.run.demo import single_face_frames, write_clip

    root = tmp_path_factory.mktemp("report_run")
    clip = write_clip(root / "one face.mp4", single_face_frames(FRAMES, size=(320, 240), face_px=(90, 140)), fps=FPS)
    r = cli("run", str(clip), "--weights", "random", "--detector", "mtcnn", "--backend", "ort", "--out",
            str(root / "out"), "-q", cwd=root, timeout=900)
    assert r.returncode == 0, r.stderr
    return root / "out"


@pytest.fixture(scope="module")
def browser(clip_run):
    b = Chromium()
    try:
        b.open((clip_run / "report.html").as_uri())
        b.wait_for("[...document.querySelectorAll('video')].every(v => v.readyState >= 2)")
        yield b
    finally:
        b.close()


def videos(b: Chromium) -> list[dict]:
    return b.js("[...document.querySelectorAll('video.synced')].map(v => ({src: v.getAttribute('src'), "
                "t: v.currentTime, paused: v.paused, seeking: v.seeking, ready: v.readyState}))")


def rect(b: Chromium, selector: str) -> dict:
    return b.js(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect(); "
                "return {x: r.x, y: r.y, w: r.width, h: r.height}; })()")


def click_on(b: Chromium, selector: str) -> None:
    """A real click in the middle of an element, scrolled into view first."""
    b.js(f"document.querySelector({json.dumps(selector)}).scrollIntoView({{block: 'center'}})")
    r = rect(b, selector)
    b.click(r["x"] + r["w"] / 2, r["y"] + r["h"] / 2)


def test_run_writes_the_report_and_emoengine_report_rebuilds_the_same_page(clip_run, cli):
    summary = json.loads((clip_run / "summary.json").read_text())
    assert "report.html" in summary["files"] and summary["weights"] == "random"
    first = (clip_run / "report.html").read_bytes()
    r = cli("report", str(clip_run), cwd=clip_run.parent)
    assert r.returncode == 0, r.stderr
    assert (clip_run / "report.html").read_bytes() == first   # one code path: commit and `emoengine report`


def test_resume_of_a_run_without_a_report_writes_one_and_runs_nothing(clip_run, cli):
    page, original = (clip_run / "report.html").read_bytes(), (clip_run / "summary.json").read_bytes()
    summary = json.loads(original)
    summary["files"].remove("report.html")   # as a run made before reports existed: no report, none listed
    (clip_run / "summary.json").write_text(json.dumps(summary))
    (clip_run / "report.html").unlink()
    try:
        r = cli("run", str(clip_run.parent / "one face.mp4"), "--weights", "random", "--detector", "mtcnn",
                "--backend", "ort", "--out", str(clip_run), "--resume", cwd=clip_run.parent)
        assert r.returncode == 0 and "skipped" in r.stderr, r.stderr
        assert (clip_run / "report.html").read_bytes() == page
    finally:
        (clip_run / "summary.json").write_bytes(original)


def test_the_page_is_not_blank_and_every_video_shows_a_decoded_frame(browser):
    shot = browser.screenshot()
    assert shot.std() > 30 and len(np.unique(shot.reshape(-1, 3)[::7], axis=0)) > 200
    for k in range(3):   # each video's box on screen holds a picture (Chromium decoded our H.264), not black
        r = rect(browser, f".tile:nth-child({k + 1}) video")
        box = shot[int(r["y"]):int(r["y"] + r["h"]), int(r["x"]):int(r["x"] + r["w"])]
        assert box.size and box.mean() > 20 and box.std() > 10, k
    assert not browser.exceptions()


def test_every_src_and_href_resolves_to_a_file_of_the_run(browser, clip_run):
    urls = browser.js("[...document.querySelectorAll('[src],[href]')].map(e => e.src || e.href)")
    assert len(urls) >= 8
    for url in urls:
        parsed = urlparse(url)
        assert parsed.scheme == "file", url
        path = Path(unquote(parsed.path))
        assert path.is_file() and path.parent == clip_run, url


def test_the_videos_and_the_timeline_are_in_the_dom(browser):
    assert [v["src"] for v in videos(browser)] == ["annotated.mp4", "conv1.mp4", "emo_conv1.mp4"]
    lanes = browser.js("[...document.querySelectorAll('#timeline canvas.lane')].map(c => [c.width, c.height])")
    assert len(lanes) >= 1 and all(w > 500 and h > 50 for w, h in lanes)
    drawn = browser.js("(() => { const c = document.querySelector('canvas.lane'); const d = c.getContext('2d')"
                       ".getImageData(0, 0, c.width, c.height).data; const s = new Set(); "
                       "for (let i = 0; i < d.length; i += 4) s.add(d[i] << 16 | d[i + 1] << 8 | d[i + 2]); "
                       "return s.size; })()")
    assert drawn > 8   # the expression lines are drawn, in their colours
    assert browser.js("document.querySelectorAll('#faces tbody tr').length") >= 1
    assert browser.js("document.querySelectorAll('#means img').length") == 2


def seek_by_timeline(b: Chromium, fraction: float, drag_from: float | None = None) -> float:
    """Click (or drag to) `fraction` of the first timeline lane's width; the time that x stands for."""
    b.js("document.querySelector('canvas.lane').scrollIntoView({block: 'center'})")
    lane = rect(b, "canvas.lane")
    x = lane["x"] + fraction * lane["w"]
    duration = b.js("JSON.parse(document.getElementById('report-data').textContent).duration")
    if drag_from is None:
        b.click(x, lane["y"] + lane["h"] / 2)
    else:
        b.click(lane["x"] + drag_from * lane["w"], lane["y"] + lane["h"] / 2, to_x=x)
    return (x - lane["x"]) / lane["w"] * duration


def settled_on(b: Chromium, t: float, tol: float) -> None:
    """Every video comes to rest on time `t` (no seek under way), and stays there."""
    on_t = ("[...document.querySelectorAll('video.synced')].every(v => !v.seeking && "
            f"Math.abs(v.currentTime - {t}) <= {tol})")
    b.wait_for(on_t)
    time.sleep(0.3)   # a seek queued behind the last one would have started by now
    assert b.js(on_t), (t, videos(b))


def test_clicking_or_dragging_on_the_timeline_seeks_every_video(browser):
    for fraction, drag_from in ((0.5, None), (0.25, None), (0.8, 0.1)):
        t = seek_by_timeline(browser, fraction, drag_from)
        settled_on(browser, t, 0.01)
        head = rect(browser, "#playhead")
        lane = rect(browser, "canvas.lane")
        assert head["x"] + head["w"] / 2 == pytest.approx(lane["x"] + fraction * lane["w"], abs=2)


def test_play_starts_every_video_and_space_pauses_them_on_one_frame(browser):
    settled_on(browser, seek_by_timeline(browser, 0.0), 1e-3)
    # quarter speed, so the two-second clip cannot end between the checks below on a busy machine
    browser.js("window.started = []; document.querySelectorAll('video.synced').forEach((v, i) => { "
               "v.playbackRate = 0.25; v.addEventListener('timeupdate', () => { "
               "if (!v.paused && v.currentTime > 0.1) window.started[i] = true; }); })")
    click_on(browser, "#play")
    browser.wait_for("[0, 1, 2].every(i => window.started[i])", timeout=30)
    assert not any(v["paused"] for v in videos(browser))
    assert browser.js("document.getElementById('play').textContent").startswith("❚❚")
    browser.key(" ", "Space", 32)   # the play button has the focus: space must not also click it
    browser.wait_for("[...document.querySelectorAll('video.synced')].every(v => v.paused)")
    t = videos(browser)[0]["t"]
    assert t > 0.1
    settled_on(browser, t, 1e-3)   # the others land on the annotated video's frame
    browser.js("document.querySelectorAll('video.synced').forEach(v => { v.playbackRate = 1; })")


def test_arrow_keys_step_one_frame_even_when_pressed_in_a_burst(browser):
    t = seek_by_timeline(browser, 0.5)
    settled_on(browser, t, 0.01)
    frame = round(t * FPS)
    for key in "RRLRRRRLL":   # faster than the videos seek: +3 frames in all
        browser.key(*(("ArrowRight", "ArrowRight", 39) if key == "R" else ("ArrowLeft", "ArrowLeft", 37)))
    settled_on(browser, (frame + 3) / FPS, 1e-5)
    assert f"frame {frame + 3}" in browser.js("document.getElementById('clock').textContent")


def test_a_video_can_be_enlarged(browser):
    before = rect(browser, ".tile:nth-child(2)")["w"]
    click_on(browser, ".tile:nth-child(2) .enlarge")
    assert rect(browser, ".tile:nth-child(2)")["w"] > 2 * before
    click_on(browser, ".tile:nth-child(2) .enlarge")
    assert rect(browser, ".tile:nth-child(2)")["w"] == pytest.approx(before, abs=1)
