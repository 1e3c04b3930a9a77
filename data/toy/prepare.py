"""
Generates the toy audio-visual data set: real mp4 files (H.264 video + AAC audio) and a
V2A-Instruction-style JSON, so that the pipeline reads the toy world exactly like real data.

    python data/toy/prepare.py                                  # 2000 train + 200 val + 200 test clips in data/toy
    python data/toy/prepare.py --n_train=4 --n_val=1 --n_test=2 --out_dir=/tmp/toy   # a quick look
    python data/toy/prepare.py --seconds=10 --fps=30            # longer clips, another frame rate
    python data/toy/prepare.py --help                           # every option with its default

Output:
    {out_dir}/clips/{split}_{i:05d}.mp4
    {out_dir}/v2a_instruction.json: a list of {"video_path" (relative to the JSON's folder),
        "output" (the caption), "split", "class", "pitch", "f0", "onsets", "count", "swapped", "edit"}

Every clip is seeded from (seed, split, index) alone, so a clip does not depend on how many
clips are made, and an interrupted run resumes: clips whose file exists are not encoded again
(so after changing seconds / fps / size / seed, write to a fresh out_dir). The default set
(2200 clips, 60 MB) takes about 30 s on 2 cores.

Reading the audio back: FFmpeg's AAC encoder puts 1024 priming samples in front of the audio and
the mp4 muxer records them in an edit list; FFmpeg's demuxer and decoder drop them again. So
decoding the audio stream with PyAV (container.decode(audio=0)), passing every frame through
av.AudioResampler(format="flt", layout="mono", rate=16000) (then flushing it with
resample(None)) and concatenating gives audio that starts at t = 0 (the first decoded frame has
pts 0), aligned with the video to the sample; only the end carries up to 1023 samples of AAC
padding, so cut it to round(seconds * 16000) samples.
"""
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing import Pool

import av
import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repo root
from data.toy.world import SAMPLE_RATE, make_caption, render_clip, swap_pitch  # noqa: E402
from utils import parse_config, record_timing  # noqa: E402


@dataclass
class Config:
    preset: str = "toy"
    n_train: int = 2000  # training clips
    n_test: int = 200  # test clips: the final table only
    n_val: int = 200  # validation clips: every toy setting is tuned on these, never on the test clips
    seconds: float = 2.0  # clip length (>= 0.8 s; strikes lie on the 5 fps grid, see world.py)
    fps: int = 25  # frame rate of the mp4 files (the model resamples to 5 fps; keep >= 8)
    size: int = 128  # video width = height in pixels
    seed: int = 1337  # master seed; clip i of a split is seeded from (seed, split, i)
    out_dir: str = "data/toy"  # where clips/ and v2a_instruction.json go
    workers: int = os.cpu_count() or 1  # encoding processes
    crf: int = 18  # x264 quality (lower = better, larger files); 18 is visually lossless


SPLITS = ("train", "test", "val")  # the index seeds a split's clips: append, never reorder


def write_mp4(path, frames, audio, fps, crf, sr=SAMPLE_RATE):
    """H.264 (yuv420p) video + AAC mono audio, written under a temporary name and then renamed, so
    a file that exists is always complete."""
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with av.open(tmp, "w", format="mp4") as container:
        # one thread each: the clips are already encoded in parallel, one per process
        video = container.add_stream("libx264", rate=fps,
                                     options={"crf": str(crf), "preset": "veryfast", "threads": "1"})
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        # FFmpeg's "fast" AAC coder is 4x quicker than its default; at the default 69 kb/s for
        # 16 kHz mono, world.analyze still hears every clip right (tests/test_toy_world.py)
        sound = container.add_stream("aac", rate=sr, layout="mono", options={"aac_coder": "fast"})
        for image in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode())
        chunk = 1024  # the AAC frame size
        for start in range(0, len(audio), chunk):
            frame = av.AudioFrame.from_ndarray(audio[None, start: start + chunk], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = sr, start, Fraction(1, sr)
            container.mux(sound.encode(frame))
        container.mux(sound.encode())
    os.replace(tmp, path)


def make_clip(job):
    """Renders clip (split, i), encodes it unless its file exists, returns its JSON entry."""
    cfg, split, i = job
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), i])
    frames, audio, meta = render_clip(rng, cfg.seconds, cfg.fps, cfg.size, SAMPLE_RATE)
    caption = make_caption(meta["class"], meta["pitch"], meta["count"], rng)
    name = f"clips/{split}_{i:05d}.mp4"
    path = os.path.join(cfg.out_dir, name)
    if not os.path.exists(path):
        write_mp4(path, frames, audio, cfg.fps, cfg.crf)
    # `swapped`: the caption with its pitch words swapped, the prompt of the demo's test of whether
    # the text, not the video, sets the register, and the negative prompt of its negative-prompt test;
    # `edit`: the range of its editing test (sample.py --edit), around the first strike: from 0.1 s
    # before it to 0.3 s after (the next strike comes 0.4 s after it at the soonest)
    first = meta["onsets"][0]
    return {"video_path": name, "output": caption, "split": split, **meta, "swapped": swap_pitch(caption),
            "edit": f"{round(first - 0.1, 3):g}:{round(first + 0.3, 3):g}"}


def main(argv):
    cfg = parse_config(Config, {"toy": {}}, argv)
    os.makedirs(os.path.join(cfg.out_dir, "clips"), exist_ok=True)
    jobs = [(cfg, split, i) for split, n in zip(SPLITS, (cfg.n_train, cfg.n_test, cfg.n_val)) for i in range(n)]
    t0 = time.time()
    with Pool(cfg.workers) as pool:
        entries = list(tqdm(pool.imap(make_clip, jobs, chunksize=8), total=len(jobs), desc="clips"))
    path = os.path.join(cfg.out_dir, "v2a_instruction.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:  # one entry per line: easy to grep and diff
        f.write("[\n" + ",\n".join(json.dumps(e) for e in entries) + "\n]\n")
    os.replace(path + ".tmp", path)

    print(f"{len(entries)} clips in {time.time() - t0:.1f} s -> {path}")
    record_timing(cfg.out_dir, "prepare", t0)
    for key in ("split", "class", "pitch", "count"):
        print(f"  {key:6s}", dict(sorted(Counter(e[key] for e in entries).items())))
    for e in entries[:3]:
        print(f"  {e['video_path']}: {e['output']!r} onsets {e['onsets']}")


if __name__ == "__main__":
    main(sys.argv[1:])
