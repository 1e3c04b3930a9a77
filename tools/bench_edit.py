"""
What an edit (sample.py --edit) costs against the video's length: the same range redone in videos
of different lengths, each edit a `sample.py` command of its own, timed from start to end (the
models' loading included), with its peak resident memory (the process's maxrss). Only the windows
that cover the range are decoded, so the time should grow with the range, not with the video;
what still reads the whole video is its sound (decoded, spliced, written) and the muxed copy of
its picture. The videos are made here: a moving picture at 25 fps and a stereo 44.1-kHz AAC
track of tones and clicks, as a user's clip would be. A Markdown table is printed and
<out_dir>/bench_edit.json written (docs/sampling-speed.md, "Editing").

    python tools/bench_edit.py                                  # out/toy's models, 10 s and 240 s
    python tools/bench_edit.py --ckpt_dir=out/toy-seed1 --lengths=10,60,240 --edit=4:6
"""
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root
from utils import parse_config, save_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Config:
    ckpt_dir: str = "out/toy"  # make demo's models
    out_dir: str = "out/bench-edit"  # the videos, the edits and bench_edit.json
    lengths: str = "10,240"  # the videos' lengths in seconds
    edit: str = "4:6"  # the range every video gets redone, START:END in seconds
    prompt: str = "a low and deep bell rings twice"
    repeats: int = 2  # edits per video; the fastest is reported (the first pays for cold caches)
    size: int = 128  # the picture's side in pixels


def make_video(path, seconds, size, rate=44100, fps=25):
    """A moving picture and a stereo tone with a click every 0.7 s, written a second at a time."""
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = size, size, "yuv420p"
        a = c.add_stream("aac", rate=rate, layout="stereo")
        for s in range(int(seconds)):
            for i in range(fps):
                img = np.full((size, size, 3), (s * fps + i) * 7 % 256, np.uint8)
                img[:, (i * 5) % size] = 255
                for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(p)
            t = s + np.arange(rate) / rate
            tone = 0.2 * np.sin(2 * np.pi * 330 * t) + 0.5 * (t % 0.7 < 0.01)
            frame = av.AudioFrame.from_ndarray(np.stack([tone, 0.5 * tone]).astype(np.float32), format="fltp",
                                               layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = rate, s * rate, Fraction(1, rate)
            for p in a.encode(frame):
                c.mux(p)
        for p in [*v.encode(None), *a.encode(None)]:
            c.mux(p)
    return path


def timed_edit(video, out, args):
    """One sample.py --edit run: (seconds, peak resident memory in GB)."""
    cmd = [sys.executable, str(ROOT / "sample.py"), f"--ckpt_dir={args.ckpt_dir}", f"--video={video}",
           f"--edit={args.edit}", f"--prompt={args.prompt}", f"--out_dir={out}"]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{stderr.decode(errors='replace')[-2000:]}")
    return time.perf_counter() - t0, usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def main(argv=None):
    args = parse_config(Config, {"toy": {}}, argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seconds in map(float, args.lengths.split(",")):
        video = out / f"video_{seconds:g}s.mp4"
        if not video.is_file():
            make_video(video, seconds, args.size)
        runs = [timed_edit(video, out / "edits", args) for _ in range(args.repeats)]
        rows.append(dict(video_s=seconds, edit=args.edit, wall_s=min(r[0] for r in runs),
                         peak_rss_gb=max(r[1] for r in runs)))
    base = rows[0]
    print(f"| video | edit {args.edit} s: wall | x the {base['video_s']:g}-s video's | peak memory | x |\n"
          "|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['video_s']:g} s | {r['wall_s']:.2f} s | {r['wall_s'] / base['wall_s']:.2f} | "
              f"{r['peak_rss_gb']:.2f} GB | {r['peak_rss_gb'] / base['peak_rss_gb']:.2f} |")
    save_json(dict(ckpt_dir=args.ckpt_dir, rows=rows), out / "bench_edit.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
