"""
`make gpu-check`: everything this project says about GPUs, measured in one command of at most
8 minutes on one GPU. Each step is a subprocess with its own timeout (and all of them one budget),
its output in <out_dir>/logs/<step>.log, its wall time recorded:

    gpu_tests      pytest -m gpu: the tests that skip without a GPU; a skip counts as a failure here
    bench_eager    bench.py --preset=gemma-2b: bf16 autocast at batch 1, 8, 32, and the naive baseline
    toy_demo       make demo's stages on the GPU, each timed, with SHORTENED training (Config below)
    bench_compile  the same bench with --compile (last: its compile time is the least predictable)

then <out_dir>/result.json (device, torch, CUDA, each step's status and numbers), every GPU table
in <out_dir>/tables.md, and the same tables into the README and docs/ between their markers
(<!-- gpu-check:NAME --> ... <!-- /gpu-check:NAME -->; a file without markers is left alone).
Without a GPU it refuses at once (exit status 2); a step that fails, times out or skips makes it
exit 1, after writing what it has and naming the step.

    make gpu-check
    python tools/gpu_check.py --write_docs=false          # measure; tables only in out/gpu-check/tables.md
    python tools/gpu_check.py --timeout_compile=240 --budget_s=600   # a slower card
    python tools/gpu_check.py --tables_from=result.json   # a GPU machine's result, its tables written here
"""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root
from utils import atomic_path, parse_config, save_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# -----------------------------------------------------------------------------
# config


@dataclass
class Config:
    preset: str = "toy"  # parse_config's default preset; the check has no other
    out_dir: str = "out/gpu-check"  # result.json, tables.md, logs/, the bench JSONs, the toy run
    budget_s: int = 470  # no step starts or runs past this many seconds from the start (8 minutes, all told)
    # each step's own timeout in seconds, with room over what it took on a fast H200 host (the
    # README's table: 21, 30, 237 and 112 s; raise them on a slower host); each step also stops at the budget's end
    timeout_tests: int = 45
    timeout_bench: int = 90
    timeout_toy: int = 300  # all of the toy demo's stages together: eleven processes, mostly on the CPU
    timeout_compile: int = 170
    repeats: int = 3  # bench.py's timed passes per batch size (the median is reported)
    # the toy demo, SHORTENED to fit the budget: make demo's world and sampling, but stage 1 and
    # stage 2 trained for these many steps (make demo: 6000 and 2000), and the first this many of
    # its test clips (the same clips: each is seeded by its index) made, sampled and scored:
    # sampling the toy is mostly the host's work, and hosts differ (docs/sampling-speed.md)
    toy_stage1_steps: int = 1000
    toy_stage2_steps: int = 500
    toy_test_clips: int = 64
    seed: int = 0  # the toy demo's SEED
    write_docs: bool = True  # fill the markers in README.md and docs/*.md (tables.md is always written)
    # the commit measured, for a tree without its .git (a copy sent to a GPU machine); empty = git rev-parse
    commit: str = ""
    # a result.json recorded earlier (on another machine): write its tables, measure nothing, need no GPU
    tables_from: str = ""


MIN_STEP_S = 10  # a step with less time than this left in the budget is not started
BATCHES = (1, 8, 32)  # the sampling-speed table's fast rows
# docs/sampling-speed.md's targets for gemma-2b in bf16 (set for an H100): ms per 10 s clip at a batch size
TARGET_MS = {1: 300, 32: 65}
# make demo's sampling runs (the Makefile): name, then sample.py's extra options
TOY_MODES = [("video_only", []), ("gt_caption", ["--prompt_field=output", "--save_steps"]),
             ("self_caption", ["--self_prompt"]), ("swapped_pitch_text", ["--prompt_field=swapped"]),
             ("negative_pitch", ["--negative_field=swapped"]),
             ("edit_swapped", ["--edit_field=edit", "--prompt_field=swapped"])]

# -----------------------------------------------------------------------------
# running a command: its own process group (DataLoader and compile workers die with it on a timeout)


