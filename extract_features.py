"""
Stage 0 of VATT: turn videos into the two arrays the models train on.

  video -> frames at 5 fps -> CLIP image embeddings   features/video/<stem>.npy  float16 (T*5, D)
  audio -> 16 kHz mono     -> codec tokens (4 x 50 Hz) features/audio/<stem>.npy  int16   (4, T*50)

The encoders are the authors' (EVA02-CLIP-L/14-336, 50 x 768 per 10 s clip, paper §4; AudioGen's
16 kHz EnCodec, 4 codebooks, 500 frames per 10 s, paper §3.2.1). Their released VGGSound files
use another layout (two folders, tokens stored time-first as (500, 4), no meta.json); the trainers
read that layout as it is (--features_dir=the folder they are unzipped in; see authors_meta and
stage1_caption.FeatureFiles), so they need no extraction. Every clip is cut or padded to one fixed window
(`seconds`): frames past the end of a short video repeat its last frame, audio is padded with
silence, longer clips are cropped from their start.

Toy world (CPU, ~80 s):
    python extract_features.py --preset=toy
Real scale, one GPU (EVA02-CLIP and AudioGen weights are fetched from the Hugging Face hub, or
point --clip_pretrained / --codec at local files):
    python extract_features.py --preset=vggsound --input=vggsound/videos --out_dir=vggsound/features
Many GPUs (each rank takes every WORLD_SIZE-th clip; finished clips are skipped, so a killed job
simply resumes):
    torchrun --nproc_per_node=8 extract_features.py --preset=vggsound --input=list.txt
"""
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from codec import AudioGenCodecConfig, load_codec
from utils import atomic_path, parse_config, pick_device, print0, record_timing, save_json

# -----------------------------------------------------------------------------
# config


@dataclass
class Config:
    preset: str = "toy"
    # a V2A-Instruction JSON (its `video_path`s are relative to the JSON), a folder of videos,
    # or a .txt list of video paths (one per line)
    input: str = "data/toy/v2a_instruction.json"
    out_dir: str = "data/toy/features"
    fps: float = 5.0  # frame rate of the visual features (the authors extract at 5 fps)
    seconds: float = 2.0  # fixed window per clip: 10 s for VGGSound, 2 s for the toy world
    # open_clip model name and pretrained tag (or a local checkpoint file). The toy preset uses a
    # tiny ViT registered from data/toy/toy-vit.json with random weights (no download possible).
    clip_model: str = "toy-vit"
    clip_pretrained: str = ""
    clip_seed: int = 0  # seeds the random toy ViT, so features are reproducible
    # "toy" = the toy world's DSP codec; otherwise a hub id or local path of AudioGen's
    # compression_state_dict.bin (see codec.py)
    codec: str = "toy"
    batch_size: int = 16  # clips per forward pass
    num_workers: int = 2  # DataLoader processes that decode videos with PyAV
    device: str = "auto"


PRESETS = {
    "toy": {},
    "vggsound": dict(input="vggsound/videos", out_dir="vggsound/features", seconds=10.0,
                     clip_model="EVA02-L-14-336", clip_pretrained="merged2b_s6b_b61k",
                     codec="facebook/audiogen-medium", batch_size=32, num_workers=8),
}

TOY_VIT = Path(__file__).parent / "data" / "toy" / "toy-vit.json"


def authors_meta():
    """What our meta.json would say about the authors' released VGGSound features and tokens
    (vggsound_clip_5fps.zip, meta_pretrain_vgg_encodec_tokens.zip), which ship without one: they
    were made with the vggsound preset's encoders, 5 fps EVA02-CLIP-L/14-336 over 10 s and AudioGen's
    codec, whose sizes come from its config without building it."""
    codec = AudioGenCodecConfig()
    return {**asdict(Config(**PRESETS["vggsound"])), "preset": "vggsound",
            "feature_dim": 768,  # EVA02-CLIP-L/14's image embedding width (their projector is Linear(768, d))
            "sample_rate": codec.sample_rate, "frame_rate": codec.sample_rate // math.prod(codec.ratios),
            "n_q": codec.n_q, "bins": codec.bins}

# -----------------------------------------------------------------------------
# reading videos with PyAV. Each problem becomes one VideoError line naming the file.


class VideoError(ValueError):
    pass


def _open(path):
    if not os.path.isfile(path):
        raise VideoError(f"{path}: no such file")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise VideoError(f"{path}: not a readable video ({e})") from None


