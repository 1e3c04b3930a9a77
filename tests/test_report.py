"""
The report page (report.py; make demo writes it after data/toy/score.py) in a real browser:
headless Chromium opens it from disk, and every image must decode, every video and audio element
load and play its media (picture and sound) for the clip's whole length, every relative link
resolve; a screenshot is saved. Built on a micro run: conftest's `world` (2 test clips, tiny
checkpoints) sampled in the four modes. The browser is Debian's `chromium` package (`make test`
installs it when missing, if run as root); without it the browser tests skip and say why.
Also: the step history that `sample.py --save_steps` saves for the decoding picture (§3.2.2).
"""
import base64
import json
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import torch
from PIL import Image

import eval as vatt_eval
import sample
from data.toy import score
from tools import report, sample_split
from browser import Chromium, find_chromium

# in the page, once it has loaded: wait until every media element has decoded its first frame (or
# failed), play each a moment (the browser is muted) so that its sound and picture decode, then
# list what a reader would see
PROBE = r"""(async () => {
  const media = [...document.querySelectorAll("video, audio")];
  await Promise.all(media.map(m => new Promise(done => {
    if (m.readyState >= 2 || m.error) return done();
    m.addEventListener("loadeddata", done);
    m.addEventListener("error", done);
  })));
  await Promise.all(media.filter(m => !m.error).map(async m => {
    await m.play();
    await new Promise(done => setTimeout(done, 400));
    m.pause();
  }));
  return {
    images: [...document.images].map(i => ({src: i.getAttribute("src"), width: i.complete ? i.naturalWidth : 0})),
    media: media.map(m => ({src: m.getAttribute("src"), tag: m.tagName.toLowerCase(), error: m.error && m.error.code,
                            duration: m.duration, sound: m.webkitAudioDecodedByteCount,
                            picture: m.webkitVideoDecodedByteCount ?? null})),
    links: [...document.querySelectorAll("[src], [href]")].map(e => e.getAttribute("src") ?? e.getAttribute("href")),
  };
})()"""
MODES = [("video_only", []), ("gt_caption", ["--prompt_field=output", "--save_steps"]),
         ("self_caption", ["--self_prompt"]), ("swapped_pitch_text", ["--prompt_field=swapped"]),
         ("negative_pitch", ["--negative_field=swapped"]), ("edit_swapped", ["--edit_field=edit", "--prompt_field=swapped"])]


@pytest.fixture(scope="module")
def run(world, tmp_path_factory):
    """The micro run's samples (16 decoding steps, as make demo), eval.json and report page."""
    d = tmp_path_factory.mktemp("run")
    common = [f"--ckpt_dir={world}/out", f"--data_json={world}/v2a_instruction.json"]
    for name, extra in MODES:
        assert sample_split.main(common + [f"--name={name}", f"--out_dir={d}/samples/{name}"] + extra) == 0
    data = [f"--data_json={world}/v2a_instruction.json", f"--features_dir={world}/features",
            f"--samples_dir={d}/samples", "--split=test"]
    assert score.main(data + [f"--out={d}/eval.json"]) == 0
    assert report.main(data + [f"--eval_json={d}/eval.json", f"--out={d}/report.html"]) == 0
    assert (d / "report.html").is_file() and (d / "report_media").is_dir()
    return d


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    binary = find_chromium()
    if binary is None:
        pytest.skip("no chromium on PATH: install Debian's chromium package (apt-get install chromium; "
                    "make test does so when run as root)")
    browser = Chromium(binary, tmp_path_factory.mktemp("chromium-profile"))
    yield browser
    browser.close()


def page_problems(browser, page, seconds, screenshot=None):
    """What is wrong with the page at `page` as Chromium shows it (an empty list when nothing is),
    and what it found: {"images", "media", "links"}."""
    session = browser.open_page(page.as_uri())
    found = browser.evaluate(session, PROBE)
    if screenshot:
        size = browser.send("Page.getLayoutMetrics", session)["cssContentSize"]
        shot = browser.send("Page.captureScreenshot", session, format="png", captureBeyondViewport=True,
                            clip=dict(x=0, y=0, width=size["width"], height=size["height"], scale=1))
        screenshot.write_bytes(base64.b64decode(shot["data"]))
    problems = [f"{i['src']}: the image does not decode" for i in found["images"] if i["width"] <= 0]
    for m in found["media"]:
        if m["error"]:
            problems.append(f"{m['src']}: the {m['tag']} does not load (MediaError code {m['error']})")
        elif abs(m["duration"] - seconds) > 0.05:
            problems.append(f"{m['src']}: lasts {m['duration']} s, not {seconds} s")
        elif not m["sound"] or (m["tag"] == "video" and not m["picture"]):
            problems.append(f"{m['src']}: its {'sound' if not m['sound'] else 'picture'} does not decode")
    for link in found["links"]:
        url = urlsplit(link)
        if not url.scheme and url.path and not (page.parent / unquote(url.path)).is_file():
            problems.append(f"{link}: broken relative link")
    return problems, found


