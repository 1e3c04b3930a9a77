"""
Stage 0 of VATT: turn videos into the two arrays the models train on (paper §4, §3.2.1).

  video -> frames at 5 fps -> CLIP image embeddings   features/video/<stem>.npy  float16 (T*5, D)
  audio -> 16 kHz mono     -> codec tokens (4 x 50 Hz) features/audio/<stem>.npy  int16   (4, T*50)

The encoders are the authors' (EVA02-CLIP-L/14-336, 50 x 768 per 10 s clip; AudioGen's 16 kHz
EnCodec, 4 codebooks, 500 frames per 10 s). Every clip is cut or padded to one fixed window
(`seconds`: 10 s for VGGSound, as the released features): frames past the end of a short video
repeat its last frame, audio is padded with silence, longer clips are cropped from their start.
The trainers also read the authors' released VGGSound files as they are (FeatureFiles), and
sample.py takes this file's video encoder (VideoFeatures) and writers (write_wav, mux).

    python extract_features.py --preset=toy                 # the toy world (CPU, ~80 s)
    # one GPU (EVA02-CLIP and AudioGen weights from the Hugging Face hub, or local files:
    # --clip_pretrained, --codec)
    python extract_features.py --preset=vggsound --input=vggsound/videos --out_dir=vggsound/features
    # many GPUs: each rank takes every WORLD_SIZE-th clip; finished clips are skipped, so a killed job resumes
    torchrun --nproc_per_node=8 extract_features.py --preset=vggsound --input=list.txt
"""
import functools
import hashlib
import io
import json
import logging
import math
import os
import sys
import time
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from codec import AudioGenCodecConfig, load_codec
from utils import atomic_path, autocast, parse_config, pick_device, print0, record_timing, save_json

# -----------------------------------------------------------------------------
# the two inputs of §4: frames at 5 fps and their CLIP embeddings; the audio and its codec tokens


class Frames:
    """A video's frames resampled to `fps`, one at a time: for each target time k/fps the decoded
    frame nearest to it, as uint8 RGB (H, W, 3). Works for any container, codec and (variable)
    frame rate, since it reads each frame's timestamp instead of trusting a nominal rate. With
    `seconds`, exactly round(seconds * fps) frames (the last held past the end); without, the
    whole video; from `start` seconds on (the decoder seeks there). Nothing but the current
    decoded frames is held, so memory does not grow with the video's length, and a frame held over
    several target times (a still, a gap in a variable-rate video) is converted once. `duration`
    (seconds) is set once the frames have all been read."""

    def __init__(self, path, fps, seconds=None, start=0.0):
        self.path, self.fps, self.seconds, self.start, self.duration = path, fps, seconds, start, None

    def __iter__(self):
        path, fps = self.path, self.fps
        converted = (None, None)  # (a decoded frame, its RGB array)

        def rgb(frame):
            nonlocal converted
            if converted[0] is not frame:
                converted = (frame, frame.to_ndarray(format="rgb24"))
            return converted[1]

        with _open(path) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            origin, start = stream_origin(container), self.start
            n_max = round(self.seconds * fps) if self.seconds is not None else None
            n, last, prev, prev_t, t, last_dt = 0, None, None, None, None, 1.0 / fps
            if start > 0:  # from the keyframe at or before `start`: the frames before it are passed over
                container.seek(int((start + origin) / stream.time_base), stream=stream, backward=True)
            try:
                for frame in container.decode(stream):
                    t = frame.time - origin if frame.time is not None else n / fps
                    if prev_t is not None and t > prev_t:
                        last_dt = t - prev_t
                    if frame.duration and frame.time_base:
                        # the frame's own duration (its packet's) when the container stores one: with a
                        # variable frame rate the last frame need not last as long as the gap before it,
                        # and this is where the video ends for a player (and for the copied stream)
                        last_dt = float(frame.duration * frame.time_base)
                    # every target time passed by this frame takes the nearer of it and its predecessor
                    while (n_max is None or n < n_max) and start + n / fps <= t:
                        target = start + n / fps
                        last = prev if prev is not None and target - prev_t < t - target else frame
                        n += 1
                        yield rgb(last)
                    if n_max is not None and n == n_max:
                        break
                    prev, prev_t = frame, t
            except av.error.FFmpegError as e:
                raise VideoError(f"{path}: corrupt video stream ({e})") from None
            if prev is None and last is None:
                raise VideoError(f"{path}: the video stream has no frames")
            self.duration = (t if t is not None else 0.0) + last_dt
            n_total = n_max if n_max is not None else max(1, round(self.duration * fps))
            for _ in range(n_total - n):  # hold the last frame to fill the window
                yield rgb(last if last is not None else prev)