def run_command(cmd, log, timeout):
    """Runs cmd (a list) from the repo root, its output to `log`; returns a step record: cmd,
    status (ok / failed / timeout), rc, wall_s, log and, when not ok, error (one line: why) and
    log_tail (the log's last lines)."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    t0, timed_out = time.time(), False
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc, timed_out = proc.wait(), True
    step = dict(cmd=shlex.join(cmd), rc=rc, wall_s=round(time.time() - t0, 1), log=str(log),
                status="timeout" if timed_out else "ok" if rc == 0 else "failed")
    if step["status"] != "ok":
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        last = tail[-1].strip() if tail else ""
        step["error"] = f"killed at its {timeout:.0f} s timeout" if timed_out else f"exit status {rc}: {last}"
        step["log_tail"] = "\n".join(tail)
    return step


# -----------------------------------------------------------------------------
# step 1: the GPU-only tests


def read_junit(path):
    """passed / failed / skipped: the test names in a pytest --junitxml report."""
    out = {"passed": [], "failed": [], "skipped": []}
    for case in ET.parse(path).getroot().iter("testcase"):
        kind = next((k for k in ("failure", "error", "skipped") if case.find(k) is not None), None)
        out[{"failure": "failed", "error": "failed", "skipped": "skipped", None: "passed"}[kind]].append(
            f"{case.get('classname')}.{case.get('name')}")
    return out


def tests_problem(rc, tests):
    """Why the GPU-only tests' run is not a pass (None when it is): any failure, any skip (a GPU
    test that skips on a GPU is a broken GPU path), nothing run, or pytest's own error."""
    if tests["failed"]:
        return f"{len(tests['failed'])} failed: {', '.join(tests['failed'])}"
    if tests["skipped"]:
        return f"{len(tests['skipped'])} skipped on the GPU: {', '.join(tests['skipped'])}"
    if not tests["passed"]:
        return "no GPU test ran (none is marked gpu?)"
    return None if rc == 0 else f"pytest exited {rc}"


def step_gpu_tests(args, out, timeout):
    """The tests marked `gpu` (pytest.ini), which skip without a GPU."""
    xml = out / "gpu-tests.xml"
    xml.unlink(missing_ok=True)
    step = run_command([PY, "-m", "pytest", "-q", "-rs", "-m", "gpu", f"--junitxml={xml}", "tests"],
                       out / "logs" / "gpu_tests.log", timeout)
    if step["status"] != "timeout":  # pytest's exit status alone passes a run whose GPU tests all skipped
        step["tests"] = read_junit(xml) if xml.exists() else dict(passed=[], failed=[], skipped=[])
        step["selected"] = sum(step["tests"].values(), [])
        problem = tests_problem(step["rc"], step["tests"])
        if problem:
            step.update(status="failed", error=problem)
    return step


# -----------------------------------------------------------------------------
# steps 2 and 4: bench.py at the gemma-2b size, eager and compiled


def bench_problem(bench, compiled):
    """What is wrong with a bench.json for this check (None when nothing): not on the GPU, the
    wrong compile setting, fast rows other than bf16 at batch 1, 8, 32, or no naive row."""
    if bench["device"].startswith(("cpu", "mps")):
        return f"bench.py ran on {bench['device']}, not on the GPU"
    if bench["compile"] != compiled:
        return f"bench.json says compile {bench['compile']}, expected {compiled}"
    fast = [(r["batch"], r["dtype"]) for r in bench["rows"] if r["mode"] == "fast"]
    if fast != [(b, "bfloat16 autocast") for b in BATCHES]:
        return f"fast rows {fast}, expected bf16 autocast at batch {', '.join(map(str, BATCHES))}"
    if not any(r["mode"] == "naive" for r in bench["rows"]):
        return "no naive row"
    return None


def step_bench(args, out, timeout, compiled):
    name = "bench_compile" if compiled else "bench_eager"
    folder = out / name.replace("_", "-")
    (folder / "bench.json").unlink(missing_ok=True)  # never read a previous run's
    cmd = [PY, "tools/bench.py", "--preset=gemma-2b", "--device=cuda", f"--batch_sizes={','.join(map(str, BATCHES))}",
           "--naive", f"--repeats={args.repeats}", f"--out_dir={folder}"] + (["--compile"] if compiled else [])
    step = run_command(cmd, out / "logs" / f"{name}.log", timeout)
    if step["status"] == "ok":
        step["bench"] = json.loads((folder / "bench.json").read_text(encoding="utf-8"))
        problem = bench_problem(step["bench"], compiled)
        if problem:
            step.update(status="failed", error=problem)
    return step


