"""
Where a toy model reads the source (bell, drum, whistle) and where it loses it. For a trained run
(stage1.pt + stage2.pt) on a split (validation: settings are tuned there), from the video to the
audio:

  1. linear probes of the class, trained on the training clips and scored on the split, at each
     step of the chain: the frame features (mean over frames), the VATT Projector's video tokens
     (mean over tokens), the Converter's last-layer states over [video ; template] (VATT Audio's
     condition: mean over the video positions, and the last position, from which the caption's
     first word is predicted);
  2. the Converter's captions: how often they name the clip's source;
  3. whether VATT Audio reads the source word: audio generated with the true caption, and with a
     caption of another source (the same register and count, world.make_caption): how often the
     analyzer hears the source the prompt names, and the video's.

    python tools/toy/source_probe.py                          # out/toy, the validation split
    python tools/toy/source_probe.py --ckpt_dir=out/toy-seed3 --n_train=1000
"""
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repo root
import sample  # noqa: E402
from codec import decode_windows  # noqa: E402
from data.toy.world import CLASSES, analyze, make_caption, parse_caption  # noqa: E402
from extract_features import feature_files  # noqa: E402
from stage1_caption import TEMPLATE  # noqa: E402
from utils import parse_config, save_json  # noqa: E402


@dataclass
class Config(sample.Config):
    data_json: str = "data/toy/v2a_instruction.json"
    split: str = "val"
    n: int = 200  # clips of the split
    n_train: int = 1000  # training clips the probes are fitted on
    out: str = ""  # default: <ckpt_dir>/source-probe-<split>.json


def probe(train_x, train_y, test_x, test_y, steps=200):
    """A multinomial logistic regression (L-BFGS, a little L2) on standardized inputs: its accuracy on the test set."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    w = torch.zeros(train_x.shape[1], len(CLASSES), requires_grad=True)
    b = torch.zeros(len(CLASSES), requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(train_x @ w + b, train_y) + 1e-3 * w.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return ((test_x @ w + b).argmax(-1) == test_y).float().mean().item()


@torch.no_grad()
def representations(conv, feats, batch=64):
    """Per clip: mean frame features, mean video tokens, the states over [video ; template] (mean
    over the video positions, and the last position)."""
    out = {"frame features": [], "video tokens": [], "Converter states, video positions": [],
           "Converter states, last position": []}
    for i in range(0, len(feats), batch):
        x = feats[i: i + batch]
        tokens = conv.video_embeds(x).float()
        states, _ = conv.condition(x, [TEMPLATE] * len(x))
        n_video = tokens.shape[1]
        for key, value in zip(out, (x.mean(1), tokens.mean(1), states[:, :n_video].mean(1), states[:, -1])):
            out[key].append(value.float())
    return {k: torch.cat(v) for k, v in out.items()}


def main(argv=None):
    args = parse_config(Config, sample.PRESETS, argv)
    device = torch.device("cpu")
    models = sample.load_models(args.ckpt_dir, device)
    conv = models.converter
    files = feature_files(conv.features_dir)
    entries = json.loads(Path(args.data_json).read_text(encoding="utf-8"))
    split = [e for e in entries if e["split"] == args.split][: args.n]
    train = [e for e in entries if e["split"] == "train"][: args.n_train]
    load = lambda es: torch.stack([files.load_video(Path(e["video_path"]).stem) for e in es])  # noqa: E731
    label = lambda es: torch.tensor([CLASSES.index(e["class"]) for e in es])  # noqa: E731
    feats = load(split)
    result = {"ckpt_dir": args.ckpt_dir, "split": args.split, "n": len(split), "n_train": len(train), "probes": {}}
    train_reps, split_reps = representations(conv, load(train)), representations(conv, feats)
    for key in train_reps:
        result["probes"][key] = probe(train_reps[key], label(train), split_reps[key], label(split))
    captions, _ = conv.caption(feats, TEMPLATE)
    result["captions_class"] = float(np.mean([parse_caption(c)["class"] == e["class"] for c, e in zip(captions, split)]))

    # VATT Audio and the source word: the true caption, and one naming another source
    rng = np.random.default_rng(0)
    other = [CLASSES[(CLASSES.index(e["class"]) + 1 + rng.integers(2)) % 3] for e in split]
    prompts = {"true caption": [e["output"] for e in split],
               "another source's caption": [make_caption(c, e["pitch"], e["count"], rng) for c, e in zip(other, split)]}
    for name, texts in prompts.items():
        heard = []
        for i in range(0, len(split), args.batch_size):
            part = split[i: i + args.batch_size]
            seeds = [sample.clip_seed(args.seed, 0, Path(e["video_path"]).stem) for e in part]
            results = sample.generate(models, list(feats[i: i + len(part)]), [models.meta["seconds"]] * len(part),
                                      texts[i: i + len(part)], seeds, args, device)
            for r in results:
                wav = next(iter(decode_windows(models.codec, r["codes"])))
                heard.append(analyze(wav, models.codec.sample_rate)["class"])
        named = [parse_caption(t)["class"] for t in texts]
        result[name] = {"class named by the prompt": float(np.mean([h == n for h, n in zip(heard, named)])),
                        "class of the video": float(np.mean([h == e["class"] for h, e in zip(heard, split)]))}
    out = Path(args.out or Path(args.ckpt_dir) / f"source-probe-{args.split}.json")
    save_json(result, out)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