def load_audio(path, sr, seconds=None):
    """The first audio track as float32 mono at `sr` Hz (FFmpeg's resampler), aligned to the
    container's start so it stays in sync with load_frames; cut or zero-padded to `seconds`."""
    wav = decode_audio(path, "flt", "mono", sr)[0][0]
    if seconds is not None:
        n = round(seconds * sr)
        wav = np.pad(wav[:n], (0, max(0, n - len(wav))))
    return wav


def stream_origin(container):
    """Both streams are timed from the container's start time (microseconds in FFmpeg)."""
    return container.start_time / 1e6 if container.start_time is not None else 0.0


def preprocess_frames(preprocess, frames):
    """uint8 (N, H, W, 3) -> (N, 3, S, S) with open_clip's own resize, crop and normalisation."""
    return torch.stack([preprocess(Image.fromarray(f)) for f in frames])


@torch.no_grad()
def encode_frames(model, frames, device):
    """frames: preprocessed images (N, 3, S, S) -> (N, D) float32 image embeddings (open_clip's
    encode_image: the projected image embedding, 768-d for EVA02-L) on the CPU."""
    return model.encode_image(frames.to(device)).float().cpu()  # (N, D)


@torch.no_grad()
def audio_tokens(codec, wavs):
    """(B, S) mono audio at the codec's rate -> (B, L, T) codec tokens (L = 4 levels at 50 Hz)."""
    return codec.encode(wavs[:, None]).cpu()


# =============================================================================
# Running it: the configuration, reading videos and their errors, the encoders, writing, the layout


@dataclass
class Config:
    preset: str = "toy"
    # a V2A-Instruction JSON (its `video_path`s are relative to the JSON), a folder of videos,
    # or a .txt list of video paths (one per line)
    input: str = "data/toy/v2a_instruction.json"
    out_dir: str = "data/toy/features"
    fps: float = 5.0  # frame rate of the visual features (the authors extract at 5 fps)
    seconds: float = 2.0  # fixed window per clip: 10 s for VGGSound, 2 s for the toy world
    # open_clip model name and pretrained tag (or a local checkpoint file). A path to an open_clip
    # model config (.json) registers that architecture under its file name: the toy preset's tiny
    # ViT, with random weights (no download possible)
    clip_model: str = "data/toy/toy-vit.json"
    clip_pretrained: str = ""
    clip_seed: int = 0  # seeds the random toy ViT, so features are reproducible
    # a hub id or local path of AudioGen's compression_state_dict.bin, or "module:Class" for a codec
    # with EnCodec's interface (the toy world's DSP codec); see codec.load_codec
    codec: str = "data.toy.codec:ToyCodec"
    batch_size: int = 16  # clips per forward pass
    num_workers: int = 2  # DataLoader processes that decode videos with PyAV
    strict: bool = False  # a video that cannot be read stops the run (default: skipped, listed at the end, exit 1)
    device: str = "auto"


PRESETS = {
    "toy": {},
    "vggsound": dict(input="vggsound/videos", out_dir="vggsound/features", seconds=10.0,
                     clip_model="EVA02-L-14-336", clip_pretrained="merged2b_s6b_b61k",
                     codec="facebook/audiogen-medium", batch_size=32, num_workers=8),
}


# -----------------------------------------------------------------------------
# reading videos with PyAV (each problem one VideoError line naming the file); the visual encoder


class VideoError(ValueError):
    pass


def _open(path):
    if not os.path.isfile(path):
        raise VideoError(f"{path}: no such file")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise VideoError(f"{path}: not a readable video ({e})") from None


