"""
Tests of `make gpu-check` (gpu_check.py) that need no GPU: it refuses at once without one; it finds
the GPU-only tests and fails a run where one skipped; its commands time out and fail loudly; its
tables come out of a recorded result as expected and land between their markers, leaving the rest
of a docs file alone; a failing step makes its exit status non-zero.
"""
import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools import gpu_check  # noqa: E402

# -----------------------------------------------------------------------------
# a recorded result, shaped as gpu_check.main writes it (numbers made up, kept consistent)


def bench_row(mode, batch, prefill, decoder, codec, mem, naive_ms=1000.0):
    total = prefill + decoder + codec
    tflops = 14.0 * 1000 / total  # 14.0 TFLOP per clip
    return dict(mode=mode, batch=batch, clips=batch, dtype="float32" if mode == "naive" else "bfloat16 autocast",
                ms_per_clip=dict(prefill=prefill, decoder=decoder, codec=codec, total=total),
                clips_per_s=1000 / total, tflops=dict(total=tflops), peak_memory_gb=mem,
                percent_of_peak=None if mode == "naive" else 100 * tflops / 989.4, speedup_vs_naive=naive_ms / total)


def bench_json(compiled, fast):
    rows = [bench_row("fast", b, *ms, mem) for b, ms, mem in zip((1, 8, 32), fast, (30.5, 40.0, 80.0))]
    return dict(preset="gemma-2b", device="NVIDIA H200", torch="2.14.1+cu130", peak_bf16_tflops=989.4, compile=compiled,
                steps=16, repeats=3, clip_seconds=10.0, tokens=dict(condition=118, audio=500),
                flops_per_clip=dict(prefill=0.5e12, decoder=13.4e12, codec=0.1e12, total=14.0e12),
                rows=rows + [bench_row("naive", 1, 100.0, 850.0, 50.0, 25.0)])


STAGES = ["prepare (CPU)", "extract_features", "toy LLM (CPU)", "stage 1", "stage 2", "sample video_only",
          "sample gt_caption", "sample self_caption", "sample swapped_pitch_text", "sample negative_pitch",
          "sample edit_swapped", "score (CPU)"]
GPU_TEST = "tests/test_bench.py::test_decode_tokens_never_waits_for_the_gpu"
RESULT = dict(
    device="NVIDIA H200", torch="2.14.1+cu130", cuda="13.0", commit="abc1234", date="2026-01-02", budget_s=470,
    wall_s=301.4,
    steps=dict(
        gpu_tests=dict(status="ok", wall_s=12.5, rc=0, selected=[GPU_TEST],
                       tests=dict(passed=["tests.test_bench.test_decode_tokens_never_waits_for_the_gpu"], failed=[], skipped=[])),
        bench_eager=dict(status="ok", wall_s=60.2, rc=0,
                         bench=bench_json(False, [(20.0, 200.0, 30.0), (5.0, 60.0, 5.0), (2.0, 40.0, 3.0)])),
        toy_demo=dict(status="ok", wall_s=110.0,
                      stages=[dict(name=n, status="ok", wall_s=10.0) for n in STAGES],
                      shortened=dict(stage1_steps=1000, stage1_steps_demo=6000, stage2_steps=500, stage2_steps_demo=2000,
                                     test_clips=64, test_clips_demo=200),
                      eval=dict(captions=dict(class_acc=0.9, count_acc=0.85, pitch_acc=0.5),
                                audio=dict(ground_truth=dict(class_acc=1.0, count_acc=1.0, onset_f1=1.0, pitch_acc=1.0),
                                           video_only=dict(class_acc=0.8, count_acc=0.75, onset_f1=0.9, pitch_acc=0.5),
                                           swapped_pitch_text=dict(pitch_follows_text=0.7, onset_f1=0.88),
                                           negative_pitch=dict(pitch_avoids_negative=0.6, onset_f1=0.87)),
                                settings=dict(split="test", n_clips=64))),
        bench_compile=dict(status="ok", wall_s=118.7, rc=0,
                           bench=bench_json(True, [(15.0, 150.0, 30.0), (5.0, 50.0, 5.0), (2.0, 70.0, 3.0)])),
    ))
WHERE = "`make gpu-check` on NVIDIA H200, torch 2.14.1+cu130, CUDA 13.0, commit abc1234, 2026-01-02"

# -----------------------------------------------------------------------------
# no GPU: refused at once, nothing run


