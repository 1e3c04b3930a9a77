"""
How much memory `sample.py --video` needs for a short and a long video: a benchmark, not a test.
It writes two synthetic 1080p videos (a moving pattern, H.264; by default 30 s and 10 min, 5
frames a second: the features are read at 5 fps whatever the source's rate), samples each with the
toy checkpoints in its own process, and prints each process's peak resident memory and their
ratio (close to 1 when memory does not grow with the video's length).

    make demo && python tools/toy/video_memory.py            # the toy checkpoints in out/toy
    python tools/toy/video_memory.py --long_s=120            # a quicker look
"""
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repo root
from utils import parse_config  # noqa: E402


@dataclass
class Config:
    preset: str = "toy"
    ckpt_dir: str = "out/toy"  # make demo's checkpoints
    out_dir: str = "out/video-memory"  # the two videos and their outputs
    short_s: float = 30.0
    long_s: float = 600.0
    width: int = 1920
    height: int = 1080
    fps: int = 5  # the source's frame rate


def make_video(path, seconds, cfg):
    """A moving gradient, H.264 at the source size: cheap to encode, real to decode."""
    if Path(path).exists():
        return
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=cfg.fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = cfg.width, cfg.height, "yuv420p"
        x = np.arange(cfg.width)[None, :, None]
        for i in range(round(seconds * cfg.fps)):
            img = np.broadcast_to((x + 4 * i) % 256, (cfg.height, cfg.width, 3)).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def peak_rss(video, cfg):
    """Samples `video` in a fresh process; returns (its peak RSS in MB, seconds)."""
    code = ("import resource, sys, sample; rc = sample.main(sys.argv[1:]); "
            "print('peak_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", code, f"--ckpt_dir={cfg.ckpt_dir}", f"--video={video}",
                        f"--out_dir={cfg.out_dir}", "--prompt=a low and deep bell rings twice"],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    if r.returncode != 0:
        sys.exit(f"error: sampling {video} failed:\n{r.stderr[-2000:]}")
    kb = int(next(line.split()[1] for line in r.stdout.splitlines() if line.startswith("peak_kb")))
    return kb / 1024, time.time() - t0


def main(argv=None):
    cfg = parse_config(Config, {"toy": {}}, argv)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, seconds in (("short", cfg.short_s), ("long", cfg.long_s)):
        video = out / f"{name}-{seconds:g}s-{cfg.height}p.mp4"
        make_video(video, seconds, cfg)
        mb, wall = peak_rss(video, cfg)
        rows.append((video.name, seconds, mb, wall))
        print(f"{video.name}: peak RSS {mb:.0f} MB, {wall:.0f} s", flush=True)
    print(f"long / short peak RSS: {rows[1][2] / rows[0][2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
