"""
sample.py on real video files: any container, codec, frame rate, size and duration
in; <video>.vatt.wav, .vatt.mp4 (the video stream copied, the new audio muxed in) and .vatt.json
out, the audio exactly as long as the video; the sampling modes; one clear line per bad input;
a batched folder that gives the same audio as one call per video.

Every video is written here with PyAV; the models are the toy preset's, tiny and barely trained
(tests/test_pipeline.py's recipe), so this checks the plumbing, not the sound.
"""
import json
import math
import shutil
import subprocess
import sys
import wave
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch

import sample

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
CODEC_FRAME = 320  # samples per codec frame (16 kHz / 50 Hz): "to within one codec frame"


def run(world, video, *extra):
    """sample.main in-process (fast: no interpreter start); returns its exit status."""
    return sample.main([f"--ckpt_dir={world}/out", f"--video={video}", "--steps=2", *extra])


# -----------------------------------------------------------------------------
# making videos


def make_video(path, seconds=1.0, fps=30000 / 1001, size=(64, 48), codec="libx264", pix_fmt="yuv420p",
               audio=False, vfr=False, start=0.0, fmt=None):
    """A moving test pattern. vfr: frames at irregular times (gaps of 20-120 ms), set through
    their pts in a 1 ms time base; start: the first frame's time (s). audio: an AAC track (a tone)
    as long as the video."""
    w, h = size
    tb = Fraction(1, 1000)
    rng = np.random.default_rng(0)
    if vfr:
        times = np.concatenate([[0.0], np.cumsum(rng.uniform(0.02, 0.12, int(seconds / 0.02)))])
        times = times[times < seconds]
    else:
        times = np.arange(round(seconds * fps)) / fps
    with av.open(str(path), "w", format=fmt) as c:
        v = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        v.width, v.height, v.pix_fmt = w, h, pix_fmt
        if vfr or start:
            v.time_base = v.codec_context.time_base = tb
        a = c.add_stream("aac", rate=SR, layout="mono") if audio else None  # every stream before muxing starts
        for i, t in enumerate(times):
            img = np.zeros((h, w, 3), np.uint8)
            img[..., 0] = i * 7 % 256
            img[: h // 2, (i * 3) % w:, 1] = 200
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if vfr or start:
                frame.pts, frame.time_base = round((start + t) * 1000), tb
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        if audio:
            frame = av.AudioFrame.from_ndarray(np.sin(np.arange(round(seconds * SR)) / 10)[None].astype(np.float32),
                                               format="fltp", layout="mono")
            frame.sample_rate, frame.pts = SR, 0
            for p in [*a.encode(frame), *a.encode(None)]:
                c.mux(p)
    return path


def read_wav(path):
    with wave.open(str(path)) as f:
        assert f.getframerate() == SR and f.getnchannels() == 1
        return np.frombuffer(f.readframes(f.getnframes()), "<i2")


def video_packets(path):
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.video[0]) if p.size]


def video_end(path):
    """Where a video ends: its last frame's time plus that frame's duration as the container stores
    it. (The container's own duration can miss it: for VFR H.264 with B-frames in MP4, FFmpeg's
    muxer derives it from the shifted dts and comes out tens of ms short.)"""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return max(float(f.time + f.duration * s.time_base) for f in c.decode(s)) - (c.start_time or 0) / 1e6


def check_outputs(video, base, ext=".mp4"):
    """The three outputs of one video: the wav lasts round(duration * 16 kHz) samples and the
    duration is the source's (video_end); the muxed file holds the source's video packets byte for byte
    (copied, not re-encoded) and one audio track as long as the wav (in Matroska up to one AAC
    frame longer). Returns the json record."""
    record = json.loads(Path(f"{base}.json").read_text())
    with av.open(str(video)) as c:
        source_codec = c.streams.video[0].codec_context.name
    assert abs(record["duration"] - video_end(video)) * SR <= CODEC_FRAME
    wav = read_wav(f"{base}.wav")
    assert len(wav) == round(record["duration"] * SR)
    with av.open(f"{base}{ext}") as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        assert c.streams.video[0].codec_context.name == source_codec
        a = c.streams.audio[0]
        if a.duration is not None:  # MP4: its edit list trims the AAC priming and padding exactly
            assert abs(float(a.duration * a.time_base) * SR - len(wav)) <= CODEC_FRAME
        else:  # Matroska cannot trim the padding of the last AAC frame (1024 samples)
            end = max(p.pts + p.duration for p in c.demux(a) if p.size) * a.time_base
            assert 0 <= float(end) * SR - len(wav) < 1024
    assert video_packets(f"{base}{ext}") == video_packets(video)
    assert record["video_out"] == f"{base}{ext}"
    return record