def test_report_page_in_chromium(run, world, chromium):
    page = run / "report.html"
    seconds = json.loads((world / "features" / "meta.json").read_text())["seconds"]
    problems, found = page_problems(chromium, page, seconds, screenshot=run / "report.png")
    assert problems == []
    # the micro world's 2 test clips: 5 videos each (the real sound, 4 modes) and a spectrogram
    # figure each, the decoding picture, and one clip before and after its edit (2 videos, a figure)
    assert len(found["media"]) == 12 and {m["tag"] for m in found["media"]} == {"video"}
    assert sorted(Path(i["src"]).name for i in found["images"]) == [
        "decoding.png", "test_00000.edit.png", "test_00000.spectrograms.png", "test_00001.spectrograms.png"]
    with Image.open(run / "report.png") as shot:  # the whole page, as wide as the window less its scroll bar
        assert shot.format == "PNG" and 1100 < shot.width <= 1200 and shot.height > 2000
    text = page.read_text()
    for row in ("ground_truth", "codec_roundtrip", "video_only", "gt_caption", "self_caption", "swapped_pitch_text",
                "negative_pitch", "edit_swapped"):
        assert f"<th>{row}</th>" in text


def test_browser_check_catches_missing_and_broken_media(run, world, chromium, tmp_path):
    """The same check on a copy of the page with two images and two videos missing or broken."""
    shutil.copy(run / "report.html", tmp_path)
    media = shutil.copytree(run / "report_media", tmp_path / "report_media")
    (media / "test_00000.spectrograms.png").unlink()
    (media / "decoding.png").write_bytes((media / "decoding.png").read_bytes()[:200])  # truncated
    (media / "test_00001.gt_caption.mp4").unlink()
    (media / "test_00000.video_only.mp4").write_bytes(b"\0" * 5000)  # not a video
    seconds = json.loads((world / "features" / "meta.json").read_text())["seconds"]
    problems, _ = page_problems(chromium, tmp_path / "report.html", seconds)
    assert sorted(problems) == sorted([
        "report_media/test_00000.spectrograms.png: the image does not decode",
        "report_media/test_00000.spectrograms.png: broken relative link",
        "report_media/decoding.png: the image does not decode",
        "report_media/test_00001.gt_caption.mp4: the video does not load (MediaError code 4)",
        "report_media/test_00001.gt_caption.mp4: broken relative link",
        "report_media/test_00000.video_only.mp4: the video does not load (MediaError code 4)"])


def test_a_clip_and_page_named_with_html_and_hash_load_in_chromium(run, world, chromium, tmp_path):
    """The micro run's page made again with one test clip renamed to HTML and '#' and the page
    (so its media folder) named with '#': every video, picture and link still loads, and the name
    is shown as text."""
    stem, clips = "a<b>&c #1", tmp_path / "clips"
    entries = json.loads((world / "v2a_instruction.json").read_text())
    for e in entries:
        if Path(e["video_path"]).stem == "test_00000":
            e["video_path"] = f"clips/{stem}.mp4"
    (tmp_path / "data.json").write_text(json.dumps(entries))
    clips.mkdir()
    shutil.copy(world / "clips" / "test_00000.mp4", clips / f"{stem}.mp4")
    shutil.copy(world / "clips" / "test_00001.mp4", clips / "test_00001.mp4")
    samples = shutil.copytree(run / "samples", tmp_path / "samples")
    for f in samples.rglob("test_00000.*"):
        f.rename(f.with_name(stem + f.name[len("test_00000"):]))
    for mode in ("video_only", "edit_swapped"):
        captions = json.loads((samples / mode / "captions.json").read_text())
        captions["clips"][stem] = captions["clips"].pop("test_00000")
        (samples / mode / "captions.json").write_text(json.dumps(captions))
    page = tmp_path / "my report #2.html"
    assert report.main([f"--data_json={tmp_path}/data.json", f"--features_dir={world}/features", f"--samples_dir={samples}",
                        "--split=test", f"--eval_json={run}/eval.json", f"--out={page}"]) == 0
    seconds = json.loads((world / "features" / "meta.json").read_text())["seconds"]
    problems, found = page_problems(chromium, page, seconds)
    assert problems == [] and len(found["media"]) == 12 and len(found["images"]) == 4
    # 5 videos and the spectrograms, the edit's before and after and its spectrograms
    assert sum(stem in unquote(link) for link in found["links"]) == 9
    text = page.read_text()
    assert "a&lt;b&gt;&amp;c #1" in text and stem not in text