def decode_audio(path, fmt, layout=None, rate=None):
    """The first audio track through FFmpeg's resampler into sample format `fmt` ("flt", "fltp"),
    `layout` and `rate` (None: the track's own), aligned to the container's start (audio that
    starts after it gets leading silence). Returns float32 (channels, samples) and the rate."""
    with _open(path) as container:
        if not container.streams.audio:
            raise VideoError(f"{path}: no audio track")
        stream = container.streams.audio[0]
        origin, rate = stream_origin(container), rate or stream.rate
        resampler = av.AudioResampler(format=fmt, layout=layout or stream.layout.name, rate=rate)
        chunks, start = [], None
        try:
            for frame in container.decode(stream):
                if start is None:
                    start = frame.time - origin if frame.time is not None else 0.0
                chunks += [f.to_ndarray() for f in resampler.resample(frame)]
            chunks += [f.to_ndarray() for f in resampler.resample(None)]
        except av.error.FFmpegError as e:
            raise VideoError(f"{path}: corrupt audio stream ({e})") from None
    if not chunks:
        raise VideoError(f"{path}: the audio track is empty")
    wav = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)  # (channels, samples)
    lead = round((start or 0.0) * rate)
    wav = np.concatenate([np.zeros((len(wav), lead), np.float32), wav], 1) if lead > 0 else wav[:, -lead:]
    return wav, rate


def load_frames(path, fps, seconds=None):
    """Frames (see Frames) all at once: (frames uint8 (N, H, W, 3), duration). For a fixed window
    (`seconds`); a whole video is read a chunk at a time (VideoFeatures)."""
    frames = Frames(path, fps, seconds)
    return np.stack(list(frames)), frames.duration


def build_visual_encoder(cfg, device):
    """open_clip image tower + its own preprocessing. Returns (model, preprocess); the features
    are `model.encode_image` outputs: the projected image embedding (768-d for EVA02-L)."""
    import open_clip  # imported here: it is slow to import and only this stage needs it

    name = cfg.clip_model
    if name.endswith(".json"):  # a model config file: registered under its file name
        open_clip.add_model_config(name)
        name = Path(name).stem
    # A model config file without --clip_pretrained (the toy's ViT) is random by design: open_clip's
    # warning that no weights were loaded is dropped for it, and kept for a named model without weights
    without_random_init_warning = lambda record: "initialized randomly" not in record.getMessage()  # noqa: E731
    if cfg.clip_model.endswith(".json") and not cfg.clip_pretrained:
        logging.getLogger().addFilter(without_random_init_warning)  # open_clip warns on the root logger
    torch.manual_seed(cfg.clip_seed)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=cfg.clip_pretrained or None)
    except Exception as e:  # noqa: BLE001 (hub / file errors come in many types)
        sys.exit(f"error: could not load open_clip {cfg.clip_model!r} / {cfg.clip_pretrained!r} ({e}). "
                 "Without internet, download the checkpoint and pass --clip_pretrained=/path/to/file.")
    finally:
        logging.getLogger().removeFilter(without_random_init_warning)
    return model.eval().to(device), preprocess


class VideoFeatures:
    """Sampling's encoder: a video file -> (features (N, D) at the extraction's frame rate, its
    duration), with the visual encoder the Converter was trained on (rebuilt from the extraction
    settings that stage1.pt stores), the whole video however long, or `seconds` of it from `start`
    (an edit's windows)."""

    def __init__(self, meta, device):
        self.meta, self.device = meta, device
        self.model, self.preprocess = build_visual_encoder(SimpleNamespace(**meta), device)

    def __call__(self, path, start=0.0, seconds=None):
        # the frames are preprocessed and encoded 64 at a time as they are decoded: memory does not
        # grow with the video's length (an hour at 5 fps is 18000 frames)
        frames, feats, chunk = Frames(path, self.meta["fps"], seconds, start), [], []
        for frame in frames:
            chunk.append(frame)
            if len(chunk) == 64:
                feats.append(self.encode(chunk))
                chunk = []
        if chunk:
            feats.append(self.encode(chunk))
        return torch.cat(feats), frames.duration

    def encode(self, frames):
        with autocast(self.device):  # bf16 on a GPU (main says why), float32 elsewhere
            return encode_frames(self.model, preprocess_frames(self.preprocess, frames), self.device)


# -----------------------------------------------------------------------------
# the clip list: a V2A-Instruction JSON, a folder, or a list file