def test_refuses_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check.subprocess, "Popen", lambda *a, **k: pytest.fail("ran a command without a GPU"))
    with pytest.raises(SystemExit) as e:
        gpu_check.main([])
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: no CUDA GPU ") and err.count("\n") == 1


# -----------------------------------------------------------------------------
# the GPU-only tests: found by their cuda skip marks; a skip on the GPU is a failure


def test_the_gpu_tests_are_marked():
    """gpu_check runs `pytest -m gpu`: the GPU-only test carries the mark."""
    r = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-m", "gpu", "tests"], cwd=ROOT,
                       capture_output=True, text=True)
    assert GPU_TEST in r.stdout and "1/" in r.stdout.splitlines()[-1]


def test_a_skipped_or_failed_gpu_test_fails_the_step(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="3">'
                   '<testcase classname="tests.test_x" name="test_ok" time="0.1"/>'
                   '<testcase classname="tests.test_x" name="test_skip" time="0"><skipped message="no GPU"/></testcase>'
                   '<testcase classname="tests.test_x" name="test_bad" time="0"><failure message="boom"/></testcase>'
                   '</testsuite></testsuites>')
    tests = gpu_check.read_junit(xml)
    assert tests == dict(passed=["tests.test_x.test_ok"], failed=["tests.test_x.test_bad"], skipped=["tests.test_x.test_skip"])
    assert gpu_check.tests_problem(1, tests) == "1 failed: tests.test_x.test_bad"
    assert gpu_check.tests_problem(0, dict(tests, failed=[])) == "1 skipped on the GPU: tests.test_x.test_skip"  # pytest's rc is 0
    assert gpu_check.tests_problem(0, dict(passed=[], failed=[], skipped=[])) == "no GPU test ran (none is marked gpu?)"
    assert gpu_check.tests_problem(0, dict(passed=["a"], failed=[], skipped=[])) is None


# -----------------------------------------------------------------------------
# commands: a failure and a timeout are recorded with the reason


