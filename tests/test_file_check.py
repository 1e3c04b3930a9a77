"""
The file check before step 0 (extract_features.check_split_files), on the tiny toy world of
conftest.py: every header at every start, the features' values once per training set (the digest
of the clean files in the run's checked_files.json), scanned again when a file changed or with
--recheck_files=true, a file with NaNs never taken for checked. And the image encoder on the CPU:
plain float32, the toy's features unchanged by its bf16 autocast on CUDA.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import extract_features
import stage1_caption
from utils import parse_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def features(world, tmp_path):
    """A copy of the toy world's features, free to change (the shared world is never changed)."""
    shutil.copytree(world / "features", tmp_path / "features")
    return tmp_path / "features"


@pytest.fixture
def scanned(monkeypatch):
    """The stems whose feature values the check read, in order."""
    stems, value_problems = [], extract_features.FeatureFiles.value_problems

    def counted(self, stem):
        stems.append(stem)
        return value_problems(self, stem)

    monkeypatch.setattr(extract_features.FeatureFiles, "value_problems", counted)
    return stems


def start(world, features, out, *extra):
    """What a stage-1 start runs before step 0: the train split and the check of its files."""
    cfg = parse_config(stage1_caption.Config, stage1_caption.PRESETS, [
        f"--data_json={world}/v2a_instruction.json", f"--features_dir={features}", f"--out_dir={out}", *extra])
    _, train, val = extract_features.train_val_split(cfg, tokens=False)
    return train + val


def train_stems(world):
    return [Path(e["video_path"]).stem for e in json.loads((world / "v2a_instruction.json").read_text())
            if e["split"] == "train"]


def test_values_are_scanned_once_per_training_set(world, features, tmp_path, scanned, capsys):
    stems = train_stems(world)
    first = start(world, features, tmp_path / "out")
    assert sorted(scanned) == sorted(stems)
    memo = json.loads((tmp_path / "out" / "checked_files.json").read_text())
    assert [entry["clips"] for entry in memo.values()] == [len(stems)]
    capsys.readouterr()
    scanned.clear()
    assert start(world, features, tmp_path / "out") == first
    assert scanned == []
    assert f"values of the {len(stems)} feature files checked before (checked_files.json): not scanned again" \
        in capsys.readouterr().out


def test_a_file_changed_to_hold_a_nan_is_scanned_again_and_stops_the_run(world, features, tmp_path, scanned, capsys):
    start(world, features, tmp_path / "out")
    path = features / "video" / f"{train_stems(world)[2]}.npy"
    x = np.load(path)
    x[1, 3] = np.nan
    np.save(path, x)  # the same size: only its mtime tells
    scanned.clear()
    with pytest.raises(SystemExit) as e:
        start(world, features, tmp_path / "out")
    assert len(scanned) == len(train_stems(world))
    assert str(e.value.code).startswith("error: 1 of ")
    assert f"{path}: 1 values are NaN or infinite" in capsys.readouterr().err


def test_a_skipped_file_with_nan_is_scanned_again_at_every_start(world, features, tmp_path, scanned):
    stems = train_stems(world)
    path = features / "video" / f"{stems[0]}.npy"
    np.save(path, np.full_like(np.load(path), np.inf))
    for _ in range(2):  # the memo holds the clean files alone: the bad one keeps its digest from matching
        scanned.clear()
        kept = start(world, features, tmp_path / "out", "--skip_bad_files=true")
        assert len(scanned) == len(stems) and stems[0] not in [stem for stem, _ in kept]
    path.unlink()  # the bad clip removed: the files left are the ones found clean
    scanned.clear()
    start(world, features, tmp_path / "out", "--skip_bad_files=true")
    assert scanned == []


def test_recheck_files_scans_a_training_set_that_passed_before(world, features, tmp_path, scanned):
    start(world, features, tmp_path / "out")
    scanned.clear()
    start(world, features, tmp_path / "out", "--recheck_files=true")
    assert sorted(scanned) == sorted(train_stems(world))


def test_the_header_check_runs_at_every_start(world, features, tmp_path, capsys):
    start(world, features, tmp_path / "out")
    path = features / "video" / f"{train_stems(world)[1]}.npy"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(SystemExit):
        start(world, features, tmp_path / "out")
    assert f"{path}: truncated" in capsys.readouterr().err


def test_encode_frames_on_the_cpu_is_plain_float32():
    cfg = extract_features.Config(clip_model=str(ROOT / "data" / "toy" / "toy-vit.json"))
    model, _ = extract_features.build_visual_encoder(cfg, torch.device("cpu"))
    frames = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # (N, 3, S, S)
    feats = extract_features.encode_frames(model, frames, torch.device("cpu"))
    with torch.no_grad():
        assert torch.equal(feats, model.encode_image(frames.float()))  # (N, D), bit for bit
    assert feats.dtype == torch.float32