# -----------------------------------------------------------------------------
# step 3: the toy demo on the GPU, stage by stage (the Makefile's demo target, in out_dir/toy)


def step_toy(args, out, timeout):
    deadline = time.time() + timeout  # for all the stages together
    import shutil

    import stage1_caption  # here, not at the top: only the toy's defaults need them (and their imports' time)
    import stage2_audio
    from data.toy import prepare

    d = out / "toy"
    shutil.rmtree(d, ignore_errors=True)  # the stages resume from what they find: start clean, time all of it
    data, feats, ckpt = f"--data_json={d}/v2a_instruction.json", f"--features_dir={d}/features", d / "out"
    seed, gpu = f"--seed={args.seed}", "--device=cuda"
    stages = [("prepare (CPU)", [PY, "data/toy/prepare.py", f"--out_dir={d}", f"--n_test={args.toy_test_clips}"]),
              ("extract_features", [PY, "extract_features.py", "--preset=toy", f"--input={d}/v2a_instruction.json",
                                    f"--out_dir={d}/features", f"--num_workers={min(8, os.cpu_count() or 1)}", gpu]),
              ("toy LLM (CPU)", [PY, "data/toy/llm.py", data, seed, f"--out={ckpt}/base_llm"]),
              ("stage 1", [PY, "stage1_caption.py", "--preset=toy", data, feats, seed, gpu, f"--out_dir={ckpt}",
                           f"--llm={ckpt}/base_llm", f"--max_steps={args.toy_stage1_steps}"]),
              ("stage 2", [PY, "stage2_audio.py", "--preset=toy", data, feats, seed, gpu, f"--out_dir={ckpt}",
                           f"--converter={ckpt}/stage1.pt", f"--max_steps={args.toy_stage2_steps}"])]
    stages += [(f"sample {name}", [PY, "tools/sample_split.py", "--preset=toy", data, "--split=test", f"--ckpt_dir={ckpt}", seed, gpu,
                                   f"--name={name}", *extra]) for name, extra in TOY_MODES]
    stages += [("score (CPU)", [PY, "data/toy/score.py", data, feats, f"--samples_dir={ckpt}/samples",
                                f"--out={ckpt}/eval.json"])]
    step = dict(status="ok", stages=[], shortened=dict(
        stage1_steps=args.toy_stage1_steps, stage1_steps_demo=stage1_caption.Config.max_steps,
        stage2_steps=args.toy_stage2_steps, stage2_steps_demo=stage2_audio.Config.max_steps,
        test_clips=args.toy_test_clips, test_clips_demo=prepare.Config.n_test))
    for name, cmd in stages:
        if step["status"] != "ok":
            step["stages"].append(dict(name=name, cmd=shlex.join(cmd), status="not run", wall_s=0.0))
            continue
        s = run_command(cmd, out / "logs" / f"toy_{re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')}.log",
                        deadline - time.time())
        if s["status"] == "timeout":  # the stages share one timeout: say whose it was
            s["error"] = f"killed when the toy demo's {timeout:.0f} s ran out"
        step["stages"].append(dict(name=name, **s))
        if s["status"] != "ok":
            step.update(status=s["status"], error=f"{name}: {s['error']}", log_tail=s["log_tail"])
    step["wall_s"] = round(sum(s["wall_s"] for s in step["stages"]), 1)
    if step["status"] == "ok":
        step["eval"] = json.loads((ckpt / "eval.json").read_text(encoding="utf-8"))
    return step


# -----------------------------------------------------------------------------
# the tables: pure functions of result.json, written between marker comments


def where(r):
    return f"`make gpu-check` on {r['device']}, torch {r['torch']}, CUDA {r['cuda']}, commit {r['commit']}, {r['date']}"


def cell(x, fmt, suffix=""):
    return "" if x is None else f"{x:{fmt}}{suffix}"


