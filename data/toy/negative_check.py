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

    python data/toy/negative_check.py                                  # out/toy, validation split
    python data/toy/negative_check.py --ckpt_dir=out/toy-seed1 --k=5
Results: docs/toy-tuning.md ("Negative prompts").
"""
import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repo root
import sample  # noqa: E402
from data.toy.world import analyze  # noqa: E402
from eval import read_wav  # noqa: E402
from utils import parse_config  # noqa: E402


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


def main(argv=None):
    cfg = parse_config(Config, {"toy": {}}, argv)
    out = Path(cfg.out_dir or Path(cfg.ckpt_dir) / f"negative-check-{cfg.split}")
    common = [f"--preset={cfg.preset}", f"--ckpt_dir={cfg.ckpt_dir}", f"--data_json={cfg.data_json}",
              f"--split={cfg.split}", f"--seed={cfg.seed}"]
    for name, extra in (("video_only", [f"--num_samples={cfg.k}"]), ("negative_pitch", ["--negative_field=swapped"])):
        if sample.main(common + [f"--name={name}", f"--out_dir={out / name}"] + extra):
            sys.exit(f"error: sampling {name} failed")
    entries = [e for e in json.loads(Path(cfg.data_json).read_text(encoding="utf-8")) if e["split"] == cfg.split]
    by_count, agree = defaultdict(list), 0
    for e in entries:
        stem = Path(e["video_path"]).stem
        negative = "low" if e["pitch"] == "high" else "high"  # the swapped caption's register
        free = [register(out / "video_only" / f"{stem}.{i}.wav") for i in range(cfg.k)]
        by_count[sum(r == negative for r in free)].append(register(out / "negative_pitch" / f"{stem}.wav") != negative)
        agree += len(set(free)) == 1
    n = len(entries)
    print(f"{cfg.ckpt_dir}, {n} {cfg.split} clips: the negative avoided {sum(map(sum, by_count.values())) / n:.3f}; "
          f"the {cfg.k} text-free samples in one register on {agree / n:.3f} of the clips "
          f"({2 / 2 ** cfg.k:.3f} if each were a coin flip)")
    print(f"| text-free samples in the negative's register (of {cfg.k}) | clips | negative avoided |\n|---|---|---|")
    for count in sorted(by_count):
        avoided = by_count[count]
        print(f"| {count} | {len(avoided)} | {sum(avoided) / len(avoided):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
