"""
Why an edit keeps the sound around it: the register an edit takes, against how much of the clip's
own sound around the range the model is shown. A diagnostic for a trained toy model.

An edit (sample.py --edit) masks the tokens of its range and keeps the rest of the window known
(MaskGIT's in-painting). This script redoes each clip's range (its entry's `edit` field) with the
pitch-swapped caption, with the known tokens cut back: the range and `margin` tokens on each side
are masked (margin 100 = the whole 2-s window: nothing of the clip's own sound is known). It
prints, per margin, how often the analyzer (data/toy/world.py) hears the caption's register in
the range, and how often the clip's own one. Features and tokens come from the features folder,
as training reads them.

    python tools/toy/edit_context.py                                 # out/toy, validation split
    python tools/toy/edit_context.py --ckpt_dir=out/toy-seed1 --margins=0,20,100 --n=50
"""
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repo root
import sample  # noqa: E402
from data.toy.world import analyze  # noqa: E402
from extract_features import feature_files  # noqa: E402
from utils import parse_config  # noqa: E402


@dataclass
class Config(sample.Config):
    data_json: str = "data/toy/v2a_instruction.json"
    split: str = "val"  # the validation split: settings are tuned there, never on the test clips
    n: int = 100  # clips
    margins: str = "0,10,20,40,100"  # tokens masked on each side of the range, beyond it (50 a second)
    prompt_field: str = "swapped"  # each entry's field that holds the edit's prompt


@torch.no_grad()
def registers(models, entries, files, margin, args):
    """Per clip, the register the analyzer hears in its edited range, and its own register."""
    conv, vatt, codec = models.converter, models.audio, models.codec
    rate, heard = codec.frame_rate, []
    for i, e in enumerate(entries):
        stem = Path(e["video_path"]).stem
        start, end = sample.parse_span(e["edit"])
        codes = files.load_tokens(stem)[None]  # (1, L, T)
        a, b = int(start * rate), int(round(end * rate))
        codes[:, :, max(0, a - margin): b + margin] = vatt.config.bins
        x = files.load_video(stem)[None]
        cond, cond_mask, null_cond = sample.text_conditions(conv, vatt.config.condition, x, [e[args.prompt_field]], [None])
        generator = torch.Generator().manual_seed(sample.clip_seed(args.seed, 0, stem))
        out = sample.decode_tokens(vatt, cond, cond_mask, null_cond, codes, [generator], args.steps, args.guidance_scale,
                                   args.temperature, args.top_k, args.mask_temperature)
        wav = codec.decode(out)[0, 0].numpy()
        heard.append(analyze(wav[round(start * codec.sample_rate): round(end * codec.sample_rate)],
                             codec.sample_rate)["pitch"])
    return heard


def main(argv=None):
    args = parse_config(Config, sample.PRESETS, argv)
    models = sample.load_models(args.ckpt_dir, torch.device("cpu"))
    entries = [e for e in json.loads(Path(args.data_json).read_text(encoding="utf-8")) if e["split"] == args.split]
    entries = entries[: args.n]
    files = feature_files(models.converter.features_dir)
    print(f"{args.ckpt_dir}, {len(entries)} {args.split} clips, each redone over its `edit` range with its "
          f"{args.prompt_field!r} caption")
    print("| tokens masked beyond the range, each side | the caption's register heard | the clip's own |\n|---|---|---|")
    for margin in map(int, args.margins.split(",")):
        heard = registers(models, entries, files, margin, args)
        wanted = np.mean([h is not None and h != e["pitch"] for h, e in zip(heard, entries)])
        own = np.mean([h == e["pitch"] for h, e in zip(heard, entries)])
        print(f"| {margin} ({margin / models.codec.frame_rate:g} s) | {wanted:.3f} | {own:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
