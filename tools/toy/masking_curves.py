"""
Learning curves of VATT Audio on the toy world for two masking distributions of §3.2.2: the
paper's N(0.75, 0.25) and the toy preset's N(1.0, 0.05), both truncated to [0.5, 1]. For each
distribution and seed, stage 2 is trained on one Converter (stage 1 stays fixed) with the toy
preset's settings for --steps steps, --every steps at a time (stage2_audio.py --stop_at, each piece
resuming the last: one run along the schedule of --steps), a copy of its checkpoint kept after each.
Each kept checkpoint is then measured on the validation split:

  video only   class, count and onset F1 of audio sampled with the template prompt (tools/sample_split.py,
               scored by data/toy/score.py)
  GT caption   how often the register of audio sampled with the true caption matches the clip's
  text gain    the frequency level's loss with the pitch-swapped caption minus with the true one,
               at r = 1, in nats per masked token (tools/toy/text_gain.py)
  loss at r    the masked-token loss of eq. 2 with the template prompt at fixed masking ratios

It writes out_dir/curves.json, prints the table and draws the figure (--figure). Training runs
--jobs at a time, one thread each; every piece is resumable (a finished run or a measured
checkpoint is kept). The reading of the curves is in docs/toy-tuning.md.

    python tools/toy/masking_curves.py                                  # 2 x 2 runs of 8000 steps: hours on 2 cores
    python tools/toy/masking_curves.py --seeds=0 --steps=2000 --every=1000 --out_dir=out/curves-short
"""
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the repo root
from data.toy import score as toy_score  # noqa: E402
from tools.toy.text_gain import clip_arrays, losses_at_ratios  # noqa: E402
from extract_features import feature_files  # noqa: E402
from stage1_caption import TEMPLATE, load_converter  # noqa: E402
from stage2_audio import load_vatt_audio  # noqa: E402
from utils import atomic_path, parse_config, save_json  # noqa: E402

MASKINGS = {"paper": (0.75, 0.25), "toy": (1.0, 0.05)}  # name: (mask_mean, mask_std), §3.2.2 and the toy preset
RATIOS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # where the loss is measured
BAR = 0.9  # the toy's bar for the video-only and text rows (README)


@dataclass
class Config:
    preset: str = "toy"
    converter: str = "out/toy/stage1.pt"  # the stage-1 model every run shares (make demo's)
    data_json: str = "data/toy/v2a_instruction.json"
    features_dir: str = "data/toy/features"
    out_dir: str = "out/masking-curves"  # one folder per run, <masking>-seed<n>
    maskings: str = "paper,toy"  # which of MASKINGS
    seeds: str = "0,1"  # stage 2's seeds
    steps: int = 8000  # each run's max_steps (its cosine schedule spans them)
    every: int = 1000  # measure a checkpoint every this many steps (a divisor of --steps)
    batch_size: int = 0  # stage 2's batch; 0: the toy preset's
    jobs: int = 2  # runs (and sampling runs) at a time, one thread each
    split: str = "val"  # tune on val; the test split is for the final table only
    figure: str = "docs/masking-curves.png"  # "" draws none


def run_all(commands, jobs, logs):
    """Runs the commands (argument lists) `jobs` at a time, one thread each, each appending to its
    log; stops at the first failure."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    pending, running = list(zip(commands, logs)), []
    while pending or running:
        while pending and len(running) < jobs:
            cmd, log = pending.pop(0)
            with open(log, "a") as f:
                running.append((subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env), log))
        time.sleep(1)
        for proc, log in [(p, lg) for p, lg in running if p.poll() is not None]:
            if proc.returncode:
                sys.exit(f"error: {' '.join(map(str, proc.args))} failed, see {log}")
            running.remove((proc, log))


@torch.no_grad()
def conditions(converter, features_dir, entries):
    """What every checkpoint is measured on, computed once (the Converter is shared): the clips'
    tokens and the Converter's conditions with the true caption, the swapped one and the template."""
    conv = load_converter(converter, torch.device("cpu"))
    feats, codes = clip_arrays(feature_files(features_dir), entries)  # (B, N, D), (B, L, T)
    conds = {key: conv.condition(feats, prompts, cut=True) for key, prompts in
             (("true", [e["output"] for e in entries]), ("swapped", [e["swapped"] for e in entries]),
              ("template", [TEMPLATE] * len(entries)))}
    return codes, conds


