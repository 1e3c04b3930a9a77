"""
Tests of the training check (`tools/train_check.py`): its every part at toy sizes on a CPU (the
stages' own training steps, the overfits, 1-rank DDP over gloo, the FLOP formulas against torch's
counter, stage1.pt's round trip, result.json and the docs' table), the bars that turn a result into
failures, and its refusal without a GPU at the paper's size. Timings are recorded, never asserted.
"""
import copy
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools import train_check  # noqa: E402

START, END = "<!-- train-check:training -->", "<!-- /train-check:training -->"
PARTS = ["prepare", "s1-build", "s1-g", "s1-g32", "s1-flops", "s1-ddp", "s1-fit", "stage1.pt",
         "s2-build", "s2-g", "s2-flops", "s2-ddp", "s2-fit"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One --size=tiny run on the CPU, its table written into a copy of docs/real-scale.md. On one
    thread: matrices this small gain nothing from two, and on a busy machine the threads' waiting
    for each other made the run ten times slower."""
    d = tmp_path_factory.mktemp("train-check")
    shutil.copy(ROOT / "docs" / "real-scale.md", d / "real-scale.md")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = train_check.main(["--size=tiny", "--device=cpu", f"--docs={d / 'real-scale.md'}",
                               f"--out_dir={d / 'out'}"])
    finally:
        torch.set_num_threads(threads)
    return rc, json.loads((d / "out" / "result.json").read_text()), d


def test_tiny_runs_every_part_and_passes(tiny):
    rc, r, _ = tiny
    assert rc == 0 and r["failures"] == []
    assert list(r["parts"]) == PARTS
    assert {name: p["status"] for name, p in r["parts"].items()} == dict.fromkeys(PARTS, "ok")
    assert r["size"] == "tiny" and r["device"].startswith("cpu") and r["peak_tflops"] is None
    parts = r["parts"]
    # the presets' batch plans, and the same global batch of 32 as one micro-batch
    assert [(parts[n]["micro"], parts[n]["accum"]) for n in ("s1-g", "s1-g32", "s2-g")] == [(8, 4), (32, 1), (16, 4)]
    for name in ("s1-g", "s1-g32", "s2-g"):
        p = parts[name]
        assert p["kind"] == "timed" and len(p["step_ms"]) == p["steps"] and p["median_ms"] > 0
        assert p["mfu"] is None and p["tokens_per_s"] > 0 and p["tflop_per_step"] > 0  # no known peak on a CPU
        assert all(math.isfinite(x) for x in p["losses"])
    for name in ("s1-ddp", "s2-ddp"):
        assert "1-rank gloo DDP" in parts[name]["config"]
        assert len(parts[name]["losses"]) == train_check.DDP_STEPS[name]
    # the reloaded Converter (LoRA merged) computes the trained one's condition, to float rounding
    assert parts["stage1.pt"]["condition_difference"] < 1e-4


def test_tiny_overfits_fall_and_flop_formulas_match_the_counter(tiny):
    _, r, _ = tiny
    for name in ("s1-fit", "s2-fit"):
        p = r["parts"][name]
        assert p["last"] < p["first"] and p["ratio"] <= train_check.FIT_RATIO, name
        assert p["ratio"] == pytest.approx(sum(p["losses"][-3:]) / sum(p["losses"][:3]))
    for name in ("s1-flops", "s2-flops"):
        p = r["parts"][name]
        assert p["counted"] > 0 and abs(p["counted"] / p["analytic"] - 1) <= train_check.FLOPS_TOLERANCE, name
    # stage 1's model FLOPs (MFU's) count the real tokens only: less than what ran, padding included
    assert r["parts"]["s1-flops"]["model_flops"] < r["parts"]["s1-flops"]["analytic"]


def test_tiny_writes_its_table_between_the_markers_only(tiny):
    _, r, d = tiny
    original, text = (ROOT / "docs" / "real-scale.md").read_text(), (d / "real-scale.md").read_text()
    assert original.count(START) == original.count(END) == 1
    assert text.split(START)[0] == original.split(START)[0] and text.split(END)[1] == original.split(END)[1]
    block = text.split(START)[1].split(END)[0]
    assert block == "\n\n" + train_check.training_table(r) + "\n\n"
    assert "| run | configuration | step ms, median (p90) |" in block
    for name in ("s1-g", "s1-g32", "s2-g", "s1-fit", "s2-fit", "s1-ddp", "s2-flops", "stage1.pt"):
        assert f"\n| {name} | " in block, name


# -----------------------------------------------------------------------------
# the bars: a result -> its failures (a GPU run's result, made up)


def timed(mfu, peak_gb):
    return dict(status="ok", kind="timed", mfu=mfu, peak_gb=peak_gb, losses=[9.0, 8.9])


GOOD = dict(size="full", peak_tflops=989.4, budget_s=300, wall_s=200.0, parts={
    "s1-g": timed(0.25, 10.2), "s1-g32": timed(0.41, 21.0), "s2-g": timed(0.27, 30.5),
    "s1-fit": dict(status="ok", kind="fit", ratio=0.25, losses=[12.6, 3.1]),
    "s2-fit": dict(status="ok", kind="fit", ratio=0.3, losses=[7.9, 2.4]),
    "s1-flops": dict(status="ok", kind="flops", deviation=0.004, losses=[12.0]),
    "s1-ddp": dict(status="ok", kind="ddp", losses=[12.6, 12.5, 12.5])})


def changed(path, value, result=GOOD):
    r = copy.deepcopy(result)
    *keys, last = path
    target = r
    for key in keys:
        target = target[key]
    target[last] = value
    return r


def test_failures_of_a_result():
    assert train_check.failures(GOOD) == []
    cases = {("parts", "s1-ddp", "losses"): ([12.6, float("nan")], "s1-ddp: a non-finite loss"),
             ("parts", "s2-fit", "ratio"): (0.9, "s2-fit: the loss fell to 0.90 x its start, not 0.7"),
             ("parts", "s1-flops", "deviation"): (-0.12, "s1-flops: the analytic FLOPs are -12.0 % off the counted"),
             ("parts", "s1-g", "mfu"): (0.10, "s1-g: MFU 10.0 % < 15 %"),
             ("parts", "s2-g", "peak_gb"): (40.0, "s2-g: peak 40.0 GB allocated > 38 GB"),
             ("wall_s",): (301.0, "wall time 301 s > the 300 s budget")}
    for path, (value, line) in cases.items():
        assert train_check.failures(changed(path, value)) == [line], path
    oom = changed(("parts", "s2-g"), dict(status="failed", error="out of memory: CUDA out of memory"))
    assert train_check.failures(oom) == ["s2-g failed: out of memory: CUDA out of memory"]
    skipped = changed(("parts", "s2-fit"), dict(status="not run", error="not started: 9 s of the 300 s budget left"))
    assert train_check.failures(skipped) == ["s2-fit not run: not started: 9 s of the 300 s budget left"]


def test_mfu_memory_and_budget_bars_need_the_paper_size_on_a_known_gpu():
    """Without a known bf16 peak (another GPU, a CPU), or at toy sizes, MFU, memory and the wall
    time are measured but not barred; the other bars stay."""
    slow = changed(("parts", "s2-g"), timed(0.10, 40.0), changed(("wall_s",), 400.0))
    assert len(train_check.failures(slow)) == 3
    for other in (changed(("peak_tflops",), None, slow), changed(("size",), "tiny", slow)):
        assert train_check.failures(other) == []
        assert train_check.failures(changed(("parts", "s1-fit", "ratio"), 0.8, other)) == [
            "s1-fit: the loss fell to 0.80 x its start, not 0.7"]


def test_targets_print_met_or_missed_and_fail_nothing():
    t = train_check.targets(GOOD)
    assert t == {"s2-g": dict(target=0.35, mfu=0.27, met=False), "s1-g32": dict(target=0.40, mfu=0.41, met=True)}
    assert train_check.targets(changed(("peak_tflops",), None, changed(("parts", "s2-g", "mfu"), None))) == {
        "s1-g32": dict(target=0.40, mfu=0.41, met=True)}


def test_tables_from_a_recorded_result_write_its_table_and_measure_nothing(tiny, tmp_path, monkeypatch):
    _, r, d = tiny
    monkeypatch.setattr(train_check, "Check", lambda *a: pytest.fail("measured something"))
    shutil.copy(ROOT / "docs" / "real-scale.md", tmp_path / "page.md")
    assert train_check.main([f"--tables_from={d / 'out' / 'result.json'}", f"--docs={tmp_path / 'page.md'}"]) == 0
    assert (tmp_path / "page.md").read_text() == (d / "real-scale.md").read_text()


def test_a_page_without_the_markers_is_a_problem(tiny, tmp_path):
    _, r, _ = tiny
    page = tmp_path / "page.md"
    page.write_text("# no markers\n")
    assert "no <!-- train-check:training -->" in train_check.write_docs(r, page)
    assert page.read_text() == "# no markers\n"
    assert "no such file" in train_check.write_docs(r, tmp_path / "missing.md")


# -----------------------------------------------------------------------------
# no GPU: the paper's size refuses, in one line, whatever device it was asked for but the CPU


def test_full_size_without_a_gpu_refuses_with_exit_status_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in (["--size=full"], ["--size=full", "--device=cuda"], []):
        assert train_check.main([*argv, f"--out_dir={tmp_path}"]) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("error: no CUDA GPU")
    assert not (tmp_path / "result.json").exists()
