"""
The project's layers, and imports that only point down. LAYERS is the one place the order is
written: a module may import only modules listed before it, at the top of the file or inside a
function alike. So the five stages read top to bottom without the extras, and there is no circle.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = [
    # the core: what every stage shares, then the stages in their order
    "utils", "codec", "extract_features", "stage1_caption", "stage2_audio", "sample", "eval",
    # the toy world (data/toy): its generator and analyzer, codec, LLM, data and scoring
    "data.toy.world", "data.toy.codec", "data.toy.llm", "data.toy.prepare", "data.toy.score",
    # the leaves (tools/): split sampling runs, the authors' checkpoints, the V2A-Instruction
    # captioner, the benchmarks (sampling, editing), the report page, the ablations, the GPU check,
    # the training check at the paper's size; then the toy's measurement instruments (tools/toy);
    # then the browser app (app/)
    "tools.sample_split", "tools.official", "tools.caption_audio", "tools.bench", "tools.bench_edit",
    "tools.report", "tools.ablations", "tools.gpu_check", "tools.train_check", "tools.toy.text_gain",
    "tools.toy.negative_check", "tools.toy.masking_curves", "tools.toy.step_time", "tools.toy.video_memory",
    "tools.toy.app_check", "tools.toy.edit_context", "tools.toy.source_probe", "tools.toy.stage1_curve", "app.app",
]
CORE = LAYERS[: LAYERS.index("eval") + 1]


def project_modules():
    """Every Python module of the project outside tests/, by its dotted name."""
    files = [p for p in ROOT.rglob("*.py") if not ({"tests", ".venv", "out"} & set(p.relative_to(ROOT).parts))]
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in files}


def imports_of(path, known):
    """(line, module) for each import of a project module in the file, anywhere in it."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]  # `from data.toy import world`
        found += [(node.lineno, n) for n in names if n in known]
    return found


def violations(modules, layers):
    """'module:line imports X, which is not below it' for every import that points up or sideways."""
    rank = {m: i for i, m in enumerate(layers)}
    out = []
    for name, path in modules.items():
        for line, target in imports_of(path, modules):
            if target != name and not rank[target] < rank[name]:
                out.append(f"{name}:{line} imports {target}, which is not below it")
    return out


def test_every_module_has_a_layer():
    assert sorted(project_modules()) == sorted(LAYERS)


def test_imports_point_down():
    assert violations(project_modules(), LAYERS) == []


def test_the_core_imports_no_leaf():
    modules = project_modules()
    for name in CORE:
        assert all(target in CORE for _, target in imports_of(modules[name], modules)), name


@pytest.mark.parametrize("line", ["from tools import ablations", "    from tools.official import load_checkpoint",
                                  "from data.toy.world import analyze"])
def test_an_upward_import_is_caught(tmp_path, line):
    """The check can fail: a stage that imports a leaf, at the top or inside a function."""
    modules = project_modules()
    stage = tmp_path / "stage2_audio.py"
    stage.write_text(modules["stage2_audio"].read_text(encoding="utf-8")
                     + f"\n\ndef extra():\n    pass\n{line if line.startswith(' ') else '    ' + line}\n")
    found = violations({**modules, "stage2_audio": stage}, LAYERS)
    assert len(found) == 1 and found[0].startswith("stage2_audio:") and "which is not below it" in found[0]