def first_line(text):
    return (text or "").strip().splitlines()[0][:120].replace("|", "\\|") if (text or "").strip() else ""


def sampling_table(r):
    """docs/sampling-speed.md's GPU table: gemma-2b in bf16, eager and compiled, against the targets."""
    steps = r["steps"]
    runs = [(compiled, steps.get(name, {})) for compiled, name in ((False, "bench_eager"), (True, "bench_compile"))]
    bench = next((s["bench"] for _, s in runs if "bench" in s), None)
    head = f"GPU (gemma-2b, bf16 autocast; {where(r)})"
    if bench:
        head += (f": {bench['clip_seconds']:g} s clips ({bench['tokens']['condition']} condition + "
                 f"{bench['tokens']['audio']} audio tokens), {bench['steps']} steps, the median of {bench['repeats']} passes")
    lines = [head + ":", "",
             "| compile | mode | batch | dtype | prefill ms | decoder ms | codec ms | total ms/clip | clips/s | TFLOP/s "
             "| % bf16 peak | peak mem GB | vs naive |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes, best = [], {}
    for compiled, s in runs:
        if "bench" not in s:
            why = ": ".join(x for x in (s.get("status", "not run"), first_line(s.get("error"))) if x)
            notes.append(f"No rows from `bench.py{' --compile' if compiled else ''}` ({why}).")
            continue
        for x in s["bench"]["rows"]:
            if compiled and x["mode"] == "naive":
                continue  # naive never compiles: the eager run's row is the same baseline
            ms = x["ms_per_clip"]
            lines.append(f"| {'yes' if compiled else 'no'} | {x['mode']} | {x['batch']} | {x['dtype']} | {ms['prefill']:.1f} "
                         f"| {ms['decoder']:.1f} | {ms['codec']:.1f} | {ms['total']:.1f} | {x['clips_per_s']:.3g} "
                         f"| {x['tflops']['total']:.3g} | {cell(x['percent_of_peak'], '.1f')} | {x['peak_memory_gb']:.2f} "
                         f"| {cell(x['speedup_vs_naive'], '.2f', 'x')} |")
            if x["mode"] == "fast":
                best[x["batch"]] = min(best.get(x["batch"], ms["total"]), ms["total"])
    prose = notes + ["Naive (float32, a clip at a time) never compiles: \"vs naive\" is against each run's own naive row."]
    if any(b in best for b in TARGET_MS):
        prose.append("The targets (set for an H100), the better of eager and compiled: " + "; ".join(
            f"at most {t} ms per clip at batch {b}: {best[b]:.1f} ms ({'met' if best[b] <= t else 'MISSED'})"
            for b, t in TARGET_MS.items() if b in best) + ".")
    if bench and bench["peak_bf16_tflops"]:
        tflop = bench["flops_per_clip"]["total"] / 1e12
        prose.append(f"As a bound: {tflop:.1f} TFLOP per clip at {bench['steps']} steps is "
                     f"{1000 * tflop / bench['peak_bf16_tflops']:.0f} ms at this card's dense bf16 peak "
                     f"({bench['peak_bf16_tflops']:g} TFLOP/s).")
    return "\n".join(lines + ["", " ".join(prose)])


def toy_table(r):
    """The toy demo on the GPU: each stage's wall time, then its scores (SHORTENED training)."""
    s = r["steps"].get("toy_demo", {})
    if "stages" not in s:
        return f"The toy demo on the GPU ({where(r)}): {s.get('status', 'not run')}. {first_line(s.get('error'))}".strip()
    k = s["shortened"]
    lines = [f"The toy demo on the GPU ({where(r)}), SHORTENED to fit the check: stage 1 {k['stage1_steps']} of "
             f"make demo's {k['stage1_steps_demo']} steps, stage 2 {k['stage2_steps']} of {k['stage2_steps_demo']}, "
             f"sampled on {k['test_clips']} of its {k['test_clips_demo']} test clips; the scores are this short "
             f"training's, not the README's:", "",
             "| stage | status | wall s |", "|---|---|---|"]
    lines += [f"| {x['name']} | {x['status']} | {x['wall_s']:.1f} |" for x in s["stages"]]
    lines.append(f"| total | {s['status']} | {s['wall_s']:.1f} |")
    if s.get("error"):
        lines += ["", f"Failed: {first_line(s['error'])}"]
    if "eval" in s:
        e, c = s["eval"], s["eval"]["captions"]
        lines += ["", f"| {e['settings']['n_clips']} {e['settings']['split']} clips | class | count | onset F1 | pitch |",
                  "|---|---|---|---|---|"]
        if c:
            lines.append(f"| captions (Converter) | {c['class_acc']:.3f} | {c['count_acc']:.3f} |  | {c['pitch_acc']:.3f} |")
        for name, a in e["audio"].items():
            if "pitch_follows_text" in a:
                row = f"| | | {a['onset_f1']:.3f} | {a['pitch_follows_text']:.3f} (follows the text) |"
            elif "pitch_avoids_negative" in a:
                row = f"| | | {a['onset_f1']:.3f} | {a['pitch_avoids_negative']:.3f} (avoids the negative) |"
            else:
                row = f"| {a['class_acc']:.3f} | {a['count_acc']:.3f} | {a['onset_f1']:.3f} | {a['pitch_acc']:.3f} |"
            lines.append(f"| `{name}` {row}")
    return "\n".join(lines)


def step_summary(name, s):
    """One line of what a step found."""
    if s.get("status") != "ok":
        return first_line(s.get("error"))
    if name == "gpu_tests":
        return f"{len(s['tests']['passed'])} passed: " + ", ".join(f"`{t.split('::')[-1]}`" for t in s["selected"])
    if "bench" in s:
        ms = {(x["mode"], x["batch"]): x["ms_per_clip"]["total"] for x in s["bench"]["rows"]}
        fast = " / ".join(f"{ms['fast', b]:.1f}" for b in BATCHES)
        return f"ms per clip at batch {' / '.join(map(str, BATCHES))}: {fast}; naive {ms['naive', 1]:.1f}"
    if name == "toy_demo":
        k = s["shortened"]
        return f"{len(s['stages'])} stages, shortened training ({k['stage1_steps']} + {k['stage2_steps']} steps)"
    return ""


def summary_table(r):
    """The check itself: passed or not, and each step's status, wall time and finding."""
    failed = failed_steps(r)
    lines = [f"{where(r)}: {'FAILED (' + ', '.join(failed) + ')' if failed else 'passed'}, "
             f"{r.get('wall_s', 0):.0f} s of its {r['budget_s']} s budget.", "",
             "| step | status | wall s | found |", "|---|---|---|---|"]
    lines += [f"| {name} | {s['status']} | {s.get('wall_s', 0):.1f} | {step_summary(name, s)} |"
              for name, s in r["steps"].items()]
    return "\n".join(lines)


def tables(result):
    """Every GPU table, by marker name: {name: markdown}."""
    return {"sampling": sampling_table(result), "toy": toy_table(result), "summary": summary_table(result)}


def fill_markers(text, md, tool="gpu-check"):
    """`text` with each <!-- TOOL:NAME --> ... <!-- /TOOL:NAME --> region's content replaced by
    md[NAME] (tool: this check's, or tools/train_check.py's "train-check"); returns (text, names
    filled, problems: a name md lacks, a marker without its end)."""
    filled, problems = [], []
    for name in dict.fromkeys(re.findall(rf"<!-- {tool}:([\w-]+) -->", text)):
        pattern = re.compile(rf"(<!-- {tool}:{name} -->).*?(<!-- /{tool}:{name} -->)", re.S)
        if not pattern.search(text):
            problems.append(f"{name} (no <!-- /{tool}:{name} --> after it)")
        elif name not in md:
            problems.append(f"{name} (no such table; gpu_check.tables makes {', '.join(md)})")
        else:
            text = pattern.sub(lambda m: f"{m[1]}\n\n{md[name]}\n\n{m[2]}", text)
            filled.append(name)
    return text, filled, problems


def write_tables(result, root):
    """Fills the markers in root/README.md and root/docs/*.md (a file without any is left alone);
    returns {"filled": ["docs/x.md:NAME", ...], "problems": [...]}."""
    md, report = tables(result), {"filled": [], "problems": []}
    root = Path(root)
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        new, filled, problems = fill_markers(text, md)
        rel = path.relative_to(root).as_posix()
        report["filled"] += [f"{rel}:{n}" for n in filled]
        report["problems"] += [f"{rel}: {p}" for p in problems]
        if new != text:
            with atomic_path(path) as tmp:
                Path(tmp).write_text(new, encoding="utf-8")
    return report


# -----------------------------------------------------------------------------
# the check


def failed_steps(result):
    return [name for name, s in result["steps"].items() if s.get("status") != "ok"]


def exit_status(result):
    """0 when every step passed and every marker found its table, else 1."""
    return 1 if failed_steps(result) or result.get("tables", {}).get("problems") else 0


def git_commit():
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True)
        return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_all_tables(result, out, write_docs):
    """tables.md in `out` (always), the README's and docs' markers (when write_docs); records what it
    filled in result["tables"] and prints it."""
    md = tables(result)
    with atomic_path(out / "tables.md") as tmp:
        Path(tmp).write_text("".join(f"<!-- {n} -->\n{t}\n\n" for n, t in md.items()), encoding="utf-8")
    result["tables"] = write_tables(result, ROOT) if write_docs else {"filled": [], "problems": []}
    print(f"[gpu-check] tables: {out / 'tables.md'}; markers filled: {', '.join(result['tables']['filled']) or 'none'}")
    for p in result["tables"]["problems"]:
        print(f"[gpu-check] marker problem: {p}")


