"""
The README's "Reading along with the paper" table: every `file.py:function` (or
`file.py:Class.method`) it names exists, so the map from the paper to the code cannot rot.
"""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def reading_along_rows():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Reading along with the paper", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    return table[2:]  # below the header and its rule


def defined_names(path):
    """Top-level functions and classes of a file, and Class.method for the methods of its classes."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{m.name}" for m in node.body if isinstance(m, ast.FunctionDef)}
    return names


def test_every_paper_concept_points_at_code_that_exists():
    rows = reading_along_rows()
    assert len(rows) >= 15  # one row per concept of the paper, from eq. 1 to the metrics
    refs_per_row = [re.findall(r"`([\w/]+\.py):([\w.]+)`", row) for row in rows]
    assert all(refs_per_row), "a row of the map names no place in the code"
    refs = [ref for row_refs in refs_per_row for ref in row_refs]
    missing = [f"{file}:{name}" for file, name in refs
               if not (ROOT / file).exists() or name not in defined_names(ROOT / file)]
    assert not missing, f"the README names code that does not exist: {missing}"


def test_defined_names_lists_functions_classes_and_methods(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    pass\n\n\nclass C:\n    def g(self):\n        pass\n")
    assert defined_names(tmp_path / "m.py") == {"f", "C", "C.g"}
