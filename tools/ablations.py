"""
The paper's ablations in miniature, on the toy world: Table 4 (VATT-V, VATT-Cross-Attn) and
appendix A's Table 5 (masking-ratio distributions). docs/ablations.md says what the table holds.

Every variant is stage2_audio.py with an option or two (VARIANTS below; the variants themselves
live in stage2_audio.py), trained with the toy's budget on the one stage-1 model they share, then
sampled on the test clips in the modes that apply (video only; the ground-truth caption; the
caption with its register swapped) and scored by data/toy/score.py. The two architectures' ablations:

  VATT-V           --condition=visual: no LLM, the VATT Projector's video tokens are the condition
                   (stage2_audio.audio_condition); no text input, so only the video-only mode
  VATT-Cross-Attn  --architecture=cross-attn: the audio tokens pass through a vanilla transformer
                   decoder (Vaswani et al. 2017) whose blocks interleave self-attention over the audio
                   with cross-attention to the condition (stage2_audio.CrossAttnAudio)

    make ablations                                   # all variants, two at a time, then the table
    python tools/ablations.py --stage1=out/toy/stage1.pt   # the same without make (the data must exist)
    python tools/ablations.py --variants=default,vatt-v --jobs=1
    python tools/ablations.py --table_only                 # gather the table from finished runs

Outputs: out/toy-ablations/<variant>/ (stage2.pt, samples/<mode>/, eval.json, log.txt) and the
table in out/toy/ablations.json and out/toy/ablations.md. A finished step is never redone: a
trained stage2.pt, a sampled mode and an eval.json are kept, so an interrupted run resumes.
"""
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root
import stage2_audio as s2  # noqa: E402
from data.toy import score  # noqa: E402
from tools import sample_split  # noqa: E402
from utils import atomic_path, parse_config, read_checkpoint, save_json  # noqa: E402

# -----------------------------------------------------------------------------
# config


@dataclass
class Config:
    preset: str = "toy"
    data_json: str = "data/toy/v2a_instruction.json"
    features_dir: str = "data/toy/features"
    stage1: str = "out/toy/stage1.pt"  # the trained Converter every variant shares (make demo's)
    out_dir: str = "out/toy-ablations"  # one folder per variant
    table: str = "out/toy/ablations.json"  # the gathered table, its markdown beside it (.md); empty = none
    variants: str = ""  # comma-separated names from VARIANTS; empty = all
    seed: int = 0  # stage 2 and sampling; the default model's second row takes seed + 1
    jobs: int = 2  # variants trained at once, each in its own process on one thread
    stage2_args: str = ""  # more stage2_audio.py options for every variant (the tests: tiny sizes)
    sample_args: str = ""  # more tools/sample_split.py options for every mode (the tests: --steps=2)
    table_only: bool = False  # only gather the table from the runs that exist


# The rows: name -> what the paper calls it, and the stage-2 options that make it (on top of the toy
# preset, whose masking is TN(1.0, 0.05) on [0.5, 1]). The Gaussians of Table 5 have std 0.25.
VARIANTS = {
    "default": dict(paper="VATT (toy preset)", stage2=[]),
    "default-seed1": dict(paper="VATT (toy preset), second seed", stage2=[], seed_offset=1),
    "vatt-v": dict(paper="VATT-V (Table 4)", stage2=["--condition=visual"], text=False),
    "cross-attn": dict(paper="VATT-Cross-Attn (Table 4)", stage2=["--architecture=cross-attn"]),
    "uniform": dict(paper="Uniform (Table 5)", stage2=["--mask_dist=uniform"]),
    "arccos": dict(paper="Arc cosine (Table 5)", stage2=["--mask_dist=arccos"]),
    "truncnorm-0.55": dict(paper="Gaussian, mean 0.55 (Table 5)", stage2=["--mask_mean=0.55", "--mask_std=0.25"]),
    "truncnorm-0.75": dict(paper="Gaussian, mean 0.75 (Table 5; the paper's choice, §3.2.2)",
                           stage2=["--mask_mean=0.75", "--mask_std=0.25"]),
    "truncnorm-0.95": dict(paper="Gaussian, mean 0.95 (Table 5)", stage2=["--mask_mean=0.95", "--mask_std=0.25"]),
    "sine": dict(paper="Gaussian, sine-scheduled mean 0.25 to 0.95 (Table 5)",
                 stage2=["--mask_dist=sine", "--mask_std=0.25"]),
}
# sampling modes (make demo's names) and their tools/sample_split.py options; a variant without
# text input (VATT-V) samples video_only alone
MODES = {"video_only": [], "gt_caption": ["--prompt_field=output"], "swapped_pitch_text": ["--prompt_field=swapped"]}

