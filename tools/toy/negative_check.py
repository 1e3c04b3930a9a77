"""
When does a negative prompt keep a register out? A per-clip diagnostic for a trained toy model.

The negative mode guides with n + w (c - n) (sample.classifier_free_guidance): c is the prediction
prompted by the standard template (no text), n the one prompted by the negative. The register is
invisible in the video, so a model should leave it to chance without text; where it does not, and
c already leans to the negative's register on a clip, w = 2 may not push it out. This script
samples a split's clips K times without text and once with the negative (the swapped caption,
as make demo), hears the register of each (data/toy/world.py), and prints how often the negative
is avoided, by how many of the K text-free samples landed in the negative's register. It also
prints how often those K samples agree with each other: a model that picks a register per clip
from the video agrees with itself on most clips, one that leaves it to chance on about a quarter.

It then looks at the first decoding step, where every token is masked: per clip, the probability
that the frequency level lands in the negative's register, given that it is a strike's frequency
(the toy sampler's temperature, mean over the clip's strike frames; see NOISE_FROM), with the null
condition (u), the template (c), the true caption and the negative (n), guided as without text
(u + w (c - u)) and as the negative mode (n + w (c - n)), and how often the negative is avoided by
that guided probability. Per clip, the probabilities and the outcome land in <out_dir>/clips.json.

    python tools/toy/negative_check.py                                  # out/toy, validation split
    python tools/toy/negative_check.py --ckpt_dir=out/toy-seed1 --k=5
Results: docs/toy-tuning.md ("Negative prompts").
"""
import json
import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repo root
import sample  # noqa: E402
from data.toy.codec import ToyCodec  # noqa: E402
from tools import sample_split  # noqa: E402
from tools.toy.text_gain import FREQUENCY_LEVEL, clip_arrays  # noqa: E402
from data.toy.world import REGISTER_SPLIT_HZ, analyze  # noqa: E402
from eval import read_wav  # noqa: E402
from extract_features import feature_files  # noqa: E402
from stage1_caption import TEMPLATE  # noqa: E402
from stage2_audio import audio_condition  # noqa: E402
from utils import parse_config, save_json  # noqa: E402


# the first frequency bin of the high register
HIGH_FROM = math.floor(ToyCodec.frequency_steps(float(REGISTER_SPLIT_HZ))) + 1
# Between strikes a clip holds the world's white noise floor (-60 dBFS), whose frequency token reads
# its power median, about 3.2 kHz (bins 49 to 57, in the high register's range); the strikes reach
# 2.4 kHz at most (a high whistle's glide: bin 48). So the register is read only on frames at least
# 10 dB above the floor, and only among a strike's bins, those up to 2.4 kHz.
NOISE_FROM = math.floor(ToyCodec.frequency_steps(2400.0)) + 1
STRIKE_LOUDNESS = 1 + round(ToyCodec.loudness_steps(-50.0))  # -50 dBFS, in codec level 0


@dataclass
class Config:
    preset: str = "toy"
    ckpt_dir: str = "out/toy"  # holds stage1.pt and stage2.pt
    data_json: str = "data/toy/v2a_instruction.json"
    split: str = "val"  # tune on val; the test split is for the final table only
    k: int = 3  # text-free samples per clip
    out_dir: str = ""  # default: <ckpt_dir>/negative-check-<split>
    seed: int = 0


def register(path):
    wav, sr = read_wav(path)
    return analyze(wav[:, 0], sr)["pitch"]