@torch.no_grad()
def measure_losses(stage2, codes, conds):
    """The text gain at r = 1 and the template prompt's loss at each of RATIOS, on the same masks
    for every checkpoint."""
    model, _ = load_vatt_audio(stage2, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    m_true = conds["true"][1]  # the swapped caption has the true one's tokens but the pitch words
    (true, swap), = losses_at_ratios(model, codes, [conds["true"], (conds["swapped"][0], m_true)], [1.0], g)
    template = [row[0][1] for row in losses_at_ratios(model, codes, [conds["template"]], RATIOS, g)]
    return {"text_gain_r1": swap[0] - true[0], "template_loss": dict(zip(map(str, RATIOS), template))}


def main(argv=None):
    cfg = parse_config(Config, {"toy": {}}, argv)
    py, out = sys.executable, Path(cfg.out_dir)
    runs = [(m, int(s)) for m in cfg.maskings.split(",") for s in cfg.seeds.split(",")]
    for m, _ in runs:
        if m not in MASKINGS:
            sys.exit(f"error: --maskings: {m!r} is not one of {', '.join(MASKINGS)}")
    if cfg.steps % cfg.every:
        sys.exit(f"error: --every={cfg.every} does not divide --steps={cfg.steps}")
    name = lambda m, s: f"{m}-seed{s}"  # noqa: E731
    out.mkdir(parents=True, exist_ok=True)

    # 1. train every run to each point, every run's piece up to it at once, and keep a copy of its
    # checkpoint there (stage2_audio.py resumes an unfinished piece and leaves a finished one; the
    # training steps draw from (seed, step) alone, so the pieces train exactly what one run would)
    batch = [f"--batch_size={cfg.batch_size}"] if cfg.batch_size else []
    for stop in range(cfg.every, cfg.steps + 1, cfg.every):
        todo = [(m, s) for m, s in runs if not (out / name(m, s) / f"stage2-step{stop}.pt").exists()]
        run_all([[py, str(ROOT / "stage2_audio.py"), "--preset=toy", f"--seed={s}", f"--converter={cfg.converter}",
                  f"--data_json={cfg.data_json}", f"--features_dir={cfg.features_dir}",
                  f"--out_dir={out / name(m, s)}", f"--mask_mean={MASKINGS[m][0]}", f"--mask_std={MASKINGS[m][1]}",
                  f"--max_steps={cfg.steps}", f"--stop_at={stop}", f"--eval_interval={cfg.every}", *batch]
                 for m, s in todo], cfg.jobs, [out / f"{name(m, s)}.log" for m, s in todo])
        for m, s in todo:
            with atomic_path(out / name(m, s) / f"stage2-step{stop}.pt") as tmp:
                shutil.copyfile(out / name(m, s) / "stage2.pt", tmp)

    # 2. sample every kept checkpoint without text and with the true caption (a folder each:
    # stage1.pt and the kept stage2.pt linked in)
    points = [(m, s, step) for m, s in runs for step in range(cfg.every, cfg.steps + 1, cfg.every)]
    sample, todo = [py, str(ROOT / "tools" / "sample_split.py"), "--preset=toy", f"--data_json={cfg.data_json}", f"--split={cfg.split}", "--seed=0"], []
    for m, s, step in points:
        d = out / name(m, s) / f"step{step}"
        d.mkdir(exist_ok=True)
        for link, target in (("stage1.pt", Path(cfg.converter).resolve()), ("stage2.pt", (out / name(m, s) / f"stage2-step{step}.pt").resolve())):
            if not (d / link).exists():
                (d / link).symlink_to(target)
        for mode, extra in (("video_only", []), ("gt_caption", ["--prompt_field=output"])):
            if not (d / "samples" / mode / "captions.json").exists():
                todo.append(([*sample, f"--ckpt_dir={d}", f"--name={mode}", *extra], d / f"{mode}.log"))
    run_all([c for c, _ in todo], cfg.jobs, [log for _, log in todo])

    # 3. score each point and measure its losses
    entries = [e for e in json.loads(Path(cfg.data_json).read_text(encoding="utf-8")) if e["split"] == cfg.split]
    result_path = out / "curves.json"
    results = json.loads(result_path.read_text(encoding="utf-8")) if result_path.exists() else {}
    if any(f"{name(m, s)}/{step}" not in results for m, s, step in points):
        codes, conds = conditions(cfg.converter, cfg.features_dir, entries)
    for m, s, step in points:
        key, d = f"{name(m, s)}/{step}", out / name(m, s) / f"step{step}"
        if key in results:
            continue
        toy_score.score_run(toy_score.Config(data_json=cfg.data_json, features_dir=cfg.features_dir, samples_dir=str(d / "samples"), split=cfg.split,
                                             out=str(d / "val-eval.json")))
        audio = json.loads((d / "val-eval.json").read_text(encoding="utf-8"))["audio"]
        results[key] = {"masking": m, "seed": s, "step": step, "video_only": audio["video_only"],
                        "gt_caption_register": audio["gt_caption"]["pitch_acc"], **measure_losses(d / "stage2.pt", codes, conds)}
        save_json(results, result_path)

    print("| masking | seed | step | video only: class / count / onset F1 | GT caption: register | text gain r=1 (nats) | template loss r=0.5 / 0.7 / 1 |")
    print("|---|---|---|---|---|---|---|")
    for m, s, step in points:
        r = results[f"{name(m, s)}/{step}"]
        v, tl = r["video_only"], r["template_loss"]
        print(f"| {m} | {s} | {step} | {v['class_acc']:.3f} / {v['count_acc']:.3f} / {v['onset_f1']:.3f} | "
              f"{r['gt_caption_register']:.3f} | {r['text_gain_r1']:.3f} | {tl['0.5']:.3f} / {tl['0.7']:.3f} / {tl['1.0']:.3f} |")
    if cfg.figure:
        draw(results, runs, name, cfg.figure)
    print(f"wrote {result_path}")


def draw(results, runs, name, path):
    """Five panels against training steps, one line per run (colour: masking, style: seed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("video only: onset F1", lambda r: r["video_only"]["onset_f1"], True),
              ("video only: count", lambda r: r["video_only"]["count_acc"], True),
              ("GT caption: register", lambda r: r["gt_caption_register"], True),
              ("text gain at r = 1 (nats)", lambda r: r["text_gain_r1"], False),
              ("template loss at r = 1 (nats)", lambda r: r["template_loss"]["1.0"], False)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    colours, styles = {"paper": "tab:red", "toy": "tab:blue"}, ["-", "--", ":"]
    seeds = sorted({s for _, s in runs})
    for ax, (title, value, rate) in zip(axes, panels):
        if rate:  # a share of clips, with the toy's bar
            ax.axhline(BAR, color="grey", lw=0.8, ls="--")
            ax.set_ylim(0, 1.02)
        for m, s in runs:
            pts = sorted((r["step"], value(r)) for r in results.values() if r["masking"] == m and r["seed"] == s)
            ax.plot(*zip(*pts), styles[seeds.index(s) % len(styles)], color=colours[m], marker="o", ms=3,
                    label=f"{m} N{MASKINGS[m]}, seed {s}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("stage-2 steps")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
