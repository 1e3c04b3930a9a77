"""
The V2A-Instruction step (paper §4, appendix C): audio captions for clips that have none.

The paper made its training captions by letting an audio LLM (LTU) listen to each clip's sound
track, prompted with "Close-ended question: Write an audio caption describing the sound.". Stage 1
then learns to write such captions from the silent video, and stage 2 to follow them. This script
does that step for your own videos:

  videos (with sound) -> each clip's window as 16 kHz mono -> audio captioner -> V2A-Instruction JSON
      [{"video_path": relative to the JSON, "output": the caption, "split": "train" | "test",
        "captioner": which model wrote it, "prompt": what it was asked}, ...]

It is a script of its own rather than a mode of extract_features.py: it runs another model (a 7 B
audio LLM that wants the GPU to itself), it runs once per data set before everything else, and
its output is a file to read before training on it, not arrays.

Captioners:
  toy          the toy world's analyzer listens (data/toy/world.py analyze: source, register and
               strike count from the waveform) and the toy grammar writes the caption; no model
  hub id or    an instruction-tuned audio LLM through transformers, Qwen2-Audio
  local folder (Qwen2AudioForConditionalGeneration + its processor), bf16 on a GPU, greedy

Toy world (CPU, a few seconds per 100 clips):
    python tools/caption_audio.py --input=data/mine/clips --out=data/mine/captions.json
Your videos, one GPU (Qwen2-Audio-7B-Instruct from the hub, or --captioner=/local/folder):
    python tools/caption_audio.py --preset=qwen2-audio --input=my_videos --out=my_videos/captions.json

Each clip's split is a function of its file name alone (a hash), so adding clips never moves
another one between train and test. Resumable: clips already in --out are skipped, and --out is
rewritten atomically every save_interval seconds and at the end. Clips with no audio track,
silent audio or an unreadable file are skipped and listed at the end (exit status 1).
"""
import hashlib
import json
import os
import re
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root
from data.toy import world  # noqa: E402
from extract_features import VideoError, list_videos, load_audio  # noqa: E402
from utils import parse_config, pick_device, save_json, weights_dtype  # noqa: E402

# -----------------------------------------------------------------------------
# config

# the instruction the paper's captioner (LTU) was given, verbatim (appendix C; the released
# inference_vggsound.py)
PAPER_PROMPT = "Close-ended question: Write an audio caption describing the sound."


@dataclass
class Config:
    preset: str = "toy"
    input: str = "data/mine/clips"  # a folder of videos, a .txt list of paths, or a JSON with video_path entries
    out: str = "data/mine/captions.json"  # the V2A-Instruction JSON; video_path entries are relative to its folder
    captioner: str = "toy"  # "toy", or an audio LLM: hub id or local folder (Qwen2-Audio)
    prompt: str = PAPER_PROMPT  # what the audio LLM is asked (the toy captioner takes no prompt)
    # the window that is captioned, from each clip's start: the window extract_features.py turns
    # into features (2 s toy, 10 s VGGSound), so that the caption describes what is trained on
    seconds: float = 2.0
    test_fraction: float = 0.1  # share of the clips in the test split, by a hash of the file name
    split_seed: int = 0  # changes which clips the hash puts in the test split
    silence_dbfs: float = -60.0  # a window whose loudest sample is below this is silent: skipped
    batch_size: int = 8  # clips per captioner call
    num_workers: int = 2  # DataLoader processes that decode the audio with PyAV
    max_new_tokens: int = 48  # caption length limit for the audio LLM
    save_interval: float = 60.0  # seconds between rewrites of --out
    device: str = "auto"


PRESETS = {
    "toy": {},
    "qwen2-audio": dict(captioner="Qwen/Qwen2-Audio-7B-Instruct", seconds=10.0, input="my_videos",
                        out="my_videos/captions.json", batch_size=16, num_workers=8),
}

# -----------------------------------------------------------------------------
# captioners: a batch of windows (16 kHz mono float32) -> one caption each, None = nothing to say


class ToyCaptioner:
    """The toy world's analyzer hears the source, register and strike count (world.analyze, pure
    DSP) and the toy grammar writes them (world.make_caption), with the words drawn from a seed of
    the clip's name, so a rerun writes the same caption."""

    prompt = None
    name = "toy-analyzer"
    sample_rate = world.SAMPLE_RATE

    def __call__(self, wavs, stems):
        captions = []
        for wav, stem in zip(wavs, stems):
            heard = world.analyze(wav, self.sample_rate)
            if heard["class"] is None:  # no sound event at all
                captions.append(None)
                continue
            count = min(heard["count"], world.MAX_STRIKES)  # the grammar has words for 1 to 3 strikes
            captions.append(world.make_caption(heard["class"], heard["pitch"], count,
                                               np.random.default_rng(zlib.crc32(stem.encode()))))
        return captions