def list_videos(input_path):
    p = Path(input_path)
    if p.suffix == ".json":
        return [str(p.parent / e["video_path"]) for e in json.loads(p.read_text(encoding="utf-8"))]
    if p.is_dir():
        exts = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v"}
        return sorted(str(f) for f in p.iterdir() if f.suffix.lower() in exts and f.is_file())
    if p.suffix == ".txt":
        return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    sys.exit(f"error: {input_path}: expected a .json, a .txt list or a folder of videos")


def refuse_shared_stems(paths):
    """Two videos with one file stem (a.mp4 and a.webm, or two folders) would write the same
    feature files: refused before any work, both paths named."""
    seen = {}
    for path in paths:
        stem = Path(path).stem
        if stem in seen:
            sys.exit(f"error: {seen[stem]} and {path} share the file stem {stem!r}, so their features would "
                     "overwrite each other: rename one")
        seen[stem] = path


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
# writing audio and video: sample.py's outputs


def write_wav(path, pieces, sr, n_samples=None):
    """16-bit PCM wav, atomically: `pieces`, an array or an iterable of arrays (codec.
    decode_windows), written as they come and cut at n_samples; mono (S,) pieces, or (C, S) ones
    of C channels. An array is converted a second at a time: memory stays flat however long."""
    written = 0
    if isinstance(pieces, np.ndarray):
        whole = pieces
        pieces = (whole[..., i: i + sr] for i in range(0, max(1, whole.shape[-1]), sr))
    with atomic_path(path) as tmp:
        with wave.open(tmp, "wb") as f:
            for i, wav in enumerate(pieces):
                if i == 0:
                    f.setnchannels(1 if wav.ndim == 1 else len(wav))
                    f.setsampwidth(2)
                    f.setframerate(sr)
                wav = wav[..., : None if n_samples is None else n_samples - written]
                f.writeframes((np.clip(wav, -1, 1) * 32767).round().astype("<i2").T.tobytes())
                written += wav.shape[-1]


def resample_audio(wav, rate, to):
    """Mono float32 audio at `rate` Hz -> at `to` Hz (FFmpeg's resampler), starting at the same instant."""
    if rate == to:
        return wav
    resampler = av.AudioResampler(format="flt", layout="mono", rate=to)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wav, np.float32)[None], format="flt", layout="mono")
    frame.sample_rate, frame.pts = rate, 0
    return np.concatenate([f.to_ndarray()[0] for f in [*resampler.resample(frame), *resampler.resample(None)]])


def mux(video_path, wav_path, out_base):
    """The original video stream copied packet by packet (no re-encoding) + the audio of a wav file
    (write_wav's) as AAC, read a second at a time, in <out_base>.mp4, or in <out_base>.mkv when
    MP4 cannot hold the video's codec (VP8, raw video, ...): Matroska holds nearly every codec.
    Returns the path written, or None when neither can hold it (nothing is written then)."""
    with av.open(str(video_path)) as src:
        vin = src.streams.video[0]

        def holds(fmt):  # a container that is never started writes nothing
            with av.open(io.BytesIO(), "w", format=fmt) as probe:
                return vin.codec_context.codec.name in probe.supported_codecs

        fmt, ext = next(((f, e) for f, e in (("mp4", ".mp4"), ("matroska", ".mkv")) if holds(f)), (None, None))
        if fmt is None:
            return None
        with atomic_path(out_base + ext) as tmp, av.open(tmp, "w", format=fmt) as dst, wave.open(str(wav_path)) as wav:
            sr = wav.getframerate()
            # opaque: reuse the decoder's codec for the copied stream, so a codec FFmpeg can decode
            # but not encode (no encoder to look up) still copies
            vout = dst.add_stream_from_template(vin, opaque=True)
            channels = wav.getnchannels()
            aout = dst.add_stream("aac", rate=sr, layout=av.AudioLayout(f"{channels}c").name)  # FFmpeg's default layout
            # the audio was generated for the timeline that starts at the container's start
            # (Frames' origin), so the copy moves that start to 0 and the audio starts at 0 too,
            # as ffmpeg's stream copy does: a video whose frames start at, say, 3 s stays in sync, and
            # the MP4 muxer can trim the AAC encoder's priming (it does so only before time 0)
            shift = round(stream_origin(src) / vin.time_base)
            for packet in src.demux(vin):
                # skip the demuxer's final, empty flush packet. A real packet may lack a dts (B-frames
                # in Matroska, whose first keyframe has none): the muxer derives it from the pts, so it
                # must not be dropped, or the copied stream starts without its keyframe
                if packet.size == 0:
                    continue
                packet.pts = packet.pts - shift if packet.pts is not None else None
                packet.dts = packet.dts - shift if packet.dts is not None else None
                packet.stream = vout
                dst.mux(packet)
            for pts in range(0, wav.getnframes(), sr):
                pcm = np.frombuffer(wav.readframes(sr), "<i2").reshape(-1, channels).T  # (channels, samples)
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, np.float32) / 32767, format="fltp",
                                                   layout=aout.layout.name)
                frame.sample_rate, frame.pts = sr, pts
                for packet in aout.encode(frame):
                    dst.mux(packet)
            for packet in aout.encode(None):
                dst.mux(packet)
    return out_base + ext


