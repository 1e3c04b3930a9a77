"""
The app (app/app.py: §3.2's caption-then-steer loop in a browser) served by its own process on
conftest's tiny checkpoints: its /generate endpoint through gradio_client (the audio is sample.py's
own, bad input gets one message and the app goes on, two calls at once both return), the page in
headless Chromium (an example clip, a caption, the caption as the prompt, a bad upload), and the
run's temporary folder gone when it stops. Skips without gradio (make test installs
app/requirements.txt) and, for the page, without Chromium.
"""
import base64
import json
import re
import signal
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import psutil
import pytest

import sample
from browser import Chromium, find_chromium
from test_sample_videos import _audio_only, make_video

gradio_client = pytest.importorskip("gradio_client",
                                    reason="the app's requirements: pip install -r app/requirements.txt")

ROOT = Path(__file__).resolve().parents[1]
LONG_PROMPT = ("the sound of a bright and high bell ringing three times " * 40)[:2000]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(world, tmp_path_factory):
    """`python app/app.py` on the tiny checkpoints, its example clips the world's test clips."""
    log_path = tmp_path_factory.mktemp("app") / "app.log"
    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "app/app.py", f"--ckpt_dir={world}/out", f"--port={port}",
                                 f"--examples={world}/v2a_instruction.json"], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while "Running on local URL" not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the app did not start:\n{log_path.read_text()}")
        time.sleep(0.5)
    run_dir = Path(re.search(r"this run's files \(requests and uploads\): (\S+),", log_path.read_text())[1])
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", port=port, proc=proc, run_dir=run_dir, log=log_path)
    if proc.poll() is None:  # a test failed before the stop's: stop it as that test does, so it cleans up
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def client(app):
    return gradio_client.Client(app.url, verbose=False)


def clip(world, i=0):
    return world / "clips" / f"test_{i:05d}.mp4"


def seconds_of(wav_path):
    with wave.open(str(wav_path)) as w:
        return w.getnframes() / w.getframerate()


def generate(client, video, prompt="", negative_prompt="", steps=16, guidance_scale=2.0, seed=0):
    file = None if video is None else gradio_client.handle_file(str(video))
    return client.predict(file, prompt, negative_prompt, steps, guidance_scale, seed, api_name="/generate")


