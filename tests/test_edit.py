"""
Editing a range of a video's own sound (sample.py --edit; MaskGIT's in-painting, this project's
own) on conftest's tiny checkpoints: outside the range the wav is the video's own sound sample for
sample, at its own rate and channels; the record says what was done and the same seed redoes the
same edit; only the windows over the range are decoded; a folder goes on past a video the range
does not fit; each bad input is one line naming the video, exit 1, nothing written.
"""
import json
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import sample
from tools import bench_edit
from extract_features import decode_audio
from test_sample_videos import _audio_only, make_video

ROOT = Path(__file__).resolve().parents[1]


def edit(world, video, span, *extra):
    return sample.main([f"--ckpt_dir={world}/out", f"--video={video}", f"--edit={span}", "--steps=2", *extra])


def samples16(path):
    """A wav's 16-bit samples, (channels, samples), and its rate."""
    with wave.open(str(path)) as f:
        data = np.frombuffer(f.readframes(f.getnframes()), "<i2").reshape(-1, f.getnchannels()).T
        return data, f.getframerate()


def own16(video):
    """The video's own sound as 16-bit samples, as write_wav rounds them."""
    wav, rate = decode_audio(str(video), "fltp")
    return (np.clip(wav, -1, 1) * 32767).round().astype("<i2"), rate