def test_run_command_records_failure_and_timeout(tmp_path):
    step = gpu_check.run_command([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path / "a.log", 30)
    assert step["status"] == "failed" and step["rc"] == 3 and step["error"] == "exit status 3: boom"
    step = gpu_check.run_command([sys.executable, "-c", "import time; print('slow', flush=True); time.sleep(60)"],
                                 tmp_path / "b.log", 1)
    assert step["status"] == "timeout" and step["wall_s"] < 30 and step["error"] == "killed at its 1 s timeout"
    assert "slow" in step["log_tail"]
    assert gpu_check.run_command([sys.executable, "-c", "pass"], tmp_path / "c.log", 30)["status"] == "ok"


def test_bench_problem_catches_a_cpu_or_partial_run():
    good = RESULT["steps"]["bench_eager"]["bench"]
    assert gpu_check.bench_problem(good, False) is None
    assert "not on the GPU" in gpu_check.bench_problem(dict(good, device="cpu (1 threads)"), False)
    assert "compile" in gpu_check.bench_problem(good, True)
    assert "expected bf16 autocast" in gpu_check.bench_problem(dict(good, rows=good["rows"][1:]), False)
    assert gpu_check.bench_problem(dict(good, rows=good["rows"][:3]), False) == "no naive row"


# -----------------------------------------------------------------------------
# the tables from the recorded result


def test_tables_from_a_recorded_result():
    md = gpu_check.tables(RESULT)
    assert set(md) == {"sampling", "toy", "summary"}
    assert md["sampling"] == "\n".join([
        f"GPU (gemma-2b, bf16 autocast; {WHERE}): 10 s clips (118 condition + 500 audio tokens), 16 steps, "
        "the median of 3 passes:",
        "",
        "| compile | mode | batch | dtype | prefill ms | decoder ms | codec ms | total ms/clip | clips/s | TFLOP/s "
        "| % bf16 peak | peak mem GB | vs naive |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        "| no | fast | 1 | bfloat16 autocast | 20.0 | 200.0 | 30.0 | 250.0 | 4 | 56 | 5.7 | 30.50 | 4.00x |",
        "| no | fast | 8 | bfloat16 autocast | 5.0 | 60.0 | 5.0 | 70.0 | 14.3 | 200 | 20.2 | 40.00 | 14.29x |",
        "| no | fast | 32 | bfloat16 autocast | 2.0 | 40.0 | 3.0 | 45.0 | 22.2 | 311 | 31.4 | 80.00 | 22.22x |",
        "| no | naive | 1 | float32 | 100.0 | 850.0 | 50.0 | 1000.0 | 1 | 14 |  | 25.00 | 1.00x |",
        "| yes | fast | 1 | bfloat16 autocast | 15.0 | 150.0 | 30.0 | 195.0 | 5.13 | 71.8 | 7.3 | 30.50 | 5.13x |",
        "| yes | fast | 8 | bfloat16 autocast | 5.0 | 50.0 | 5.0 | 60.0 | 16.7 | 233 | 23.6 | 40.00 | 16.67x |",
        "| yes | fast | 32 | bfloat16 autocast | 2.0 | 70.0 | 3.0 | 75.0 | 13.3 | 187 | 18.9 | 80.00 | 13.33x |",
        "",
        "Naive (float32, a clip at a time) never compiles: \"vs naive\" is against each run's own naive row. "
        "The targets (set for an H100), the better of eager and compiled: at most 300 ms per clip at batch 1: "
        "195.0 ms (met); at most 65 ms per clip at batch 32: 45.0 ms (met). As a bound: 14.0 TFLOP per clip at "
        "16 steps is 14 ms at this card's dense bf16 peak (989.4 TFLOP/s)."])
    toy = md["toy"].splitlines()
    assert toy[0] == (f"The toy demo on the GPU ({WHERE}), SHORTENED to fit the check: stage 1 1000 of make demo's "
                      "6000 steps, stage 2 500 of 2000, sampled on 64 of its 200 test clips; the scores are this "
                      "short training's, not the README's:")
    assert toy[2:5] == ["| stage | status | wall s |", "|---|---|---|", "| prepare (CPU) | ok | 10.0 |"]
    assert toy[16:] == ["| total | ok | 110.0 |", "",
                        "| 64 test clips | class | count | onset F1 | pitch |", "|---|---|---|---|---|",
                        "| captions (Converter) | 0.900 | 0.850 |  | 0.500 |",
                        "| `ground_truth` | 1.000 | 1.000 | 1.000 | 1.000 |",
                        "| `video_only` | 0.800 | 0.750 | 0.900 | 0.500 |",
                        "| `swapped_pitch_text` | | | 0.880 | 0.700 (follows the text) |",
                        "| `negative_pitch` | | | 0.870 | 0.600 (avoids the negative) |"]
    assert md["summary"] == "\n".join([
        f"{WHERE}: passed, 301 s of its 470 s budget.", "",
        "| step | status | wall s | found |", "|---|---|---|---|",
        "| gpu_tests | ok | 12.5 | 1 passed: `test_decode_tokens_never_waits_for_the_gpu` |",
        "| bench_eager | ok | 60.2 | ms per clip at batch 1 / 8 / 32: 250.0 / 70.0 / 45.0; naive 1000.0 |",
        "| toy_demo | ok | 110.0 | 12 stages, shortened training (1000 + 500 steps) |",
        "| bench_compile | ok | 118.7 | ms per clip at batch 1 / 8 / 32: 195.0 / 60.0 / 75.0; naive 1000.0 |"])


def failed_result():
    """The recorded result with --compile timed out and the toy demo failed at stage 2."""
    r = copy.deepcopy(RESULT)
    r["steps"]["bench_compile"] = dict(status="timeout", wall_s=180.0, rc=-9, error="killed at its 180 s timeout")
    toy = r["steps"]["toy_demo"]
    toy.update(status="failed", error="stage 2: exit status 1: RuntimeError: CUDA error | device-side assert")
    del toy["eval"]
    failed = STAGES.index("stage 2")
    for i, s in enumerate(toy["stages"]):
        s["status"] = "ok" if i < failed else "failed" if i == failed else "not run"
    return r


def test_tables_of_a_failed_run_say_what_failed():
    md = gpu_check.tables(failed_result())
    assert "| yes |" not in md["sampling"] and md["sampling"].count("| no |") == 4
    assert "No rows from `bench.py --compile` (timeout: killed at its 180 s timeout)." in md["sampling"]
    assert "| stage 2 | failed | 10.0 |" in md["toy"] and "| sample video_only | not run | 10.0 |" in md["toy"]
    assert "Failed: stage 2: exit status 1: RuntimeError: CUDA error \\| device-side assert" in md["toy"]
    assert "| 64 test clips |" not in md["toy"]
    assert md["summary"].startswith(f"{WHERE}: FAILED (toy_demo, bench_compile), ")
    assert "| bench_compile | timeout | 180.0 | killed at its 180 s timeout |" in md["summary"]


# -----------------------------------------------------------------------------
# the markers: filled in place, the rest of the file untouched; a file without markers left alone


def test_write_tables_fills_the_markers_and_nothing_else(tmp_path):
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "sampling-speed.md", tmp_path / "docs")
    readme = "# a README without markers\n\nGPU: not yet.\n"
    (tmp_path / "README.md").write_text(readme)
    original = (tmp_path / "docs" / "sampling-speed.md").read_text()
    start, end = "<!-- gpu-check:sampling -->", "<!-- /gpu-check:sampling -->"
    assert original.count(start) == original.count(end) == 1
    assert "abc1234" not in original  # the docs' table is another run's: the recorded result's replaces it

    filled = [f"docs/sampling-speed.md:{name}" for name in ("summary", "toy", "sampling")]  # in the page's order
    report = gpu_check.write_tables(RESULT, tmp_path)
    assert report == {"filled": filled, "problems": []}
    text = (tmp_path / "docs" / "sampling-speed.md").read_text()
    first = "<!-- gpu-check:summary -->"
    assert text.split(first)[0] == original.split(first)[0]  # before the markers: untouched
    assert text.split(end)[1] == original.split(end)[1]  # after them: untouched
    assert text.split(start)[1].split(end)[0] == "\n\n" + gpu_check.tables(RESULT)["sampling"] + "\n\n"
    assert (tmp_path / "README.md").read_text() == readme

    assert gpu_check.write_tables(RESULT, tmp_path)["filled"] == filled
    assert (tmp_path / "docs" / "sampling-speed.md").read_text() == text  # a second run: the same file