class AudioLLMCaptioner:
    """An instruction-tuned audio LLM (Qwen2-Audio-Instruct: a Whisper encoder feeding a Qwen LM),
    asked `prompt` about each clip in its chat format. Greedy decoding: reproducible, and close to
    the paper's (LTU at temperature 0.1)."""

    def __init__(self, name_or_path, prompt, device, max_new_tokens):
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        dtype = weights_dtype(device)
        try:
            self.processor = AutoProcessor.from_pretrained(name_or_path)
            self.model = Qwen2AudioForConditionalGeneration.from_pretrained(name_or_path, dtype=dtype)
        except OSError as e:
            sys.exit(f"error: could not load the captioner {name_or_path!r} ({str(e).splitlines()[0]}). Offline, "
                     "download it first (huggingface-cli download Qwen/Qwen2-Audio-7B-Instruct --local-dir "
                     "checkpoints/qwen2-audio) and pass --captioner=checkpoints/qwen2-audio")
        self.model = self.model.to(device).eval()
        self.processor.tokenizer.padding_side = "left"  # every answer then starts at the same index
        self.name, self.prompt, self.max_new_tokens = name_or_path, prompt, max_new_tokens
        self.sample_rate = self.processor.feature_extractor.sampling_rate
        self.text = self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "audio", "audio": "clip"}, {"type": "text", "text": prompt}]}],
            add_generation_prompt=True, tokenize=False)

    @torch.no_grad()
    def __call__(self, wavs, stems):
        inputs = self.processor(text=[self.text] * len(wavs), audio=list(wavs), sampling_rate=self.sample_rate,
                                return_tensors="pt", padding=True).to(self.model.device)
        inputs["input_features"] = inputs["input_features"].to(self.model.dtype)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        answers = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return [clean_caption(a) for a in answers]


def clean_caption(text):
    """One line, without the "Audio caption:" prefix an audio LLM may put first (the authors
    stripped LTU's); None when nothing is left."""
    text = re.sub(r"^\s*audio caption\s*:\s*", "", " ".join(text.split()), flags=re.IGNORECASE)
    return text or None


def build_captioner(cfg, device):
    if cfg.captioner == "toy":
        return ToyCaptioner()
    return AudioLLMCaptioner(cfg.captioner, cfg.prompt, device, cfg.max_new_tokens)


# -----------------------------------------------------------------------------
# clips


def split_of(stem, test_fraction, seed):
    """"test" for a stable pseudo-random `test_fraction` of file names, else "train"."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{stem}".encode()).digest()[:8], "big")
    return "test" if h / 2**64 < test_fraction else "train"


class ClipAudio(torch.utils.data.Dataset):
    """Decodes one clip's window in a DataLoader worker; a clip that cannot be captioned comes
    back as its error line."""

    def __init__(self, paths, sample_rate, seconds, silence_dbfs):
        self.paths, self.sr, self.seconds, self.silence_dbfs = paths, sample_rate, seconds, silence_dbfs

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        path = self.paths[i]
        try:
            wav = load_audio(path, self.sr, self.seconds)
        except VideoError as e:
            return path, str(e)
        peak = 20 * np.log10(np.abs(wav).max() + 1e-12)
        if peak < self.silence_dbfs:
            return path, f"{path}: silent audio (peak {peak:.0f} dBFS in the first {self.seconds:g} s)"
        return path, wav


# -----------------------------------------------------------------------------


def main(argv=None):
    cfg = parse_config(Config, PRESETS, argv)
    out = Path(cfg.out)
    videos = list_videos(cfg.input)
    stems = {}
    for v in videos:  # features are stored by file name, so names must be unique
        if Path(v).stem in stems:
            sys.exit(f"error: {v} and {stems[Path(v).stem]} have the same file name; rename one")
        stems[Path(v).stem] = v
    video_path = lambda v: os.path.relpath(v, out.parent)  # noqa: E731 (as extract_features.py resolves it)
    entries = json.loads(out.read_text(encoding="utf-8")) if out.exists() else []
    done = {e["video_path"] for e in entries}
    todo = [v for v in videos if video_path(v) not in done]
    print(f"{len(videos)} videos, {len(videos) - len(todo)} already captioned in {out}")

    device = pick_device(cfg.device)
    captioner = build_captioner(cfg, device)
    loader = torch.utils.data.DataLoader(ClipAudio(todo, captioner.sample_rate, cfg.seconds, cfg.silence_dbfs),
                                         batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=list)

    def save():
        save_json(sorted(entries, key=lambda e: e["video_path"]), out)  # the same file however often resumed

    skipped, saved_at = [], time.time()
    for batch in tqdm(loader, desc="captions"):
        good = [(p, x) for p, x in batch if not isinstance(x, str)]
        skipped += [x for _, x in batch if isinstance(x, str)]
        captions = captioner([x for _, x in good], [Path(p).stem for p, _ in good]) if good else []
        for (path, _), caption in zip(good, captions):
            if caption is None:
                skipped.append(f"{path}: the captioner heard nothing to describe")
                continue
            entries.append({"video_path": video_path(path), "output": caption,
                            "split": split_of(Path(path).stem, cfg.test_fraction, cfg.split_seed),
                            "captioner": captioner.name, "prompt": captioner.prompt})
        if time.time() - saved_at > cfg.save_interval:
            save()
            saved_at = time.time()
    save()
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    n_test = sum(e["split"] == "test" for e in entries)
    print(f"done: {len(todo) - len(skipped)} captioned, {len(skipped)} skipped -> {out} "
          f"({len(entries)} clips: {len(entries) - n_test} train, {n_test} test)")
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