def stereo_video(path, seconds=3.0, rate=44100):
    """A moving picture with a stereo AAC track at 44.1 kHz: a tone on the left, another on the right."""
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("aac", rate=rate, layout="stereo")
        for i in range(round(seconds * 25)):
            img = np.full((48, 64, 3), i * 9 % 256, np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        t = np.arange(round(seconds * rate)) / rate
        frame = av.AudioFrame.from_ndarray(np.stack([np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 660 * t)])
                                           .astype(np.float32) * 0.3, format="fltp", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        for p in [*a.encode(frame), *a.encode(None)]:
            c.mux(p)
    return path


def test_outside_the_range_the_wav_is_the_videos_own_sound(world, tmp_path):
    video = world / "clips" / "test_00000.mp4"
    assert edit(world, video, "0.5:0.9", "--prompt=a low bell rings three times", f"--out_dir={tmp_path}") == 0
    out, rate = samples16(tmp_path / "test_00000.vatt.wav")
    own, own_rate = own16(video)
    first, last = round(0.5 * rate), round(0.9 * rate)
    assert rate == own_rate and out.shape == own.shape
    assert np.array_equal(out[:, :first], own[:, :first]) and np.array_equal(out[:, last:], own[:, last:])
    assert not np.array_equal(out[:, first:last], own[:, first:last])
    record = json.loads((tmp_path / "test_00000.vatt.json").read_text())
    assert record["edit"] == [0.5, 0.9] and record["prompt"] == "a low bell rings three times"
    assert record["caption"] is None and record["steps"] == 2 and isinstance(record["seed"], int)
    with av.open(record["video_out"]) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
    # the same seed, the same edit; without a prompt the Converter's caption of the window is the text
    again = tmp_path / "again"
    assert edit(world, video, "0.5:0.9", "--prompt=a low bell rings three times", f"--out_dir={again}") == 0
    assert (again / "test_00000.vatt.wav").read_bytes() == (tmp_path / "test_00000.vatt.wav").read_bytes()
    assert edit(world, video, "0.5:0.9", f"--out_dir={tmp_path / 'caption'}") == 0
    record = json.loads((tmp_path / "caption" / "test_00000.vatt.json").read_text())
    assert record["caption"] and record["prompt_used"] == record["caption"] and record["prompt"] is None


def test_a_stereo_44_khz_sound_keeps_its_rate_channels_and_samples(world, tmp_path):
    video = stereo_video(tmp_path / "stereo.mp4")
    assert edit(world, video, "1.0:1.6", "--prompt=a high whistle toots once", f"--out_dir={tmp_path}") == 0
    out, rate = samples16(tmp_path / "stereo.vatt.wav")
    own, _ = own16(video)
    first, last = round(1.0 * rate), round(1.6 * rate)
    assert rate == 44100 and out.shape == own.shape and out.shape[0] == 2
    assert np.array_equal(out[:, :first], own[:, :first]) and np.array_equal(out[:, last:], own[:, last:])
    with av.open(str(tmp_path / "stereo.vatt.mp4")) as c:
        assert c.streams.audio[0].codec_context.layout.name == "stereo"


@pytest.mark.parametrize("a, b, n, want", [
    (30, 50, 100, [0]),  # a short range in a clip of one window: that window
    (6000, 6100, 12000, [5980, 6020]),  # a window long, mid-video: two windows, context on both sides
    (6010, 6030, 12000, [5970]),  # short, mid-video: one window, the range in its middle
    (11990, 12000, 12000, [11900]),  # at the very end: the last window inside the clip
    (0, 20, 60, [0]),  # a clip shorter than a window
    (100, 400, 12000, [80, 160, 240, 320]),  # three windows' worth: a hop apart, the last past the end
])
def test_the_windows_cover_the_range_and_no_more(a, b, n, want):
    """The toy's sizes: 100-token windows (2 s at 50 Hz), an 80-token hop (0.4 s overlap), a 10-token grid."""
    starts = sample.edit_windows(a, b, n, 100, 80, 10)
    assert starts == want
    assert starts[0] <= a and starts[-1] + 100 >= b and all(s % 10 == 0 for s in starts)


def test_a_long_video_decodes_only_the_windows_over_the_range(world, tmp_path, monkeypatch):
    """On a 30-s video (15 toy windows) a 0.4-s edit runs one window, reads the frames of that
    window only, and keeps the rest of the sound sample for sample."""
    video = make_video(tmp_path / "long.mp4", seconds=30.0, audio=True)
    calls, frames = [], []
    decode, encode = sample.decode_tokens, sample.VideoFeatures.__call__
    monkeypatch.setattr(sample, "decode_tokens", lambda *a, **k: calls.append(a[4].shape) or decode(*a, **k))
    monkeypatch.setattr(sample.VideoFeatures, "__call__",
                        lambda self, *a, **k: frames.append(encode(self, *a, **k)[0].shape[0]) or encode(self, *a, **k))
    assert edit(world, video, "20.1:20.5", "--prompt=a drum beats once", f"--out_dir={tmp_path / 'out'}") == 0
    assert len(calls) == 1 and frames == [10]  # one 2-s window at 5 fps
    out, rate = samples16(tmp_path / "out" / "long.vatt.wav")
    own, _ = own16(video)
    first, last = round(20.1 * rate), round(20.5 * rate)
    assert np.array_equal(out[:, :first], own[:, :first]) and np.array_equal(out[:, last:], own[:, last:])


def test_a_folder_goes_on_past_a_video_the_range_does_not_fit(world, tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    make_video(folder / "a.mp4", seconds=3.0, audio=True)
    make_video(folder / "b.mp4", seconds=1.0, audio=True)  # the range 1.5:2.0 lies past its end
    assert edit(world, folder, "1.5:2.0", "--prompt=a bell rings once") == 1
    err = capsys.readouterr().err
    assert (folder / "a.vatt.wav").is_file() and not list(folder.glob("b.vatt.*"))
    assert "failed: " + str(folder / "b.mp4") + ": the range 1.5:2 s lies outside its sound" in err
    assert "1 of 2 videos failed" in err


BAD = {  # name: (the video, the range, the message after "failed: <video>: ")
    "no audio track": (lambda p: make_video(p, seconds=1.0), "0.1:0.5", "no audio track"),
    "range outside the video": (lambda p: make_video(p, seconds=1.0, audio=True), "0.8:1.5",
                                "the range 0.8:1.5 s lies outside its sound"),
    "start after end": (lambda p: make_video(p, seconds=1.0, audio=True), "0.6:0.2",
                        "the range '0.6:0.2': START must come before END"),
    "malformed": (lambda p: make_video(p, seconds=1.0, audio=True), "0.2-0.6",
                  "the range '0.2-0.6' is not START:END in seconds, e.g. 3.2:5.0"),
    "not a video": (lambda p: p.write_bytes(b"not a video") and p, "0.1:0.5", "not a readable video"),
}


def errors(text):
    """What a run said on stderr, without transformers' progress bar of loading the LLM's weights."""
    return [line for line in text.strip().splitlines() if not line.startswith("Loading weights")]


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_input_is_one_line_exit_1_and_nothing_written(world, tmp_path, capsys, case):
    """A range that cannot be read is refused before the models load ("error: <video>: ..."); a
    video's own problems fail it alone ("failed: <video>: ...")."""
    make, span, message = BAD[case]
    video = make(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    try:
        status = edit(world, video, span, "--prompt=a bell", f"--out_dir={out}")
        lines = errors(capsys.readouterr().err)
    except SystemExit as stop:
        status, lines = 1, [str(stop.code)]
    assert status == 1 and len(lines) == 1, lines
    assert lines[0].startswith((f"failed: {video}: {message}", f"error: {video}: {message}")), lines
    assert not out.exists() or not list(out.iterdir())


def test_an_audio_only_file_is_refused_too(world, tmp_path, capsys):
    video = tmp_path / "sound.m4a"
    _audio_only(video)
    assert edit(world, video, "0.1:0.3", f"--out_dir={tmp_path / 'out'}") == 1
    assert errors(capsys.readouterr().err) == [f"failed: {video}: no video stream"]


def test_edit_is_refused_with_options_it_does_not_take(world, tmp_path):
    with pytest.raises(SystemExit, match="--caption_only does not go with --edit"):
        edit(world, world / "clips" / "test_00000.mp4", "0.1:0.5", "--caption_only")


def test_the_decoding_schedule_runs_over_the_masked_tokens_only(world, tmp_path, monkeypatch):
    """MaskGIT's in-painting: the tokens outside the range come in known and leave unchanged."""
    seen = []
    decode = sample.decode_tokens

    def spy(model, cond, cond_mask, null_cond, codes, *a, **k):
        out = decode(model, cond, cond_mask, null_cond, codes, *a, **k)
        seen.append((codes.clone(), out))
        return out

    monkeypatch.setattr(sample, "decode_tokens", spy)
    assert edit(world, world / "clips" / "test_00001.mp4", "0.5:0.9", "--prompt=a bell",
                f"--out_dir={tmp_path}") == 0
    (codes, out), = seen
    masked = codes == sample.load_models(f"{world}/out", torch.device("cpu")).audio.config.bins
    assert masked[0, :, 25:45].all() and not masked[0, :, :25].any() and not masked[0, :, 45:].any()
    assert torch.equal(out[~masked], codes[~masked])


def test_a_batch_of_edits_is_each_edit_alone(world, tmp_path):
    """--batch_size edits decoded together (a window each, one forward) give each video the edit it
    gets alone, bit for bit: every clip draws its own noise."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(3):
        (folder / f"clip{i}.mp4").write_bytes((world / "clips" / f"test_0000{i % 2}.mp4").read_bytes())
    for batch in (1, 3):
        assert edit(world, folder, "0.3:0.7", "--prompt=a high bell rings twice", f"--batch_size={batch}",
                    f"--out_dir={tmp_path / str(batch)}") == 0
    for i in range(3):
        assert (tmp_path / "1" / f"clip{i}.vatt.wav").read_bytes() == (tmp_path / "3" / f"clip{i}.vatt.wav").read_bytes()


def test_the_edit_benchmark_times_each_length(world, tmp_path, capsys):
    """tools/bench_edit.py: one edit command per made video, its time and peak memory, in a table
    and bench_edit.json."""
    assert bench_edit.main([f"--ckpt_dir={world}/out", "--lengths=3,6", "--edit=1:2", "--repeats=1", "--size=32",
                            f"--out_dir={tmp_path}"]) == 0
    rows = json.loads((tmp_path / "bench_edit.json").read_text())["rows"]
    assert [r["video_s"] for r in rows] == [3.0, 6.0] and all(r["wall_s"] > 0 and r["peak_rss_gb"] > 0 for r in rows)
    assert (tmp_path / "edits" / "video_6s.vatt.wav").is_file() and "| 6 s |" in capsys.readouterr().out