def test_help_and_a_missing_gradio_are_one_answer_each():
    """--help prints the docstring (the commands, the API call) and the options; without Gradio
    installed the app says how to install it, in one line."""
    usage = subprocess.run([sys.executable, "app/app.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert usage.returncode == 0 and 'api_name="/generate"' in usage.stdout and "host: str" in usage.stdout
    without = subprocess.run([sys.executable, "-c", "import runpy, sys; sys.modules['gradio'] = None; "
                              "runpy.run_path('app/app.py', run_name='__main__')"], cwd=ROOT, capture_output=True,
                             text=True)
    assert without.returncode == 1 and without.stderr == (
        "error: the app needs Gradio: pip install -r app/requirements.txt -c constraints.txt (make app does it)\n")


def test_3_2_listens_on_localhost_only(app):
    listening = {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == app.port}
    assert listening == {"127.0.0.1"}


def test_3_2_generate_endpoint_is_sample_py(app, client, world, tmp_path):
    """/generate takes (video, prompt, negative_prompt, steps, guidance_scale, seed) and returns
    (caption, wav, video): with no prompt a caption, and the very audio sample.py writes for the
    same clip and settings."""
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert sorted(api) == ["/edit", "/generate"]
    assert [p["parameter_name"] for p in api["/generate"]["parameters"]] == [
        "video", "prompt", "negative_prompt", "steps", "guidance_scale", "seed"]
    assert len(api["/generate"]["returns"]) == 3
    caption, wav, video = generate(client, clip(world))
    meta = json.loads((world / "features" / "meta.json").read_text())
    assert isinstance(caption, str) and caption.strip()
    assert Path(wav).name == "test_00000.vatt.wav" and seconds_of(wav) == pytest.approx(meta["seconds"], abs=1e-3)
    with av.open(video) as c:
        assert c.streams.video and c.streams.audio
    assert sample.main([f"--ckpt_dir={world}/out", f"--video={clip(world)}", f"--out_dir={tmp_path}"]) == 0
    assert Path(wav).read_bytes() == (tmp_path / "test_00000.vatt.wav").read_bytes()
    assert caption == json.loads((tmp_path / "test_00000.vatt.json").read_text())["caption"]
    # with a prompt: no caption, and sample.py's audio for that prompt
    caption, wav, _ = generate(client, clip(world), prompt="a low bell rings three times")
    assert caption == ""
    assert sample.main([f"--ckpt_dir={world}/out", f"--video={clip(world)}", f"--out_dir={tmp_path}",
                        "--prompt=a low bell rings three times"]) == 0
    assert Path(wav).read_bytes() == (tmp_path / "test_00000.vatt.wav").read_bytes()


def edit(client, video, start, end, prompt="", negative_prompt="", steps=16, guidance_scale=2.0, seed=0):
    file = None if video is None else gradio_client.handle_file(str(video))
    return client.predict(file, start, end, prompt, negative_prompt, steps, guidance_scale, seed, api_name="/edit")


def test_edit_endpoint_is_sample_py_edit(app, client, world, tmp_path):
    """/edit takes (video, start, end, prompt, negative_prompt, steps, guidance_scale, seed) and
    returns (wav, video): the very edit sample.py --edit writes; a range outside the sound, or a
    video without sound, gets one message and the app goes on."""
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert [p["parameter_name"] for p in api["/edit"]["parameters"]] == [
        "video", "start", "end", "prompt", "negative_prompt", "steps", "guidance_scale", "seed"]
    assert len(api["/edit"]["returns"]) == 2
    wav, video = edit(client, clip(world), 0.5, 0.9, "a low bell rings three times")
    with av.open(video) as c:
        assert c.streams.video and c.streams.audio
    assert sample.main([f"--ckpt_dir={world}/out", f"--video={clip(world)}", f"--out_dir={tmp_path}", "--edit=0.5:0.9",
                        "--prompt=a low bell rings three times"]) == 0
    assert Path(wav).read_bytes() == (tmp_path / "test_00000.vatt.wav").read_bytes()
    for video, start, end, message in ((clip(world), 1.5, 4.0, "test_00000.mp4: the range 1.5:4 s lies outside its sound"),
                                       (clip(world), 0.9, 0.5, "test_00000.mp4: the range '0.9:0.5': START must come"),
                                       (make_video(tmp_path / "silent.mp4", seconds=1.0), 0.1, 0.5,
                                        "silent.mp4: no audio track")):
        with pytest.raises(gradio_client.exceptions.AppError) as e:
            edit(client, video, start, end, "a bell")
        assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert app.proc.poll() is None


BAD_REQUESTS = {  # name: (how to make the upload, the request's other inputs, the message's start)
    "not_a_video": (lambda p: p.with_suffix(".txt").write_text("not a video\n"), {}, "notes.txt: not a readable video"),
    "empty_file": (lambda p: p.with_suffix(".mp4").write_bytes(b""), {}, "notes.mp4: not a readable video"),
    "no_frames": (lambda p: _audio_only(p.with_suffix(".m4a")), {}, "notes.m4a: no video stream"),
    "no_upload": (None, {}, "No video: upload one"),
    "2000_char_prompt": ("clip", {"prompt": LONG_PROMPT},
                         "The prompt 'the sound of a bright and high bell ring'... is longer"),
    "no_decoding_steps": ("clip", {"steps": 0}, "Value 0 is less than minimum value 1"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_gets_one_message_and_the_app_goes_on(app, client, world, tmp_path, case):
    make, inputs, message = BAD_REQUESTS[case]
    if make == "clip":
        video = clip(world)
    elif make is None:
        video = None
    else:
        make(tmp_path / "notes")
        video = next(tmp_path.glob("notes.*"))
    with pytest.raises(gradio_client.exceptions.AppError) as e:
        generate(client, video, **inputs)
    assert str(e.value).startswith(message) and "\n" not in str(e.value) and "Traceback" not in str(e.value)
    caption, wav, _ = generate(client, clip(world, 1))  # the next good call is answered
    assert caption and Path(wav).is_file()
    assert app.proc.poll() is None


def test_two_calls_at_once_both_return(client, world):
    jobs = [client.submit(gradio_client.handle_file(str(clip(world, i))), "", "", 16, 2.0, 0, api_name="/generate")
            for i in (0, 1)]
    results = [job.result(timeout=120) for job in jobs]
    assert [Path(r[1]).name for r in results] == ["test_00000.vatt.wav", "test_00001.vatt.wav"]


# -----------------------------------------------------------------------------
# the page in a real browser


def wait_for(browser, session, expression, timeout=60.0):
    """Polls a JavaScript expression until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = browser.evaluate(session, expression)
        if value or time.monotonic() > deadline:
            assert value, f"timed out waiting for {expression}"
            return value
        time.sleep(0.2)


# the wav the audio player holds, fetched and decoded by the browser: (its type, seconds)
AUDIO_HELD = """(async () => {
  const link = document.querySelector('#audio a[download]');
  const reply = await fetch(link.href);
  const sound = await new OfflineAudioContext(1, 1, 16000).decodeAudioData(await reply.arrayBuffer());
  return [link.getAttribute('download'), reply.headers.get('content-type'), sound.duration];
})()"""


def test_3_2_page_in_chromium(app, world, tmp_path):
    """Pick an example clip, generate without a prompt (a caption appears, the audio player holds a
    wav as long as the clip), put the caption into the prompt, edit it, generate again (new audio),
    then upload files that are not videos: their messages show on the page."""
    binary = find_chromium()
    if binary is None:
        pytest.skip("no chromium on PATH: install Debian's chromium package (make test does so when run as root)")
    (tmp_path / "profile").mkdir()
    browser = Chromium(binary, tmp_path / "profile")
    try:
        page = browser.open_page(app.url, height=1400)
        wait_for(browser, page, "!!document.querySelector('.gallery-item')")
        browser.evaluate(page, "document.querySelector('.gallery-item').click()")
        wait_for(browser, page, "!!document.querySelector('#video video')")
        browser.evaluate(page, "document.querySelector('#generate').click()")
        caption = wait_for(browser, page, "document.querySelector('#caption textarea').value")
        wait_for(browser, page,
                 "!!document.querySelector('#audio a[download]') && !!document.querySelector('#grid img')")
        name, kind, seconds = browser.evaluate(page, AUDIO_HELD)
        meta = json.loads((world / "features" / "meta.json").read_text())
        assert name == "test_00000.vatt.wav" and kind == "audio/wav"
        assert seconds == pytest.approx(meta["seconds"], abs=1e-3)
        first = browser.evaluate(page, "document.querySelector('#audio a[download]').href")
        # the paper's loop: the suggested caption into the prompt, generate again
        browser.evaluate(page, "document.querySelector('#use-caption').click()")
        assert wait_for(browser, page, "document.querySelector('#prompt textarea').value") == caption
        # edited, as a user would (the tiny model's captions are longer than a prompt may be)
        browser.evaluate(page, """(() => { const box = document.querySelector('#prompt textarea');
          box.value = 'a low bell rings three times'; box.dispatchEvent(new Event('input', {bubbles: true})); })()""")
        browser.evaluate(page, "document.querySelector('#generate').click()")
        wait_for(browser, page, f"document.querySelector('#audio a[download]').href !== {json.dumps(first)}")
        assert browser.evaluate(page, "document.querySelector('#caption textarea').value") == ""
        # an edit of a range of the clip's own sound: the edited audio, and the picture before / after
        for selector, value in (("#edit-start input", "0.5"), ("#edit-end input", "0.9"),
                                ("#edit-prompt textarea", "a high bell rings three times")):
            browser.evaluate(page, f"""(() => {{ const box = document.querySelector({json.dumps(selector)});
              box.value = {json.dumps(value)}; box.dispatchEvent(new Event('input', {{bubbles: true}})); }})()""")
        browser.evaluate(page, "document.querySelector('#edit').click()")
        wait_for(browser, page, "!!document.querySelector('#edited-audio a[download]') && "
                                "!!document.querySelector('#edit-picture img')")
        assert browser.evaluate(page, "document.querySelector('#edited-audio a[download]').getAttribute('download')"
                                ) == "test_00000.vatt.wav"
        shot = browser.send("Page.captureScreenshot", page, format="png")
        (tmp_path / "app.png").write_bytes(base64.b64decode(shot["data"]))
        # bad uploads: a text file (refused by the page itself), then random bytes named .mp4 (by the app)
        browser.evaluate(page, "document.querySelector('#video button[aria-label=Clear]').click()")
        toasts = "[...document.querySelectorAll('.toast-body')].map(t => t.innerText).join()"
        for name, data, message in [("notes.txt", b"not a video", "Invalid file type: notes.txt"),
                                    ("broken.mp4", np.random.default_rng(0).bytes(5000),
                                     "broken.mp4: not a readable video")]:
            wait_for(browser, page, "!!document.querySelector('#video input[type=file]')")
            (tmp_path / name).write_bytes(data)
            root = browser.send("DOM.getDocument", page)["root"]["nodeId"]
            node = browser.send("DOM.querySelector", page, nodeId=root, selector="#video input[type=file]")["nodeId"]
            browser.send("DOM.setFileInputFiles", page, nodeId=node, files=[str(tmp_path / name)])
            if name.endswith(".mp4"):
                wait_for(browser, page, "!!document.querySelector('#video video')")
                browser.evaluate(page, "document.querySelector('#generate').click()")
            wait_for(browser, page, f"{toasts}.includes({json.dumps(message)})")
    finally:
        browser.close()


def test_stopping_removes_the_run_folder(app):
    """Every request wrote into its own folder inside the run's folder, and the uploads went there
    too; SIGTERM (as Ctrl-C) stops the app and removes it all."""
    requests = list((app.run_dir / "requests").iterdir())
    assert len(requests) >= 3 and all(r.is_dir() for r in requests)
    assert any((app.run_dir / "uploads").rglob("test_00000.mp4"))
    app.proc.send_signal(signal.SIGTERM)
    assert app.proc.wait(60) == 0
    assert not app.run_dir.exists()