# -----------------------------------------------------------------------------
# one variant: train, sample, score


def link_stage1(stage1, folder):
    """sample.py reads stage1.pt from the checkpoint folder: it is linked into the variant's
    folder, so every variant shares one Converter."""
    link = folder / "stage1.pt"
    if not (link.exists() or link.is_symlink()):
        link.symlink_to(Path(stage1).resolve())


def stage2_done(path):
    if not path.is_file():
        return False
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["step"] == ckpt["config"]["max_steps"]


def run_variant(cfg, name):
    """Trains, samples and scores one variant into out_dir/<name>, skipping what is already done."""
    v, out = VARIANTS[name], Path(cfg.out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    link_stage1(cfg.stage1, out)
    seed = cfg.seed + v.get("seed_offset", 0)
    data = [f"--data_json={cfg.data_json}"]
    if not stage2_done(out / "stage2.pt"):
        s2.main([f"--preset={cfg.preset}", *data, f"--features_dir={cfg.features_dir}", f"--converter={cfg.stage1}",
                 f"--out_dir={out}", f"--seed={seed}", "--span_prob=0",  # the paper's training: no in-filling
                 *v["stage2"], *shlex.split(cfg.stage2_args)])
    modes = MODES if v.get("text", True) else {"video_only": MODES["video_only"]}
    for mode, options in modes.items():
        if not (out / "samples" / mode / "captions.json").is_file():
            if sample_split.main([f"--preset={cfg.preset}", *data, "--split=test", f"--ckpt_dir={out}",
                                  f"--seed={seed}", f"--name={mode}", *options, *shlex.split(cfg.sample_args)]) != 0:
                raise RuntimeError(f"tools/sample_split.py --name={mode} failed on some clips")
    if not (out / "eval.json").is_file():
        score.main([*data, f"--features_dir={cfg.features_dir}", f"--samples_dir={out / 'samples'}",
                    f"--out={out / 'eval.json'}"])


def run_in_process(cfg, names):
    """The variants one after another in this process; a failed one is reported and the rest go on."""
    failed = {}
    for name in names:
        print(f"== {name}", flush=True)
        try:
            run_variant(cfg, name)
        except SystemExit as e:  # a script's own one-line error
            print(f"{name}: {e}", file=sys.stderr)
            failed[name] = str(e)
        except Exception as e:  # noqa: BLE001 (a batch job: report it, keep the others)
            traceback.print_exc()
            failed[name] = f"{type(e).__name__}: {e}"
    return failed


def run_in_processes(cfg, names):
    """`jobs` variants at a time, each a child process on one thread, so that they share the cores
    without oversubscribing them; each one's output goes to <variant>/log.txt."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    options = [f"--{k}={v}" for k, v in asdict(cfg).items() if k not in ("variants", "jobs", "table")]

    def child(name):
        t0 = time.time()
        log = Path(cfg.out_dir) / name / "log.txt"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as f:
            rc = subprocess.run([sys.executable, __file__, *options, f"--variants={name}", "--jobs=1", "--table="],
                                stdout=f, stderr=subprocess.STDOUT, env=env).returncode
        print(f"{name}: {'done' if rc == 0 else 'FAILED'} in {(time.time() - t0) / 60:.1f} min (log: {log})", flush=True)
        return rc

    with ThreadPoolExecutor(cfg.jobs) as pool:
        codes = dict(zip(names, pool.map(child, names)))
    return {name: f"exit status {rc}, see {Path(cfg.out_dir) / name / 'log.txt'}" for name, rc in codes.items() if rc}


# -----------------------------------------------------------------------------
# the table


# (heading, row key, format): the video-only mode's columns, the two text modes', then training's
COLUMNS = (("class", "class_acc", ".3f"), ("onset F1", "onset_f1", ".3f"), ("count", "count_acc", ".3f"),
           ("register, true caption", "register_true_caption", ".3f"),
           ("register follows a swapped caption", "register_follows_swapped", ".3f"),
           ("final val loss", "val_loss", ".3f"), ("stage 2 (min)", "stage2_min", ".1f"))


def gather(cfg, names):
    """One row per variant from its eval.json (data/toy/score.py) and stage2.pt; None where missing."""
    rows = []
    for name in names:
        out = Path(cfg.out_dir) / name
        row = dict(variant=name, paper=VARIANTS[name]["paper"], stage2_options=VARIANTS[name]["stage2"],
                   **{key: None for _, key, _ in COLUMNS})
        if (out / "eval.json").is_file():
            audio = json.loads((out / "eval.json").read_text(encoding="utf-8"))["audio"]
            video = audio.get("video_only", {})
            row.update(class_acc=video.get("class_acc"), onset_f1=video.get("onset_f1"), count_acc=video.get("count_acc"),
                       register_true_caption=audio.get("gt_caption", {}).get("pitch_acc"),
                       register_follows_swapped=audio.get("swapped_pitch_text", {}).get("pitch_follows_text"))
        if (out / "stage2.pt").is_file():
            ckpt = torch.load(out / "stage2.pt", map_location="cpu", weights_only=True)
            row.update(val_loss=ckpt.get("val_loss"), step=ckpt["step"], seed=ckpt["config"]["seed"],
                       mask=dict(dist=ckpt["config"]["mask_dist"], mean=ckpt["config"]["mask_mean"],
                                 std=ckpt["config"]["mask_std"]))
        if (out / "timing.json").is_file():
            stage2 = json.loads((out / "timing.json").read_text(encoding="utf-8")).get("stage2_audio")
            row["stage2_min"] = None if stage2 is None else round(stage2["wall_s"] / 60, 1)
        rows.append(row)
    return rows


def markdown(rows):
    """The table as markdown, n/a where a variant has no such number (VATT-V takes no text)."""
    lines = ["| variant | " + " | ".join(label for label, _, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for r in rows:
        cells = ("n/a" if r[key] is None else format(r[key], fmt) for _, key, fmt in COLUMNS)
        lines.append(f"| {r['variant']}: {r['paper']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def measured_at():
    """The commit and the machine a table was made with."""
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=Path(__file__).parent)
    return {"commit": git.stdout.strip() or None, "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
            "torch": torch.__version__}


def write_table(cfg, names, failed, wall_s=None):
    rows = gather(cfg, names)
    result = {"rows": rows, "failed": failed, "wall_min": None if wall_s is None else round(wall_s / 60, 1),
              **measured_at(),
              "settings": {"stage1": cfg.stage1, "split": "test", "seed": cfg.seed, "stage2_args": cfg.stage2_args,
                           "sample_args": cfg.sample_args,
                           "columns": "class, onset F1, count: video-only mode; register: ground-truth-caption "
                                      "mode; follows: swapped-register-caption mode (data/toy/score.py); val loss: "
                                      "stage2.pt's last validation, under the variant's own masking"}}
    table = Path(cfg.table)
    save_json(result, table)
    text = markdown(rows) + (f"\nCommit {result['commit']}, {result['machine']}, torch {result['torch']}"
                             + (f"; {result['wall_min']} min of wall clock.\n" if wall_s is not None else ".\n"))
    with atomic_path(table.with_suffix(".md")) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    print(text + f"wrote {table} and {table.with_suffix('.md')}")


# -----------------------------------------------------------------------------


def main(argv=None):
    cfg = parse_config(Config, {"toy": {}}, argv)
    names = [n for n in cfg.variants.split(",") if n] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"error: --variants: no variant {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    failed, t0 = {}, time.time()
    if not cfg.table_only:
        ckpt = read_checkpoint(cfg.stage1, "vatt-converter", " (make demo trains it, or stage1_caption.py)")
        if ckpt["step"] != ckpt["config"]["max_steps"]:
            sys.exit(f"error: {cfg.stage1}: stopped at step {ckpt.get('step')} of {ckpt['config']['max_steps']} "
                     f"(an interrupted run): finish it with stage1_caption.py --out_dir={Path(cfg.stage1).parent}")
        run = run_in_processes if cfg.jobs > 1 and len(names) > 1 else run_in_process
        failed = run(cfg, names)
    if cfg.table:  # the wall time of this run, training included unless --table_only
        write_table(cfg, names, failed, None if cfg.table_only else time.time() - t0)
    for name, why in failed.items():
        print(f"failed: {name}: {why}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