# -----------------------------------------------------------------------------
# the data layout this file writes, and reading it back (the trainers and split sampling runs read
# it here): a clip's features and tokens, in ours or the authors' folder layout, checked before step 0


# layout name -> (frame-feature folder, token folder) inside --features_dir
LAYOUTS = {
    # extract_features.py's: meta.json, video/<stem>.npy (frames, D), audio/<stem>.npy (L, T)
    "ours": ("video", "audio"),
    # the authors' VGGSound download unzipped into one folder, as their setup_inference.sh does:
    # vggsound_clip_5fps/<stem>.npy (50, 768) and meta_pretrain_vgg_encodec_tokens/<stem>.npy
    # (500, 4), no meta.json (authors_meta says what it would hold)
    "authors": ("vggsound_clip_5fps", "meta_pretrain_vgg_encodec_tokens"),
}


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


class BadFileError(ValueError):
    """A feature or token file that cannot be used; the message starts with its path."""


class FeatureFiles:
    """Where a clip's frame features and codec tokens are, what shapes they must have, and loading
    them. `layout` is one of LAYOUTS or "auto": the folder's contents decide."""

    def __init__(self, folder, layout="auto"):
        self.folder = Path(folder)
        if layout == "auto":
            layout = "authors" if (self.folder / LAYOUTS["authors"][0]).is_dir() else "ours"
        if layout not in LAYOUTS:
            sys.exit(f"error: unknown features layout {layout!r}; choose one of {', '.join(LAYOUTS)} or auto")
        self.layout = layout
        self.video_dir, self.tokens_dir = (self.folder / sub for sub in LAYOUTS[layout])
        meta_json = self.folder / "meta.json"
        if layout == "authors":
            self.meta = authors_meta()
        else:
            self.meta = json.loads(meta_json.read_text(encoding="utf-8")) if meta_json.exists() else None

    def require_meta(self):
        if self.meta is None:
            sys.exit(f"error: {self.folder}: no meta.json and no {LAYOUTS['authors'][0]}/ folder: expected the "
                     "output of extract_features.py, or the authors' VGGSound features unzipped there")
        return self.meta

    def video_path(self, stem):
        return self.video_dir / f"{stem}.npy"

    def tokens_path(self, stem):
        return self.tokens_dir / f"{stem}.npy"

    def video_shape(self, feature_dim=None):
        """(frames, D): the fixed window at the features' rate; unknown axes None without meta.json."""
        if self.meta is None:
            return (None, feature_dim)
        return (round(self.meta["seconds"] * self.meta["fps"]), self.meta["feature_dim"])

    def tokens_shape(self):
        """The token file's shape on disk: (L, T) ours, (T, L) the authors' (time first)."""
        m = self.require_meta()
        shape = (m["n_q"], round(m["seconds"] * m["frame_rate"]))
        return shape[::-1] if self.layout == "authors" else shape

    def _load(self, path, shape, what):
        try:
            x = np.load(path)
        except (ValueError, OSError, EOFError) as e:  # e.g. pickled data, a truncated file
            raise BadFileError(f"{path}: unreadable ({str(e).splitlines()[0][:80]})") from None
        if not shape_fits(shape, x.shape):
            raise BadFileError(f"{path}: expected {what} of shape {shape_str(shape)}, got {x.shape}")
        return x

    def load_video(self, stem, feature_dim=None):
        """(frames, D) float32 frame features."""
        path = self.video_path(stem)
        x = self._load(path, self.video_shape(feature_dim), "features")
        if x.dtype.kind != "f":
            raise BadFileError(f"{path}: dtype {x.dtype}, expected floats")
        return torch.from_numpy(x.astype(np.float32))

    def load_tokens(self, stem):
        """(L, T) int64 codec tokens, whatever the layout stores."""
        path, bins = self.tokens_path(stem), self.require_meta()["bins"]
        x = self._load(path, self.tokens_shape(), "tokens")
        if x.dtype.kind not in "iu" or x.min() < 0 or x.max() >= bins:
            raise BadFileError(f"{path}: expected integer tokens in [0, {bins}), got {x.dtype} in [{x.min()}, {x.max()}]")
        if self.layout == "authors":
            x = x.T  # stored time-first (500, 4), as their dataset transposes on load: (L, T) here
        return torch.from_numpy(x.astype(np.int64))

    def load_clip(self, stem, tokens=False):
        """What the trainers read at every step: a clip's frame features (frames, D) and, with
        `tokens`, also its codec tokens (L, T). Its files passed the check before step 0
        (check_split_files), so one that fails to load now changed during the run: one line naming
        it, and the run stops."""
        try:
            feats = self.load_video(stem)
            return (feats, self.load_tokens(stem)) if tokens else feats
        except BadFileError as e:
            sys.exit(f"error: {e} (it passed the check before step 0, so it changed during the run; fix or "
                     "remove it and rerun: training resumes from its last checkpoint)")

    def header_problems(self, stem, tokens):
        """'path: problem' for each of a clip's files whose .npy header is wrong (utils.check_npy):
        missing, truncated, another dtype or shape. Reads the headers alone."""
        checks = [(self.video_path(stem), self.video_shape(), "f")]
        if tokens:
            checks.append((self.tokens_path(stem), self.tokens_shape(), "iu"))
        return [f"{path}: {problem}" for path, shape, kinds in checks
                if (problem := check_npy(path, shape, kinds)) is not None]

    def value_problems(self, stem):
        """'path: problem' when a clip's features hold a NaN or an infinity, which would make every
        loss it touches NaN. Reads every value (the header must have passed)."""
        path = self.video_path(stem)
        bad = ~np.isfinite(np.load(path, mmap_mode="r"))
        return [f"{path}: {int(bad.sum())} values are NaN or infinite"] if bad.any() else []

    def problems(self, stem, tokens):
        """Both checks of a clip's files: the headers, then the features' values when their header passed."""
        found = self.header_problems(stem, tokens)
        path = self.video_path(stem)
        if not any(line.startswith(f"{path}:") for line in found):
            found += self.value_problems(stem)
        return found