def test_write_tables_reports_unknown_and_unclosed_markers(tmp_path):
    (tmp_path / "docs").mkdir()
    body = "x\n<!-- gpu-check:nope -->\nold\n<!-- /gpu-check:nope -->\n<!-- gpu-check:toy -->\nold\n"
    (tmp_path / "docs" / "a.md").write_text(body)
    report = gpu_check.write_tables(RESULT, tmp_path)
    assert report["filled"] == []
    assert [p.split(" (")[0] for p in report["problems"]] == ["docs/a.md: nope", "docs/a.md: toy"]
    assert (tmp_path / "docs" / "a.md").read_text() == body
    assert gpu_check.exit_status(dict(RESULT, tables=report)) == 1


def test_tables_from_a_result_recorded_elsewhere_need_no_gpu(tmp_path, monkeypatch, capsys):
    """--tables_from: a GPU machine's result.json, its tables written here (no GPU, nothing run)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check.subprocess, "Popen", lambda *a, **k: pytest.fail("ran a command"))
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "sampling-speed.md", tmp_path / "docs")
    monkeypatch.setattr(gpu_check, "ROOT", tmp_path)
    (tmp_path / "result.json").write_text(json.dumps(RESULT))
    assert gpu_check.main([f"--tables_from={tmp_path / 'result.json'}", f"--out_dir={tmp_path / 'out'}"]) == 0
    assert gpu_check.tables(RESULT)["sampling"] in (tmp_path / "docs" / "sampling-speed.md").read_text()
    assert (tmp_path / "out" / "tables.md").read_text().startswith("<!-- sampling -->\n" + gpu_check.tables(RESULT)["sampling"])
    assert ("markers filled: docs/sampling-speed.md:summary, docs/sampling-speed.md:toy, "
            "docs/sampling-speed.md:sampling") in capsys.readouterr().out


# -----------------------------------------------------------------------------
# the exit status


def test_exit_status_is_non_zero_when_a_step_fails():
    assert gpu_check.exit_status(RESULT) == 0
    assert gpu_check.exit_status(dict(RESULT, tables={"filled": ["docs/sampling-speed.md:sampling"], "problems": []})) == 0
    assert gpu_check.exit_status(failed_result()) == 1
    assert gpu_check.failed_steps(failed_result()) == ["toy_demo", "bench_compile"]
    not_run = copy.deepcopy(RESULT)
    not_run["steps"]["bench_compile"] = dict(status="not run", wall_s=0.0, error="not started: the 470 s budget was spent")
    assert gpu_check.exit_status(not_run) == 1


# -----------------------------------------------------------------------------
# the steps' commands and the run's orchestration, with the commands stubbed (no GPU, nothing run)


def test_the_steps_run_the_expected_commands(tmp_path, monkeypatch):
    ran = []

    def fake_run(cmd, log, timeout):
        ran.append(cmd[1:])
        if "tools/bench.py" in cmd:  # a bench that fell back to the CPU
            out = Path(next(a for a in cmd if a.startswith("--out_dir=")).split("=", 1)[1])
            bench = dict(RESULT["steps"]["bench_eager"]["bench"], device="cpu (16 threads)")
            gpu_check.save_json(bench, out / "bench.json")
        if "data/toy/score.py" in cmd:
            gpu_check.save_json(RESULT["steps"]["toy_demo"]["eval"], Path(cmd[-1].split("=", 1)[1]))
        return dict(cmd=" ".join(cmd), rc=0, wall_s=1.0, log=str(log), status="ok")

    monkeypatch.setattr(gpu_check, "run_command", fake_run)
    args = gpu_check.parse_config(gpu_check.Config, {"toy": {}}, [f"--out_dir={tmp_path}"])
    step = gpu_check.step_bench(args, tmp_path, 90, True)
    assert ran[0] == ["tools/bench.py", "--preset=gemma-2b", "--device=cuda", "--batch_sizes=1,8,32", "--naive", "--repeats=3",
                      f"--out_dir={tmp_path}/bench-compile", "--compile"]
    assert step["status"] == "failed" and "not on the GPU" in step["error"]

    ran.clear()
    step = gpu_check.step_toy(args, tmp_path, 150)
    assert step["status"] == "ok" and step["eval"] == json.loads(json.dumps(RESULT["steps"]["toy_demo"]["eval"]))
    assert [s["name"] for s in step["stages"]] == STAGES
    scripts = [c[0] for c in ran]
    assert scripts == ["data/toy/prepare.py", "extract_features.py", "data/toy/llm.py", "stage1_caption.py",
                       "stage2_audio.py"] + ["tools/sample_split.py"] * 6 + ["data/toy/score.py"]
    for name, cmd in zip(STAGES, ran):  # every stage but the CPU ones on the GPU, and no silent fallback
        assert ("--device=cuda" in cmd) == ("(CPU)" not in name), name
    assert "--max_steps=1000" in ran[3] and "--max_steps=500" in ran[4] and "--n_test=64" in ran[0]
    assert step["shortened"] == dict(stage1_steps=1000, stage1_steps_demo=6000, stage2_steps=500, stage2_steps_demo=2000,
                                     test_clips=64, test_clips_demo=200)


def test_main_records_every_step_and_fails_on_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H200")
    recorded = failed_result()["steps"]
    monkeypatch.setattr(gpu_check, "step_gpu_tests", lambda a, o, t: recorded["gpu_tests"])
    monkeypatch.setattr(gpu_check, "step_bench", lambda a, o, t, c: recorded["bench_compile" if c else "bench_eager"])
    monkeypatch.setattr(gpu_check, "step_toy", lambda a, o, t: recorded["toy_demo"])
    assert gpu_check.main([f"--out_dir={tmp_path}", "--write_docs=false"]) == 1
    r = json.loads((tmp_path / "result.json").read_text())
    assert list(r["steps"]) == ["gpu_tests", "bench_eager", "toy_demo", "bench_compile"]
    assert r["device"] == "NVIDIA H200" and r["torch"] == torch.__version__ and r["tables"] == {"filled": [], "problems": []}
    assert "<!-- sampling -->" in (tmp_path / "tables.md").read_text()
    out, err = capsys.readouterr()
    assert "FAILED: toy_demo, bench_compile" in out and "bench_compile FAILED: killed at its 180 s timeout" in err

    assert gpu_check.main([f"--out_dir={tmp_path}", "--write_docs=false", "--budget_s=0",
                           "--commit=1234abc"]) == 1  # no time: nothing runs
    r = json.loads((tmp_path / "result.json").read_text())
    assert {s["status"] for s in r["steps"].values()} == {"not run"}
    assert r["commit"] == "1234abc"  # a tree without its .git names the commit it is


def test_the_toy_demo_on_the_gpu_samples_what_make_demo_samples():
    """gpu_check's toy demo times make demo's six sampling runs: the same names and options as
    the Makefile's `samples` target."""
    out = subprocess.run(["make", "-n", "--no-print-directory", "samples"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    runs = [(m[1], m[2].split()) for m in re.finditer(r"sample_split\.py .*--name=(\S+) ?(.*)$", out, re.M)]
    assert runs == [(name, extra) for name, extra in gpu_check.TOY_MODES]
