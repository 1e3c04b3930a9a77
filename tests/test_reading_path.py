"""
The reader's path through the core: each stage file reads as its section of the paper first, then
what runs it. In extract_features.py, stage1_caption.py, stage2_audio.py and sample.py one banner
(the file's only comment line that begins `# ====`) splits the two parts:
- above it, every definition a README map row beginning with "§" names, the first of them within
  the file's first 90 lines, and no use of a name imported from utils (processes, logs, checkpoint
  formats and precision live below);
- below it, Config, PRESETS and main.
The README's reading section gives each paper part's true length. utils.py is a shared kit: each
of its public definitions is used by two or more of the seven core files. No core function runs
over 60 lines, and the README over 230.
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["extract_features.py", "stage1_caption.py", "stage2_audio.py", "sample.py"]
CORE = ["utils.py", "codec.py", *STAGES, "eval.py"]


def banner_line(text):
    """The 1-based line of the file's one `# ====` banner (an error unless there is exactly one)."""
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if line.startswith("# ====")]
    assert len(lines) == 1, f"expected one `# ====` banner, found it on lines {lines}"
    return lines[0]


def top_definitions(tree):
    """{name: (first line, last line)} of the module's functions, classes and assignments, and of
    Class.method for the methods of its classes (a decorated function starts at its decorator)."""
    found = {}
    for node in tree.body:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found[node.name] = (start, node.end_lineno)
        elif isinstance(node, ast.Assign):
            found.update({t.id: (start, node.end_lineno) for t in node.targets if isinstance(t, ast.Name)})
        if isinstance(node, ast.ClassDef):
            found.update({f"{node.name}.{m.name}": (m.lineno, m.end_lineno) for m in node.body
                          if isinstance(m, ast.FunctionDef)})
    return found


def paper_refs():
    """{file: [names]} that the README map's rows beginning with "§" name, for the four stage files."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Reading along with the paper", 1)[1].split("\n## ", 1)[0]
    refs = {}
    for row in section.splitlines():
        if row.startswith("| §"):
            for file, name in re.findall(r"`([\w/]+\.py):([\w.]+)`", row):
                refs.setdefault(file, []).append(name)
    return {f: names for f, names in refs.items() if f in STAGES}


def utils_names_used_above(text, line):
    """(name, line) for each use, above `line`, of a name the file imports from utils."""
    tree = ast.parse(text)
    imported = {a.asname or a.name for node in tree.body if isinstance(node, ast.ImportFrom) and node.module == "utils"
                for a in node.names}
    imported |= {a.asname or a.name for node in tree.body if isinstance(node, ast.Import) for a in node.names
                 if a.name == "utils"}
    return sorted({(n.id, n.lineno) for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in imported
                   and n.lineno < line})


@pytest.mark.parametrize("file", STAGES)
def test_the_paper_part_comes_first_and_runs_nothing(file):
    text = (ROOT / file).read_text(encoding="utf-8")
    banner, defs = banner_line(text), top_definitions(ast.parse(text))
    names = paper_refs()[file]
    below = [n for n in names if defs[n][0] > banner]
    assert not below, f"{file}: the README's paper rows name {below}, which stand below the banner (line {banner})"
    assert min(defs[n][0] for n in names) < 90, f"{file}: the paper part starts after line 90"
    assert all(defs[n][0] > banner for n in ("Config", "PRESETS", "main")), f"{file}: Config, PRESETS, main go below"
    assert utils_names_used_above(text, banner) == [], f"{file}: the paper part uses utils"


def test_the_checks_can_fail():
    """A utils call slipped into the paper part, a paper definition moved below the banner, and a
    second banner are each caught."""
    text = (ROOT / "stage2_audio.py").read_text(encoding="utf-8")
    at = text.index("\n\n\n", text.index("class ModelConfig"))
    leaked = text[:at] + "\n\n\ndef leak():\n    return pick_device()" + text[at:]
    assert [name for name, _ in utils_names_used_above(leaked, banner_line(leaked))] == ["pick_device"]
    loss = text.index("def masked_loss(")
    body = text[loss:text.index("\n\n\n", loss)]
    moved = text.replace(body, "") + "\n\n" + body + "\n"
    assert top_definitions(ast.parse(moved))["masked_loss"][0] > banner_line(moved)
    with pytest.raises(AssertionError):
        banner_line(text + "\n# ==== a second banner\n")


def test_the_readme_gives_each_paper_part_its_length():
    """The reading section says "`file` to its banner (N lines)": N is the banner's line minus one."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Reading along with the paper", 1)[1].split("\n## ", 1)[0]
    stated = dict(re.findall(r"`(\w+\.py)`[^\n]*?\((\d+) lines\)", section))
    assert sorted(stated) == sorted(STAGES), stated
    for file, n in stated.items():
        assert int(n) == banner_line((ROOT / file).read_text(encoding="utf-8")) - 1, file
    total = re.search(r"(\d+) lines in all", section)
    assert total and int(total[1]) == sum(map(int, stated.values()))


def test_utils_holds_only_what_the_core_shares():
    tree = ast.parse((ROOT / "utils.py").read_text(encoding="utf-8"))
    public = [n for n in top_definitions(tree) if not n.startswith("_") and "." not in n]
    texts = {f: (ROOT / f).read_text(encoding="utf-8") for f in CORE}
    lonely = []
    for name in public:
        users = [f for f, t in texts.items() if len(re.findall(rf"\b{name}\b", t)) > (1 if f == "utils.py" else 0)]
        if len(users) < 2:
            lonely.append(f"{name}: {users}")
    assert not lonely, f"utils definitions that fewer than two core files use: {lonely}"


def test_no_core_function_runs_over_60_lines():
    long = [f"{f}:{n.name} ({n.end_lineno - n.lineno + 1})" for f in CORE
            for n in ast.walk(ast.parse((ROOT / f).read_text(encoding="utf-8")))
            if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 60]
    assert not long


def test_the_root_holds_the_seven_core_files_and_a_short_readme():
    assert sorted(p.name for p in ROOT.glob("*.py")) == sorted(CORE)
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 230