@torch.no_grad()
def first_step(ckpt_dir, entries, guidance_scale, temperature):
    """Per clip, P(the negative's register) at the first decoding step, every token masked, mean
    over the clip's strike frames, for each condition: the null one (u), the template (c), the
    true caption, the negative (n), and the two guided predictions, u + w (c - u) (no text, as
    video_only) and n + w (c - n) (the negative mode)."""
    models = sample.load_models(ckpt_dir, torch.device("cpu"))
    audio, conv = models.audio, models.converter
    files = feature_files(conv.features_dir)
    feats, tokens = clip_arrays(files, entries)  # (B, N, D), (B, L, T)
    masked = torch.full_like(tokens, audio.config.bins)
    logits, drop = {}, torch.ones(len(entries), dtype=torch.bool)
    for key, prompts in (("template", [TEMPLATE] * len(entries)), ("caption", [e["output"] for e in entries]),
                         ("negative", [e["swapped"] for e in entries])):
        cond, cond_mask = audio_condition(conv, feats, prompts, audio.config.condition)
        logits[key] = audio(masked, cond, cond_mask)[:, FREQUENCY_LEVEL].float()  # (B, T, bins)
    logits["null"] = audio(masked, cond, cond_mask, drop)[:, FREQUENCY_LEVEL].float()  # cond dropped: any will do
    logits["guided_null"] = sample.classifier_free_guidance(logits["template"], logits["null"], guidance_scale)
    logits["guided"] = sample.classifier_free_guidance(logits["template"], logits["negative"], guidance_scale)
    sounding = (tokens[:, 0] >= STRIKE_LOUDNESS).float()  # (B, T) a strike's frames (level 0 is loudness)
    negative_high = torch.tensor([e["pitch"] == "low" for e in entries])[:, None]  # the swapped caption's register
    out = {}
    for key, x in logits.items():
        strike = (x / temperature).softmax(-1)[..., :NOISE_FROM]  # (B, T, NOISE_FROM) a strike's frequencies
        high = strike[..., HIGH_FROM:].sum(-1) / strike.sum(-1)  # (B, T) P(high | a strike's frequency)
        p = torch.where(negative_high, high, 1 - high)
        out[key] = ((p * sounding).sum(1) / sounding.sum(1).clamp_min(1)).tolist()
    return out


def main(argv=None):
    cfg = parse_config(Config, {"toy": {}}, argv)
    out = Path(cfg.out_dir or Path(cfg.ckpt_dir) / f"negative-check-{cfg.split}")
    common = [f"--preset={cfg.preset}", f"--ckpt_dir={cfg.ckpt_dir}", f"--data_json={cfg.data_json}",
              f"--split={cfg.split}", f"--seed={cfg.seed}"]
    for name, extra in (("video_only", [f"--num_samples={cfg.k}"]), ("negative_pitch", ["--negative_field=swapped"])):
        if sample_split.main(common + [f"--name={name}", f"--out_dir={out / name}"] + extra):
            sys.exit(f"error: sampling {name} failed")
    entries = [e for e in json.loads(Path(cfg.data_json).read_text(encoding="utf-8")) if e["split"] == cfg.split]
    by_count, agree, avoided = defaultdict(list), 0, []
    for e in entries:
        stem = Path(e["video_path"]).stem
        negative = "low" if e["pitch"] == "high" else "high"  # the swapped caption's register
        free = [register(out / "video_only" / f"{stem}.{i}.wav") for i in range(cfg.k)]
        avoided.append(register(out / "negative_pitch" / f"{stem}.wav") != negative)
        by_count[sum(r == negative for r in free)].append(avoided[-1])
        agree += len(set(free)) == 1
    n = len(entries)
    print(f"{cfg.ckpt_dir}, {n} {cfg.split} clips: the negative avoided {sum(avoided) / n:.3f}; "
          f"the {cfg.k} text-free samples in one register on {agree / n:.3f} of the clips "
          f"({2 / 2 ** cfg.k:.3f} if each were a coin flip)")
    print(f"| text-free samples in the negative's register (of {cfg.k}) | clips | negative avoided |\n|---|---|---|")
    for count in sorted(by_count):
        print(f"| {count} | {len(by_count[count])} | {sum(by_count[count]) / len(by_count[count]):.3f} |")

    sampler = parse_config(sample.Config, sample.PRESETS, [f"--preset={cfg.preset}"])
    p = first_step(cfg.ckpt_dir, entries, sampler.guidance_scale, sampler.temperature)
    save_json([{"clip": Path(e["video_path"]).stem, "avoided": a, "first_step": {k: v[i] for k, v in p.items()}}
               for i, (e, a) in enumerate(zip(entries, avoided))], out / "clips.json")
    mean = {k: sum(v) / n for k, v in p.items()}
    confident = sum(x < 0.1 or x > 0.9 for x in p["template"]) / n
    print(f"first decoding step, P(the negative's register), mean over clips: null {mean['null']:.3f}, "
          f"template {mean['template']:.3f}, true caption {mean['caption']:.3f}, negative {mean['negative']:.3f}, "
          f"guided (w = {sampler.guidance_scale:g}) with the null {mean['guided_null']:.3f} and with the negative "
          f"{mean['guided']:.3f}; the template's is below 0.1 or above 0.9 on {confident:.3f} of the clips")
    print("| guided P(the negative's register) at step 1 | clips | negative avoided |\n|---|---|---|")
    for lo, hi in ((0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.01)):
        rows = [a for a, x in zip(avoided, p["guided"]) if lo <= x < hi]
        if rows:
            print(f"| {lo:.2f} to {min(hi, 1):.2f} | {len(rows)} | {sum(rows) / len(rows):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