@functools.lru_cache(maxsize=None)
def feature_files(folder, layout="auto"):
    return FeatureFiles(folder, layout)


def load_split(data_json, features_dir, split, layout="auto", tokens=False):
    """Entries of `split` whose features (and, with `tokens`, token files) exist: [(stem, caption)].
    Returns (items, n_missing)."""
    files = feature_files(str(features_dir), layout)
    entries = [e for e in json.loads(Path(data_json).read_text(encoding="utf-8")) if e["split"] == split]
    items = [(Path(e["video_path"]).stem, e["output"]) for e in entries]
    have = [(s, c) for s, c in items if files.video_path(s).exists() and (not tokens or files.tokens_path(s).exists())]
    return have, len(items) - len(have)


def load_features(features_dir, stem, expected_dim=None, layout="auto"):
    return feature_files(str(features_dir), layout).load_video(stem, expected_dim)


def check_split_files(files, items, tokens, skip_bad, memo_path, recheck=False, rank=0, world=1):
    """Checks every file of a split's clips before step 0: each header on every start (seconds even
    for 200 k clips), the features' values once per training set (scan_values_once). DDP ranks share
    the work. A bad file stops the run with the list of them, or, with `skip_bad`, its clip is left
    out and reported. Returns the items to train on."""
    t0 = time.time()
    bad, stats = {}, {}  # stem -> its problems; stem -> (size, mtime_ns) of its features file
    for stem, _ in tqdm(items[rank::world], desc="checking headers", disable=rank != 0, leave=False):
        if found := files.header_problems(stem, tokens):
            bad[stem] = found
        else:
            stat = files.video_path(stem).stat()
            stats[stem] = (stat.st_size, stat.st_mtime_ns)
    bad, stats = gathered(bad, world), gathered(stats, world)
    passed = [item for item in items if item[0] in stats]
    bad |= scan_values_once(files, passed, stats, memo_path, recheck, rank, world)
    n_files, seconds = len(items) * (2 if tokens else 1), time.time() - t0
    if not bad:
        print0(f"checked the {n_files} files of {len(items)} clips in {seconds:.1f} s: all good")
        return items
    for stem in sorted(bad):
        for line in bad[stem]:
            print0(line, file=sys.stderr)
    if not skip_bad:
        sys.exit(f"error: {len(bad)} of {len(items)} clips have bad files (listed above; checked {n_files} files "
                 f"in {seconds:.1f} s): fix or remove them, or leave those clips out with --skip_bad_files=true")
    print0(f"left out {len(bad)} of {len(items)} clips with bad files (listed above; checked {n_files} files in {seconds:.1f} s)")
    return [item for item in items if item[0] not in bad]


