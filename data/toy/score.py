"""
The toy world's table: what the analyzer (world.py) hears in each generation mode's audio, scored
against the test clips, and the Converter's captions against theirs. `make demo` runs it after the
sampling runs; tools/report.py draws its page from the JSON it writes.

    python data/toy/score.py                                       # out/toy/eval.json
    python data/toy/score.py --split=val --samples_dir=out/toy/val-samples --out=out/toy/val-eval.json
"""
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repo root
from codec import load_codec  # noqa: E402
from data.toy.world import analyze, match_onsets, parse_caption, score  # noqa: E402
from eval import caption_metrics, read_wav  # noqa: E402
from extract_features import decode_audio, load_audio  # noqa: E402
from utils import parse_config, save_json  # noqa: E402


@dataclass
class Config:
    preset: str = "toy"
    data_json: str = "data/toy/v2a_instruction.json"  # the toy world's JSON
    features_dir: str = "data/toy/features"  # extracted features and tokens
    samples_dir: str = "out/toy/samples"  # sample.py outputs, one folder per mode
    split: str = "test"  # the clips scored: test for the table, val for tuning
    out: str = "out/toy/eval.json"  # output JSON


TOY_ROWS = ("ground_truth", "codec_roundtrip", "video_only", "gt_caption", "self_caption")
TOY_MODES = (*TOY_ROWS[2:], "swapped_pitch_text", "negative_pitch", "edit_swapped")  # the sample.py runs, a folder each
OPPOSITE = {"low": "high", "high": "low"}


def score_edits(folder, data, entries):
    """The editing test (sample.py --edit): each clip's own sound redone over the range of its
    entry's `edit` field with its pitch-swapped caption. In the range, how often the analyzer hears
    the new register, and the onset F1 of the strikes there against the video's (+-50 ms); outside
    it, the share of clips whose samples all equal the video's own sound (as 16-bit samples)."""
    follows, untouched, hits, n_pred, n_true = 0, 0, 0, 0, 0
    for e in entries:
        start, end = map(float, e["edit"].split(":"))
        edited, sr = read_wav(folder / f"{Path(e['video_path']).stem}.wav")  # (S, C)
        own = decode_audio(str(data.parent / e["video_path"]), "fltp")[0].T  # (S, C) as the edit read it
        first, last = round(start * sr), round(end * sr)
        # both as 16-bit samples: read_wav's scale, and the one write_wav wrote the edit with
        edited16, own16 = np.round(edited * 32768), np.round(np.clip(own, -1, 1) * 32767)
        untouched += (edited.shape == own.shape and np.array_equal(edited16[:first], own16[:first])
                      and np.array_equal(edited16[last:], own16[last:]))
        heard = analyze(edited[first:last, 0], sr)
        follows += heard["pitch"] == OPPOSITE[e["pitch"]]
        true = [t - start for t in e["onsets"] if start <= t < end]
        hits, n_pred, n_true = hits + match_onsets(heard["onsets"], true), n_pred + len(heard["onsets"]), n_true + len(true)
    n = len(entries)
    return {"pitch_follows_text": follows / n, "onset_f1": 2 * hits / (n_pred + n_true) if n_pred + n_true else 1.0,
            "outside_untouched": untouched / n}