def leftovers(folder):
    """Temporary files (atomic writes) left behind."""
    return [p.name for p in Path(folder).rglob(".*")]


# -----------------------------------------------------------------------------
# any input PyAV reads


def test_ntsc_mp4_writes_wav_mp4_json(world, tmp_path, capsys):
    video = make_video(tmp_path / "ntsc.mp4")  # 29.97 fps H.264, no audio track
    assert run(world, video) == 0
    record = check_outputs(video, tmp_path / "ntsc.vatt")
    assert record["duration"] == pytest.approx(30 / (30000 / 1001))  # 30 frames at 29.97 fps
    assert capsys.readouterr().out.strip() == f"{video}: {record['caption']!r}"  # the caption is printed
    assert record["caption"] and record["prompt"] is None and record["negative_prompt"] is None
    assert record["seed"] == sample.clip_seed(0, 0, "ntsc.mp4")  # the seed its noise was drawn with
    assert record["seed_from"] == {"seed": 0, "sample": 0, "key": "ntsc.mp4"}
    assert {"steps", "guidance_scale", "temperature", "top_k", "mask_temperature", "overlap"} <= set(record)
    assert record["checkpoints"] == {"converter": f"{world}/out/stage1.pt", "audio": f"{world}/out/stage2.pt"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ntsc.mp4", "ntsc.vatt.json", "ntsc.vatt.mp4", "ntsc.vatt.wav"]


@pytest.mark.parametrize("name", ["vfr.mp4", "vfr.mkv"])
def test_variable_frame_rate(world, tmp_path, name):
    # H.264 with B-frames; in Matroska its first packets carry no dts, which the stream copy must keep
    video = make_video(tmp_path / name, seconds=3.0, vfr=True)
    with av.open(str(video)) as c:
        gaps = np.diff([f.pts for f in c.decode(video=0)])
    assert len(set(gaps)) > 5  # really variable
    assert run(world, video) == 0
    check_outputs(video, tmp_path / "vfr.vatt")


@pytest.mark.parametrize("name,codec,pix_fmt", [("odd.avi", "mpeg4", "yuv420p"), ("odd.mp4", "libx264", "yuv444p")])
def test_odd_size(world, tmp_path, name, codec, pix_fmt):
    video = make_video(tmp_path / name, size=(317, 181), codec=codec, pix_fmt=pix_fmt)
    assert run(world, video) == 0
    check_outputs(video, tmp_path / "odd.vatt")


def test_video_that_starts_late_keeps_its_audio_in_sync(world, tmp_path):
    video = make_video(tmp_path / "late.mp4", start=3.0)  # its first frame at 3 s
    assert run(world, video) == 0
    check_outputs(video, tmp_path / "late.vatt")
    with av.open(str(tmp_path / "late.vatt.mp4")) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        gap = float(v.start_time * v.time_base - a.start_time * a.time_base)
    assert abs(gap) * SR <= CODEC_FRAME  # the audio starts with the video (not 3 s before it)


def test_codec_mp4_cannot_hold_goes_to_matroska(world, tmp_path):
    video = make_video(tmp_path / "vp8.webm", codec="libvpx", fps=25)
    assert run(world, video) == 0
    check_outputs(video, tmp_path / "vp8.vatt", ext=".mkv")
    assert not (tmp_path / "vp8.vatt.mp4").exists()


def test_clip_shorter_than_the_window_with_an_audio_track(world, tmp_path):
    video = make_video(tmp_path / "short.mp4", seconds=0.5, audio=True)
    assert run(world, video) == 0
    record = json.loads((tmp_path / "short.vatt.json").read_text())
    assert abs(record["duration"] - video_end(video)) * SR <= CODEC_FRAME
    assert len(read_wav(tmp_path / "short.vatt.wav")) == round(record["duration"] * SR)
    with av.open(str(tmp_path / "short.vatt.mp4")) as c:  # the original audio is replaced, not added
        assert [s.type for s in c.streams] == ["video", "audio"]


def test_clip_longer_than_the_window_is_inpainted_window_by_window(world, tmp_path, monkeypatch):
    calls = []

    def spy(model, cond, cond_mask, null_cond, codes, *args, **kwargs):
        out = decode_tokens(model, cond, cond_mask, null_cond, codes, *args, **kwargs)
        calls.append((codes.clone(), out.clone()))
        return out

    decode_tokens = sample.decode_tokens
    monkeypatch.setattr(sample, "decode_tokens", spy)
    video = make_video(tmp_path / "long.mp4", seconds=25.0)
    # a prompt: no captioning per window; one step per window keeps 16 windows quick
    assert run(world, video, "--prompt=a low bell rings twice", "--steps=1") == 0
    record = check_outputs(video, tmp_path / "long.vatt")
    mask_id = 64  # toy: 2 s windows at 50 Hz, 0.4 s overlap, 64 bins
    plan = sample.plan_windows(record["duration"], 2.0, 0.4, 5, 50)
    assert len(calls) == len(plan) == 1 + math.ceil((record["duration"] - 2.0) / 1.6)
    assert len(record["prompts_used"]) == len(calls)
    assert (calls[0][0] == mask_id).all()
    for (_, prev), (codes, out), (_, start_prev), (_, start) in zip(calls, calls[1:], plan, plan[1:]):
        keep = start_prev + 100 - start  # 20 tokens (0.4 s), more for the last window, which ends with the clip
        assert keep >= 20
        assert torch.equal(codes[..., :keep], prev[..., -keep:])  # the first tokens are the last window's
        assert (codes[..., keep:] == mask_id).all()  # the rest is decoded
        assert torch.equal(out[..., :keep], codes[..., :keep]) and (out != mask_id).all()


# -----------------------------------------------------------------------------
# modes


def test_caption_only_and_self_prompt(world, tmp_path, capsys):
    video = make_video(tmp_path / "clip.mp4")
    assert run(world, video, "--caption_only") == 0
    record = json.loads((tmp_path / "clip.vatt.json").read_text())
    assert capsys.readouterr().out.strip() == f"{video}: {record['caption']!r}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "clip.vatt.json"]  # no audio
    assert run(world, video, "--self_prompt") == 0
    record = json.loads((tmp_path / "clip.vatt.json").read_text())
    assert record["prompts_used"] == [record["caption"]]  # generated with its own caption


def test_num_samples_seeds_and_settings(world, tmp_path):
    video = make_video(tmp_path / "clip.mp4")
    settings = ["--steps=3", "--guidance_scale=3.0", "--temperature=0.7", "--mask_temperature=1.5"]
    assert run(world, video, "--num_samples=2", "--seed=5", *settings) == 0
    records = [json.loads((tmp_path / f"clip.vatt.{k}.json").read_text()) for k in (0, 1)]
    assert [r["seed"] for r in records] == [sample.clip_seed(5, k, "clip.mp4") for k in (0, 1)]
    assert [r["seed_from"]["sample"] for r in records] == [0, 1]
    assert {k: records[0][k] for k in ("steps", "guidance_scale", "temperature", "mask_temperature")} == \
        dict(steps=3, guidance_scale=3.0, temperature=0.7, mask_temperature=1.5)
    wavs = [read_wav(tmp_path / f"clip.vatt.{k}.wav") for k in (0, 1)]
    assert not np.array_equal(*wavs)  # two samples, two noise streams
    out = tmp_path / "again"
    assert run(world, video, "--num_samples=2", "--seed=5", f"--out_dir={out}", *settings) == 0  # a run reproduces
    assert all(np.array_equal(read_wav(out / f"clip.vatt.{k}.wav"), wavs[k]) for k in (0, 1))


def test_device_auto_is_cuda_then_mps_then_cpu(monkeypatch):
    from utils import pick_device

    assert sample.Config().device == "auto"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto").type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("auto").type == "cpu"


# -----------------------------------------------------------------------------
# errors: one clear line naming the problem, a non-zero exit, nothing half-written


def _corrupt_stream(path):
    """A valid MP4 (noise frames, so the H.264 packets are big) whose middle packet is overwritten
    with noise: the container opens, the decoder fails halfway."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        for _ in range(25):
            for p in v.encode(av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), np.uint8), format="rgb24")):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
    with av.open(str(path)) as c:
        packets = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    pos, size = packets[len(packets) // 2]
    data = bytearray(path.read_bytes())
    data[pos: pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def _audio_only(path):
    with av.open(str(path), "w") as c:
        a = c.add_stream("aac", rate=SR, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, SR), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = SR, 0
        for p in [*a.encode(frame), *a.encode(None)]:
            c.mux(p)


BAD_VIDEOS = {
    "noise.mp4": (lambda p: p.write_bytes(np.random.default_rng(1).bytes(5000)), "not a readable video"),
    "empty.mp4": (lambda p: p.write_bytes(b""), "not a readable video"),
    "truncated.mp4": (lambda p: p.write_bytes(make_video(p).read_bytes()[:1000]), "not a readable video"),
    "audio_only.m4a": (_audio_only, "no video stream"),
    "missing.mp4": (lambda p: None, "no such file"),
}


@pytest.mark.parametrize("name", sorted(BAD_VIDEOS))
def test_bad_video_gives_one_line(world, tmp_path, capsys, name):
    make, problem = BAD_VIDEOS[name]
    make(tmp_path / name)
    assert run(world, tmp_path / name) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if "failed" in line]
    assert len(lines) == 1 and lines[0].startswith(f"failed: {tmp_path / name}: {problem}")
    assert not list(tmp_path.glob("*.vatt*")) and not leftovers(tmp_path)


def test_corrupt_video_stream(world, tmp_path, capsys):
    video = tmp_path / "corrupt.mp4"
    _corrupt_stream(video)
    assert run(world, video) == 1
    assert f"failed: {video}: corrupt video stream" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.vatt*")) and not leftovers(tmp_path)


@pytest.mark.parametrize("where", ["empty", "x.mp4", "only_a_folder_named_x.mp4", "list.txt"])
def test_no_videos_is_an_error_naming_the_input(world, tmp_path, where):
    """--video naming a folder (even one called x.mp4) or a list without videos stops with one line."""
    given = tmp_path / where.replace("only_a_folder_named_", "")
    if where == "list.txt":
        given.write_text("\n")
    else:
        given.mkdir()
        if where.startswith("only_a_folder"):
            (given / "x.mp4").mkdir()  # a folder, not a video
    with pytest.raises(SystemExit) as e:
        run(world, given)
    assert e.value.code == f"error: {given}: no videos in it"


@pytest.mark.parametrize("option", ["prompt", "negative_prompt", "caption_prompt"])
def test_prompt_too_long(world, tmp_path, option):
    """The user's own text is refused whole, before anything runs: one line."""
    video = make_video(tmp_path / "clip.mp4")
    with pytest.raises(SystemExit) as e:
        run(world, video, f"--{option}={'a very long prompt ' * 20}")
    assert e.value.code.startswith(f"error: --{option} 'a very long prompt") and "is longer than the 24 tokens" in e.value.code
    assert "\n" not in e.value.code and not list(tmp_path.glob("*.vatt*"))


def test_failed_write_leaves_nothing_half_written(world, tmp_path, capsys, monkeypatch):
    """The mux dies after the video packets went out: no .vatt.mp4 (nor its temporary) remains."""
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(av, "AudioFrame", SimpleNamespace(from_ndarray=broken))
    video = make_video(tmp_path / "clip.mp4")
    assert run(world, video) == 1
    assert f"failed: {video}: could not write its outputs (disk full)" in capsys.readouterr().err
    assert not (tmp_path / "clip.vatt.mp4").exists() and not leftovers(tmp_path)


def _checkpoints(world, folder, stage1, stage2):
    folder.mkdir()  # stage1.pt names its base LLM (config["llm"], as given): nothing else is needed beside it
    for name, src in (("stage1.pt", stage1), ("stage2.pt", stage2)):
        if isinstance(src, bytes):
            (folder / name).write_bytes(src)
        elif src:
            shutil.copy(world / "out" / src, folder / name)
    return folder


@pytest.mark.parametrize("stage1,stage2,problem", [
    (None, None, "stage1.pt: no such checkpoint"),
    ("stage1.pt", None, "stage2.pt: no such checkpoint"),
    ("stage2.pt", "stage2.pt", "stage1.pt: not a stage-1 (Converter) checkpoint (a 'vatt-audio' one)"),
    ("stage1.pt", "stage1.pt", "stage2.pt: not a stage-2 (VATT Audio) checkpoint (a 'vatt-converter' one)"),
    (b"not a checkpoint", "stage2.pt", "stage1.pt: not a readable stage-1 (Converter) checkpoint (not a PyTorch checkpoint file)"),
    (b"", "stage2.pt", "stage1.pt: not a readable stage-1 (Converter) checkpoint (empty file)"),
    ("stage1.pt", b"", "stage2.pt: not a readable stage-2 (VATT Audio) checkpoint (empty file)"),
])
def test_bad_checkpoint_gives_one_line(world, tmp_path, stage1, stage2, problem):
    ckpt = _checkpoints(world, tmp_path / "ckpt", stage1, stage2)
    with pytest.raises(SystemExit) as e:
        sample.main([f"--ckpt_dir={ckpt}", f"--video={world}/clips/test_00000.mp4"])
    assert e.value.code.startswith(f"error: {ckpt}/") and problem in e.value.code and "\n" not in e.value.code


def test_wrong_checkpoint_exit_status(world, tmp_path):
    """The real process: exit status 1 and the error as stderr's last line."""
    ckpt = _checkpoints(world, tmp_path / "ckpt", "stage2.pt", "stage2.pt")
    r = subprocess.run([sys.executable, "sample.py", f"--ckpt_dir={ckpt}", f"--video={world}/clips/test_00000.mp4"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == \
        f"error: {ckpt}/stage1.pt: not a stage-1 (Converter) checkpoint (a 'vatt-audio' one)"


# -----------------------------------------------------------------------------
# many videos


def test_batched_folder_equals_single_calls(world, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    clips = sorted(p for split in ("train", "test") for p in (world / "clips").glob(f"{split}_*.mp4"))
    assert len(clips) == 8
    for clip in clips:
        shutil.copy(clip, folder)
    assert run(world, folder, "--batch_size=8", f"--out_dir={tmp_path / 'batched'}") == 0
    for clip in clips:
        assert run(world, folder / clip.name, f"--out_dir={tmp_path / 'single'}") == 0
    for clip in clips:
        name = clip.stem + ".vatt"
        assert np.array_equal(read_wav(tmp_path / "batched" / f"{name}.wav"), read_wav(tmp_path / "single" / f"{name}.wav"))
        batched, single = (json.loads((tmp_path / d / f"{name}.json").read_text()) for d in ("batched", "single"))
        assert batched["caption"] == single["caption"]


def test_list_file_of_mixed_videos_skips_and_reports_failures(world, tmp_path, capsys):
    """Videos of 0.5 s and 3 s (one and two windows) and a broken one in one batch: the good ones
    come out as from single calls, the broken one is reported at the end, the exit is non-zero."""
    short, long_ = make_video(tmp_path / "short.mkv", seconds=0.5, codec="mpeg4"), make_video(tmp_path / "long.mp4", seconds=3.0)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    listing = tmp_path / "videos.txt"
    listing.write_text(f"{short}\n{broken}\n{long_}\n")
    assert run(world, listing, f"--out_dir={tmp_path / 'batched'}") == 1
    err = capsys.readouterr().err.splitlines()  # the failures are reported at the end
    assert err[-2].startswith(f"failed: {broken}: not a readable video") and err[-1] == "1 of 3 videos failed"
    assert sorted(p.name for p in (tmp_path / "batched").iterdir()) == \
        sorted(f"{s}.vatt.{e}" for s in ("short", "long") for e in ("json", "mp4", "wav"))
    for video in (short, long_):
        assert run(world, video, f"--out_dir={tmp_path / 'single'}") == 0
        name = video.stem + ".vatt.wav"
        assert np.array_equal(read_wav(tmp_path / "batched" / name), read_wav(tmp_path / "single" / name))
    check_outputs(long_, tmp_path / "batched" / "long.vatt")