def load_frames(path, fps, seconds=None):
    """Frames resampled to `fps`: for each target time k/fps the decoded frame nearest to it.
    Works for any container, codec and (variable) frame rate, since it reads each frame's
    timestamp instead of trusting a nominal rate. Returns (frames uint8 (N, H, W, 3), duration):
    with `seconds` N = round(seconds * fps) (holding the last frame past the end), without it
    N covers the whole video."""
    with _open(path) as container:
        if not container.streams.video:
            raise VideoError(f"{path}: no video stream")
        stream = container.streams.video[0]
        origin = stream_origin(container)
        n_max = round(seconds * fps) if seconds is not None else None
        picked, prev, prev_t, t, last_dt = [], None, None, None, 1.0 / fps
        try:
            for frame in container.decode(stream):
                t = frame.time - origin if frame.time is not None else len(picked) / fps
                if prev_t is not None and t > prev_t:
                    last_dt = t - prev_t
                if frame.duration and frame.time_base:
                    # the frame's own duration (its packet's) when the container stores one: with a
                    # variable frame rate the last frame need not last as long as the gap before it,
                    # and this is where the video ends for a player (and for the copied stream)
                    last_dt = float(frame.duration * frame.time_base)
                # every target time passed by this frame takes the nearer of it and its predecessor
                while (n_max is None or len(picked) < n_max) and len(picked) / fps <= t:
                    target = len(picked) / fps
                    use_prev = prev is not None and target - prev_t < t - target
                    picked.append(prev if use_prev else frame)
                if n_max is not None and len(picked) == n_max:
                    break
                prev, prev_t = frame, t
        except av.error.FFmpegError as e:
            raise VideoError(f"{path}: corrupt video stream ({e})") from None
        if prev is None and not picked:
            raise VideoError(f"{path}: the video stream has no frames")
        duration = (t if t is not None else 0.0) + last_dt
        last = picked[-1] if picked else prev
        n_total = n_max if n_max is not None else max(1, round(duration * fps))
        picked += [last] * (n_total - len(picked))  # hold the last frame to fill the window
        frames = np.stack([f.to_ndarray(format="rgb24") for f in picked])
    return frames, duration


def load_audio(path, sr, seconds=None):
    """The first audio track as float32 mono at `sr` Hz (FFmpeg's resampler), aligned to the
    container's start so it stays in sync with load_frames; cut or zero-padded to `seconds`."""
    with _open(path) as container:
        if not container.streams.audio:
            raise VideoError(f"{path}: no audio track")
        origin = stream_origin(container)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        chunks, start = [], None
        try:
            for frame in container.decode(container.streams.audio[0]):
                if start is None:
                    start = frame.time - origin if frame.time is not None else 0.0
                chunks += [f.to_ndarray()[0] for f in resampler.resample(frame)]
            chunks += [f.to_ndarray()[0] for f in resampler.resample(None)]
        except av.error.FFmpegError as e:
            raise VideoError(f"{path}: corrupt audio stream ({e})") from None
    if not chunks:
        raise VideoError(f"{path}: the audio track is empty")
    wav = np.concatenate(chunks).astype(np.float32)
    lead = round((start or 0.0) * sr)  # audio that starts after the container start gets leading silence
    wav = np.concatenate([np.zeros(lead, np.float32), wav]) if lead > 0 else wav[-lead:]
    if seconds is not None:
        n = round(seconds * sr)
        wav = np.pad(wav[:n], (0, max(0, n - len(wav))))
    return wav


def stream_origin(container):
    """Both streams are timed from the container's start time (microseconds in FFmpeg)."""
    return container.start_time / 1e6 if container.start_time is not None else 0.0


# -----------------------------------------------------------------------------
# the two encoders


def build_visual_encoder(cfg, device):
    """open_clip image tower + its own preprocessing. Returns (model, preprocess); the features
    are `model.encode_image` outputs: the projected image embedding (768-d for EVA02-L)."""
    import open_clip  # imported here: it is slow to import and only this stage needs it

    if cfg.clip_model == "toy-vit":
        open_clip.add_model_config(str(TOY_VIT))
    torch.manual_seed(cfg.clip_seed)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            cfg.clip_model, pretrained=cfg.clip_pretrained or None)
    except Exception as e:  # noqa: BLE001 (hub / file errors come in many types)
        sys.exit(f"error: could not load open_clip {cfg.clip_model!r} / {cfg.clip_pretrained!r} ({e}). "
                 "Without internet, download the checkpoint and pass --clip_pretrained=/path/to/file.")
    return model.eval().to(device), preprocess