def gathered(part, world):
    """One dict from every DDP rank's `part` (its share of the clips), the same on every rank."""
    if world == 1:
        return part
    parts = [None] * world
    torch.distributed.all_gather_object(parts, part)
    return {k: v for p in parts for k, v in p.items()}


def scan_values_once(files, passed, stats, memo_path, recheck, rank, world):
    """The value scan (FeatureFiles.value_problems) reads every byte of every features file: minutes
    over network storage for 200 k clips, too long to repeat at every start and resume. After a scan,
    memo_path (the run's checked_files.json) keeps the digest of the files found clean, so a start
    that finds the same files (path, size, mtime) skips it; a changed, added or removed file changes
    the digest. `passed`: the clips whose headers passed. Returns {stem: problems} for bad values."""
    memo = json.loads(memo_path.read_text(encoding="utf-8")) if rank == 0 and memo_path.exists() else {}
    skip = [rank == 0 and not recheck and files_digest(files, passed, stats) in memo]
    if world > 1:  # rank 0's memo decides for all, so that every rank joins the same gathers
        torch.distributed.broadcast_object_list(skip, src=0)
    if skip[0]:
        print0(f"values of the {len(passed)} feature files checked before ({memo_path.name}): not scanned again; "
               "--recheck_files=true scans them")
        return {}
    bad = {}
    for stem, _ in tqdm(passed[rank::world], desc="checking values", disable=rank != 0, leave=False):
        if found := files.value_problems(stem):
            bad[stem] = found
    bad = gathered(bad, world)
    if rank == 0:  # the digest of the clean files alone: a file with NaNs is scanned again at every start
        clean = [item for item in passed if item[0] not in bad]
        memo[files_digest(files, clean, stats)] = {"clips": len(clean), "checked": time.strftime("%Y-%m-%d %H:%M:%S")}
        save_json(memo, memo_path)
    return bad


def files_digest(files, items, stats):
    """sha256 of the sorted (path in the features folder, size, mtime_ns) of the clips' features files."""
    rows = sorted((str(files.video_path(stem).relative_to(files.folder)), *stats[stem]) for stem, _ in items)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:32]


def train_val_split(cfg, tokens, rank=0, world=1):
    """The trainers' data: the train split's clips whose files exist and pass the check, the last
    cfg.val_fraction of them held out for validation (the test split is never seen). `tokens`:
    stage 2 also needs each clip's codec tokens. Returns (files, train, val), [(stem, caption)] each."""
    files = feature_files(cfg.features_dir, cfg.features_layout)
    files.require_meta()
    # rank 0 lists the clips and sends the list to the others, so that a features folder still being
    # written cannot give two ranks two lists (and so two different "global" batches)
    found = [load_split(cfg.data_json, cfg.features_dir, "train", cfg.features_layout, tokens=tokens) if rank == 0
             else None]
    if world > 1:
        torch.distributed.broadcast_object_list(found, src=0)
    items, n_missing = found[0]
    if n_missing:
        what = f"{n_missing} train clips have no features{' or tokens' if tokens else ''} in {cfg.features_dir}"
        if cfg.strict:
            sys.exit(f"error: --strict: {what}")
        print0(f"warning: {what}: left out")
    given = len(items) + n_missing
    items = check_split_files(files, items, tokens, cfg.skip_bad_files, Path(cfg.out_dir) / "checked_files.json",
                              cfg.recheck_files, rank, world)
    n_val = max(1, int(len(items) * cfg.val_fraction))
    train, val = items[:-n_val], items[-n_val:]
    print0(f"{cfg.data_json}: {given} train clips, {n_missing} without files and {given - n_missing - len(items)} "
           f"with bad files left out: {len(train)} training and {len(val)} validation clips")
    return files, train, val