def main(argv=None):
    args = parse_config(Config, {"toy": {}}, argv)
    if args.tables_from:  # a recorded result: its tables, nothing measured
        result = json.loads(Path(args.tables_from).read_text(encoding="utf-8"))
        write_all_tables(result, Path(args.out_dir).resolve(), args.write_docs)
        return 1 if result["tables"]["problems"] else 0
    if not torch.cuda.is_available():
        print("error: no CUDA GPU (torch.cuda.is_available() is False): the GPU check runs only on a machine with one",
              file=sys.stderr)
        sys.exit(2)
    out, t0 = Path(args.out_dir).resolve(), time.time()  # absolute: the steps run from the repo root
    result = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__, cuda=torch.version.cuda,
                  commit=args.commit or git_commit(), date=datetime.now(timezone.utc).strftime("%Y-%m-%d"), budget_s=args.budget_s,
                  steps={})
    steps = [("gpu_tests", step_gpu_tests, args.timeout_tests),
             ("bench_eager", lambda a, o, t: step_bench(a, o, t, False), args.timeout_bench),
             ("toy_demo", step_toy, args.timeout_toy),
             ("bench_compile", lambda a, o, t: step_bench(a, o, t, True), args.timeout_compile)]
    for name, fn, timeout in steps:
        left = t0 + args.budget_s - time.time()
        if left < MIN_STEP_S:
            step = dict(status="not run", wall_s=0.0, error=f"not started: the {args.budget_s} s budget was spent")
        else:
            print(f"[gpu-check] {name} (timeout {min(timeout, left):.0f} s) ...", flush=True)
            step = fn(args, out, min(timeout, left))
        result["steps"][name] = step
        print(f"[gpu-check] {name}: {step['status']} in {step['wall_s']:.1f} s", flush=True)
        if step["status"] != "ok":  # loudly: why, and the end of its log
            print(f"[gpu-check] {name} FAILED: {step['error']}\n{step.get('log_tail', '')}".rstrip(), file=sys.stderr, flush=True)
        save_json(result, out / "result.json")  # what it has so far, after every step
    result["wall_s"] = round(time.time() - t0, 1)
    write_all_tables(result, out, args.write_docs)
    save_json(result, out / "result.json")
    failed = failed_steps(result) + (["markers"] if result["tables"]["problems"] else [])
    print(f"[gpu-check] {'FAILED: ' + ', '.join(failed) if failed else 'passed'} in {result['wall_s']:.0f} s; "
          f"{out / 'result.json'}")
    return exit_status(result)


if __name__ == "__main__":
    sys.exit(main())