@torch.no_grad()
def encode_frames(model, frames, device):
    """frames: preprocessed images (N, 3, S, S) -> (N, D) image embeddings."""
    return model.encode_image(frames.to(device)).float().cpu()


def preprocess_frames(preprocess, frames):
    """uint8 (N, H, W, 3) -> (N, 3, S, S) with open_clip's own resize, crop and normalisation."""
    return torch.stack([preprocess(Image.fromarray(f)) for f in frames])


# -----------------------------------------------------------------------------
# the clip list: a V2A-Instruction JSON, a folder, or a list file


def list_videos(input_path):
    p = Path(input_path)
    if p.suffix == ".json":
        return [str(p.parent / e["video_path"]) for e in json.loads(p.read_text())]
    if p.is_dir():
        exts = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v"}
        return sorted(str(f) for f in p.iterdir() if f.suffix.lower() in exts)
    if p.suffix == ".txt":
        return [line.strip() for line in p.read_text().splitlines() if line.strip()]
    sys.exit(f"error: {input_path}: expected a .json, a .txt list or a folder of videos")


class Clips(torch.utils.data.Dataset):
    """Decodes one clip in a DataLoader worker; a broken clip comes back as its error line."""

    def __init__(self, paths, cfg, preprocess, sample_rate):
        self.paths, self.cfg, self.preprocess, self.sr = paths, cfg, preprocess, sample_rate

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        path = self.paths[i]
        try:
            frames, _ = load_frames(path, self.cfg.fps, self.cfg.seconds)
            wav = load_audio(path, self.sr, self.cfg.seconds)
        except VideoError as e:
            return path, str(e)
        return path, (preprocess_frames(self.preprocess, frames), torch.from_numpy(wav))


# -----------------------------------------------------------------------------


def main(argv=None):
    cfg = parse_config(Config, PRESETS, argv)
    t0 = time.time()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(cfg.device)
    out = Path(cfg.out_dir)
    model, preprocess = build_visual_encoder(cfg, device)
    codec = load_codec(cfg.codec).to(device)
    feature_dim = model.encode_image(torch.zeros(1, 3, *preprocess.transforms[1].size, device=device)).shape[-1]
    save_json({**asdict(cfg), "feature_dim": feature_dim, "sample_rate": codec.sample_rate,
               "frame_rate": codec.frame_rate, "n_q": codec.n_q, "bins": codec.bins}, out / "meta.json")

    def done(path):
        stem = Path(path).stem
        return (out / "video" / f"{stem}.npy").exists() and (out / "audio" / f"{stem}.npy").exists()

    paths = list_videos(cfg.input)[rank::world]  # deterministic shard per rank
    todo = [p for p in paths if not done(p)]
    print0(f"{len(paths)} clips for this rank, {len(paths) - len(todo)} already done")
    loader = torch.utils.data.DataLoader(
        Clips(todo, cfg, preprocess, codec.sample_rate), batch_size=cfg.batch_size,
        num_workers=cfg.num_workers, collate_fn=list)
    failed = []
    for batch in tqdm(loader, desc="extract", disable=rank != 0):
        good = [(p, x) for p, x in batch if not isinstance(x, str)]
        failed += [(p, x) for p, x in batch if isinstance(x, str)]
        if not good:
            continue
        frames = torch.cat([x[0] for _, x in good])  # (B*N, 3, S, S)
        feats = encode_frames(model, frames, device).view(len(good), -1, feature_dim)  # (B, N, D)
        with torch.no_grad():
            wavs = torch.stack([x[1] for _, x in good])[:, None].to(device)  # (B, 1, S)
            codes = codec.encode(wavs).cpu()  # (B, n_q, T)
        for (path, _), f, c in zip(good, feats, codes):
            stem = Path(path).stem
            for sub, arr in (("video", f.numpy().astype(np.float16)), ("audio", c.numpy().astype(np.int16))):
                with atomic_path(out / sub / f"{stem}.npy") as tmp:
                    with open(tmp, "wb") as fh:
                        np.save(fh, arr)
    for path, err in failed:
        print(f"skipped {err}", file=sys.stderr)
    print0(f"done: {len(todo) - len(failed)} extracted, {len(failed)} skipped -> {out}")
    if rank == 0:
        record_timing(out, "extract_features", t0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