def score_run(args):
    """out/toy/eval.json: caption accuracy + coco metrics of the Converter's captions, and per
    generation mode (video only, ground-truth caption, own caption, pitch-swapped caption, the
    template with a negative prompt) how often the generated audio has the clip's source, count,
    onsets and register. A mode that was not sampled (an ablation run samples a few) is left out."""
    data = Path(args.data_json)
    test = [e for e in json.loads(data.read_text(encoding="utf-8")) if e["split"] == args.split]
    stems = [Path(e["video_path"]).stem for e in test]
    meta = json.loads((Path(args.features_dir) / "meta.json").read_text(encoding="utf-8"))
    sr, samples = meta["sample_rate"], Path(args.samples_dir)

    def generated(name):
        return [analyze(read_wav(samples / name / f"{s}.wav")[0], sr) for s in stems]

    sampled = {name for name in TOY_MODES if (samples / name / "captions.json").is_file()}

    codec = load_codec(meta["codec"])
    tokens = torch.stack([torch.from_numpy(np.load(Path(args.features_dir) / "audio" / f"{s}.npy").astype(np.int64)) for s in stems])
    with torch.no_grad():
        roundtrip = codec.decode(tokens)[:, 0].numpy()  # (N, S)
    analyses = {
        "ground_truth": [analyze(load_audio(str(data.parent / e["video_path"]), sr, meta["seconds"]), sr) for e in test],
        "codec_roundtrip": [analyze(w, sr) for w in roundtrip],
        **{name: generated(name) for name in TOY_ROWS[2:] if name in sampled},
    }
    audio = {name: score(rows, test) for name, rows in analyses.items()}
    if "swapped_pitch_text" in sampled:
        swapped = score(generated("swapped_pitch_text"), [dict(e, pitch=OPPOSITE[e["pitch"]]) for e in test])
        audio["swapped_pitch_text"] = {"pitch_follows_text": swapped["pitch_acc"], "onset_f1": swapped["onset_f1"]}
    if "negative_pitch" in sampled:
        # the template prompt with a negative prompt naming a register: the audio should take the other one
        negatives = json.loads((samples / "negative_pitch" / "captions.json").read_text(encoding="utf-8"))["clips"]
        away = [OPPOSITE[parse_caption(negatives[s]["negative_prompt"])["pitch"]] for s in stems]
        negative = score(generated("negative_pitch"), [dict(e, pitch=p) for e, p in zip(test, away)])
        audio["negative_pitch"] = {"pitch_avoids_negative": negative["pitch_acc"], "onset_f1": negative["onset_f1"]}
    if "edit_swapped" in sampled:
        audio["edit_swapped"] = score_edits(samples / "edit_swapped", data, test)

    caption_row = {}
    if "video_only" in sampled:  # the Converter's own captions, written by the video-only run
        captions = json.loads((samples / "video_only" / "captions.json").read_text(encoding="utf-8"))["clips"]
        hyps = [captions[s]["caption"] or "" for s in stems]
        parsed = [parse_caption(h) for h in hyps]
        caption_row = {f"{k}_acc": sum(p[k] == e[k] for p, e in zip(parsed, test)) / len(test) for k in ("class", "count", "pitch")}
        caption_row.update(caption_metrics(hyps, [[e["output"]] for e in test]))

    timing = {}
    for folder in (data.parent, Path(args.features_dir), samples.parent):
        if (folder / "timing.json").exists():
            timing.update(json.loads((folder / "timing.json").read_text(encoding="utf-8")))
    seeds = {}  # every stage's seed, read from what it wrote
    for stage in ("stage1", "stage2"):
        ckpt = samples.parent / f"{stage}.pt"
        if ckpt.exists():
            seeds[stage] = torch.load(ckpt, map_location="cpu", weights_only=True)["config"]["seed"]
    result = {"captions": caption_row, "audio": audio, "timing": timing, "seeds": seeds,
              "settings": {"split": args.split, "n_clips": len(test), "onset_tolerance_s": 0.05, "analyzer": "data/toy/world.py analyze",
                           "swapped_prompts": "the test caption with its pitch words swapped (world.swap_pitch)",
                           "negative_pitch": "the template prompt, with the negative prompt each clip's captions.json "
                                             "entry names (the Makefile: the pitch-swapped caption)",
                           "edit_swapped": "each clip's own sound redone over its entry's `edit` range (around its "
                                           "first strike) with the pitch-swapped caption"}}
    out = Path(args.out)
    save_json(result, out)
    print(f"captions ({len(test)} {args.split} clips): " + ", ".join(f"{k} {v:.3f}" for k, v in caption_row.items()))
    print(f"| {'audio':20s} | class | count | onset F1 | pitch |")
    print("|" + "-" * 22 + "|-------|-------|----------|-------|")
    for name, r in audio.items():
        if name == "swapped_pitch_text":
            print(f"| {name:20s} |       |       | {r['onset_f1']:8.3f} | {r['pitch_follows_text']:.3f} (follows the text) |")
        elif name == "negative_pitch":
            print(f"| {name:20s} |       |       | {r['onset_f1']:8.3f} | {r['pitch_avoids_negative']:.3f} (avoids the negative) |")
        elif name == "edit_swapped":
            print(f"| {name:20s} |       |       | {r['onset_f1']:8.3f} | {r['pitch_follows_text']:.3f} (follows the text; "
                  f"outside untouched {r['outside_untouched']:.3f}) |")
        else:
            print(f"| {name:20s} | {r['class_acc']:.3f} | {r['count_acc']:.3f} | {r['onset_f1']:8.3f} | {r['pitch_acc']:.3f} |")
    print("timing: wall / CPU seconds (user + system) per stage")
    for stage, t in timing.items():
        print(f"  {stage:28s} {t['wall_s']:8.1f} {t['cpu_s']:8.1f}")
    print(f"  {'all':28s} {sum(t['wall_s'] for t in timing.values()):8.1f} {sum(t['cpu_s'] for t in timing.values()):8.1f}")
    print(f"wrote {out}")




def main(argv=None):
    score_run(parse_config(Config, {"toy": {}}, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