# -----------------------------------------------------------------------------
# the step history behind the decoding picture (§3.2.2)


def test_saved_step_history_follows_cosine_schedule_3_2_2(run):
    """Every token of a clip is revealed once, at a step in 1..T, and step t reveals exactly the
    cosine schedule's count for t (MaskGIT's gamma = cos(pi/2 t/T) on the clip's N0 tokens)."""
    history = json.loads((run / "samples" / "gt_caption" / "test_00000.steps.json").read_text())
    grid, steps = np.array(history["revealed_at"]), history["steps"]
    assert grid.shape == (4, 100) and steps == 16 and grid.min() == 1 and grid.max() == steps
    want = [grid.size - int(np.floor(grid.size * np.cos(np.pi / 2 * t / steps))) for t in range(steps + 1)]
    assert [int((grid == t).sum()) for t in range(1, steps + 1)] == np.diff(want).tolist()


def test_save_steps_leaves_the_audio_unchanged(run, world, tmp_path):
    """Recording the history draws nothing: the same seed gives the same audio with or without it."""
    assert sample_split.main([f"--ckpt_dir={world}/out", f"--data_json={world}/v2a_instruction.json", "--name=gt_caption",
                              "--prompt_field=output", f"--out_dir={tmp_path}"]) == 0
    for stem in ("test_00000", "test_00001"):
        with_steps = vatt_eval.read_wav(run / "samples" / "gt_caption" / f"{stem}.wav")[0]
        assert np.array_equal(vatt_eval.read_wav(tmp_path / f"{stem}.wav")[0], with_steps)
    assert not list(tmp_path.glob("*.steps.json"))


def test_revealed_at_gives_given_tokens_step_0():
    """In-painted tokens (known before step 1) are step 0; the others the step that unmasked them."""
    mask = 9
    start = torch.tensor([[[3, mask, mask, mask]]])  # (B, L, T): the first token given
    history = [start, torch.tensor([[[3, mask, 5, mask]]]), torch.tensor([[[3, 1, 5, 7]]])]
    assert sample.revealed_at(history, mask).tolist() == [[[0, 2, 1, 2]]]


def test_pick_clips_covers_every_source_and_register():
    test = [dict(video_path=f"c{i}.mp4", **{"class": c, "pitch": p})
            for i, (c, p) in enumerate([("drum", "low")] * 5 + [("bell", "high"), ("whistle", "low"), ("bell", "low"),
                                       ("whistle", "high"), ("drum", "high")])]
    chosen = report.pick_clips(test, 6)
    assert {(e["class"], e["pitch"]) for e in chosen} == {(c, p) for c in ("bell", "drum", "whistle")
                                                          for p in ("low", "high")}
    assert len(report.pick_clips(test, 8)) == 8 and len(report.pick_clips(test[:2], 6)) == 2


def test_clip_section_escapes_names_and_encodes_links():
    """A clip or folder name may hold HTML and '#': the page shows it as text, and every link
    still points at its file (a raw '#' would cut the URL at a fragment)."""
    from html.parser import HTMLParser

    stem, media = "a<b>&c #1", "my media#x"
    entry = {"output": "a <i>low</i> bell", "swapped": "a high bell", "class": "bell", "pitch": "low"}
    videos = {"real": f"{stem}.real.mp4", **{name: f"{stem}.{name}.mp4" for name, _ in report.MODES}}
    page = report.clip_html(entry, "its <caption>", media, stem, videos, "1 strike at 0.5 s")
    links, texts = [], []

    class Reader(HTMLParser):
        def handle_starttag(self, tag, attrs):
            assert tag in {"section", "h3", "p", "q", "br", "div", "figure", "video", "figcaption", "img"}, tag
            links.extend(v for k, v in attrs if k == "src")

        def handle_data(self, data):
            texts.append(data)

    Reader().feed(page)
    assert {unquote(urlsplit(src).path) for src in links} == \
        {f"{media}/{v}" for v in videos.values()} | {f"{media}/{stem}.spectrograms.png"}
    assert all(urlsplit(src).fragment == "" for src in links)
    assert any(stem in t for t in texts) and any("its <caption>" in t for t in texts)