# -----------------------------------------------------------------------------
# .npy files checked by their header alone, so that a bad file among 200 k is found in seconds
# before training starts rather than hours into it


def check_npy(path, shape, kinds):
    """What is wrong with the .npy file at `path`, in a few words, or None when it holds an array of
    exactly `shape` (None on an axis: any length) whose dtype kind is one of `kinds` ("f" float,
    "iu" integer) and whose data is all there. Reads only the header (np.lib.format) and the file
    size, never the data."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            file_shape, _, dtype = read_header(f)
            data_start = f.tell()
    except FileNotFoundError:
        return "no such file"
    except (ValueError, OSError, EOFError) as e:  # numpy's errors for a wrong magic string or header
        return "empty file" if os.path.getsize(path) == 0 else f"not a .npy file ({str(e).splitlines()[0][:80]})"
    if dtype.hasobject:
        return f"holds pickled Python objects ({dtype}), not numbers"
    if dtype.kind not in kinds:
        return f"dtype {dtype}, expected {'integers' if kinds == 'iu' else 'floats'}"
    if not shape_fits(shape, file_shape):
        return f"shape {file_shape}, expected {shape_str(shape)}"
    n_bytes = math.prod(file_shape) * dtype.itemsize
    if os.path.getsize(path) < data_start + n_bytes:
        return f"truncated: {os.path.getsize(path) - data_start} of its {n_bytes} data bytes"
    return None


def shape_fits(expected, shape):
    """Whether `shape` is `expected`, where None in `expected` is any length on that axis."""
    return len(shape) == len(expected) and all(n is None or n == m for n, m in zip(expected, shape))


def shape_str(shape, free="frames"):
    """(None, 768) -> '(frames, 768)': an expected shape with its free axes named."""
    return "(" + ", ".join(free if n is None else str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


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

    paths = list_videos(cfg.input)
    refuse_shared_stems(paths)
    paths = paths[rank::world]  # deterministic shard per rank
    todo = [p for p in paths if not done(p)]
    print0(f"{len(paths)} clips for this rank, {len(paths) - len(todo)} already done")
    loader = torch.utils.data.DataLoader(
        Clips(todo, cfg, preprocess, codec.sample_rate), batch_size=cfg.batch_size,
        num_workers=cfg.num_workers, collate_fn=list)
    failed = []
    for batch in tqdm(loader, desc="extract", disable=rank != 0):
        good = [(p, x) for p, x in batch if not isinstance(x, str)]
        failed += [(p, x) for p, x in batch if isinstance(x, str)]
        if failed and cfg.strict:
            sys.exit(f"error: --strict: {failed[0][1]}")
        if not good:
            continue
        frames = torch.cat([x[0] for _, x in good])  # (B*N, 3, S, S)
        # EVA02-CLIP-L/14-336 is ~19 TFLOP per 10-s clip (50 frames of 577 tokens): bf16 autocast on a
        # GPU. The codec stays in float32, out of autocast: bf16 would move its latents, so its tokens
        with autocast(device):
            feats = encode_frames(model, frames, device).view(len(good), -1, feature_dim)  # (B, N, D)
        codes = audio_tokens(codec, torch.stack([x[1] for _, x in good]).to(device))  # (B, n_q, T)
        for (path, _), f, c in zip(good, feats, codes):
            stem = Path(path).stem
            for sub, arr in (("video", f.numpy().astype(np.float16)), ("audio", c.numpy().astype(np.int16))):
                with atomic_path(out / sub / f"{stem}.npy") as tmp:
                    with open(tmp, "wb") as fh:
                        np.save(fh, arr)
    for path, err in failed:
        print(f"skipped {err}", file=sys.stderr)
    print0(f"done: {len(paths)} clips, {len(paths) - len(todo)} done earlier, {len(todo) - len(failed)} extracted, "
           f"{len(failed)} skipped -> {out}")
    if rank == 0:
        record_timing(out, "extract_features", t0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
