"""
Other people's files and long runs: a checkpoint whose pickle would run code is refused at every
entry point that reads one (the code never runs; --trust_pickle alone loads it), training stops
where it should (resumed past its end; a non-finite loss), a feature file holding NaN is named
before step 0, and outputs follow the umask.
"""
import json
import os
import pathlib
import shutil
import stat

import numpy as np
import pytest
import torch

import sample
import stage2_audio
import utils
from codec import load_audiogen_codec
from conftest import TINY_STAGE2
from extract_features import FeatureFiles
from tools import official, sample_split


class Payload:
    """Unpickling this calls pathlib.Path.touch: it creates `marker` (a stand-in for any code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture
def evil(tmp_path):
    """A Lightning-style checkpoint with a payload among its hyper-parameters, and the file the
    payload would create."""
    marker = tmp_path / "payload-ran"
    path = tmp_path / "vatt_models" / "evil.ckpt"
    path.parent.mkdir()
    torch.save({"state_dict": {"audio_token_decoder.pos_embed": torch.zeros(1, 4, 8)},
                "hyper_parameters": Payload(marker)}, path)
    return path, marker


def refused(call, marker):
    """The call stops with one line naming what the pickle would import; the payload never ran."""
    with pytest.raises(SystemExit) as e:
        call()
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message and "pathlib" in message, message
    assert not marker.exists()
    return message


def test_official_entry_points_refuse_a_pickle_that_runs_code(evil, tmp_path, offline):
    path, marker = evil
    for argv in (["inspect", str(path)], ["convert", str(path), str(tmp_path / "converted")]):
        assert "--trust_pickle" in refused(lambda: official.main(argv), marker)
    refused(lambda: official.main(["sample", f"--official_ckpt={tmp_path}", "--official_model=evil.ckpt",
                                   f"--video={tmp_path}/none.mp4"]), marker)
    refused(lambda: official.load_codebooks(path), marker)


def test_trust_pickle_alone_loads_it(evil):
    path, marker = evil
    state_dict = official.load_checkpoint(path, trust_pickle=True)
    assert marker.exists() and list(state_dict) == ["audio_token_decoder.pos_embed"]


def test_their_lightning_checkpoints_load_without_trust(tmp_path):
    """What a pytorch-lightning 1.9.5 checkpoint made with their trainer pickles (the top-level
    keys, numpy float64 learning rates from their LambdaLinearScheduler) loads with
    weights_only=True and the allow-list; a numpy array, which the allow-list does not cover, is
    refused by name."""
    weights = {"audio_token_decoder.pos_embed": torch.zeros(1, 4, 8)}
    lr = np.float64(1e-4) * np.cumsum([0, 3])[1]  # how their scheduler's factor becomes a numpy float
    lightning = {"epoch": 3, "global_step": 9, "pytorch-lightning_version": "1.9.5", "state_dict": weights,
                 "loops": {"fit_loop": {"state_dict": {}}},
                 "callbacks": {"ModelCheckpoint{'monitor': 'val/total_loss'}": {"best_model_score": torch.tensor(1.5)}},
                 "optimizer_states": [{"state": {}, "param_groups": [{"lr": lr, "betas": (0.9, 0.999), "params": [0]}]}],
                 "lr_schedulers": [{"_last_lr": [lr], "lr_lambdas": [{}], "last_epoch": 9}]}
    path = tmp_path / "last.ckpt"
    torch.save(lightning, path)
    assert list(official.load_checkpoint(path)) == list(weights)
    torch.save({**lightning, "lr_schedulers": [{"cum_cycles": np.cumsum([0, 3])}]}, path)
    with pytest.raises(SystemExit) as e:
        official.load_checkpoint(path)
    assert "its pickle would run code: numpy" in str(e.value) and "_reconstruct" in str(e.value)
    assert "scalar" not in str(e.value) and "numpy.dtype" not in str(e.value)  # allowed, so not named


def test_our_loaders_refuse_it_too(world, evil, tmp_path, offline):
    """Our own checkpoints (sample.py's folder, --init_from) and the codec's file go through
    torch.load(weights_only=True) as well."""
    path, marker = evil
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(path, folder / "stage1.pt")
    shutil.copy(world / "out" / "stage2.pt", folder / "stage2.pt")
    refused(lambda: sample.main([f"--ckpt_dir={folder}", f"--video={world}/clips/test_00000.mp4"]), marker)
    refused(lambda: stage2_audio.main([f"--data_json={world}/v2a_instruction.json", f"--features_dir={world}/features",
                                       f"--converter={world}/out/stage1.pt", f"--out_dir={tmp_path}/ft",
                                       f"--init_from={path}"] + TINY_STAGE2), marker)
    with pytest.raises(ValueError, match="refused as a codec checkpoint .*pathlib"):
        load_audiogen_codec(str(path))
    assert not marker.exists()


def test_resuming_at_or_past_max_steps_trains_nothing(world, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(world / "out", out, symlinks=True)
    before = (out / "stage2.pt").read_bytes()
    args = [f"--data_json={world}/v2a_instruction.json", f"--features_dir={world}/features",
            f"--converter={world}/out/stage1.pt", f"--out_dir={out}"]
    stage2_audio.main(args + TINY_STAGE2 + ["--max_steps=1"])  # the checkpoint is at step 2
    assert "is at step 2, max_steps is 1: nothing to train" in capsys.readouterr().out
    assert (out / "stage2.pt").read_bytes() == before


def test_a_non_finite_loss_is_never_applied(world, tmp_path, monkeypatch):
    """A NaN loss gives a NaN gradient norm: the step is skipped, and --max_bad_steps of them stop the run."""
    out = tmp_path / "out"
    monkeypatch.setattr(stage2_audio, "masked_loss", lambda logits, *a: logits.sum() * float("nan"))
    args = [f"--data_json={world}/v2a_instruction.json", f"--features_dir={world}/features",
            f"--converter={world}/out/stage1.pt", f"--out_dir={out}", "--max_bad_steps=1"]
    with pytest.raises(SystemExit) as e:
        stage2_audio.main(args + TINY_STAGE2)
    assert str(e.value.code).startswith("error: step 0: the gradient norm is nan") and "train_0000" in str(e.value.code)
    assert not (out / "stage2.pt").exists()


def test_a_feature_file_with_nan_is_named(world, tmp_path):
    features = tmp_path / "features"
    shutil.copytree(world / "features", features)
    x = np.load(features / "video" / "train_00003.npy")
    x[2, 5] = np.nan
    np.save(features / "video" / "train_00003.npy", x)
    assert FeatureFiles(features).problems("train_00003", tokens=True) == \
        [f"{features}/video/train_00003.npy: 1 values are NaN or infinite"]
    assert FeatureFiles(features).problems("train_00002", tokens=True) == []


def test_outputs_follow_the_umask(tmp_path):
    """An atomic write ends with the mode a plain open() would give (not mkstemp's 0600)."""
    with utils.atomic_path(tmp_path / "x.json") as tmp:
        pathlib.Path(tmp).write_text("{}")
    with open(tmp_path / "plain.json", "w"):
        pass
    assert stat.S_IMODE(os.stat(tmp_path / "x.json").st_mode) == stat.S_IMODE(os.stat(tmp_path / "plain.json").st_mode)


# -----------------------------------------------------------------------------
# nothing lost without a word: sampling runs


def split_run(world, out, *extra):
    return sample_split.main([f"--ckpt_dir={world}/out", f"--data_json={world}/v2a_instruction.json", "--steps=2",
                        f"--out_dir={out}", *extra])


def test_two_videos_that_would_share_outputs_are_refused(world, tmp_path):
    """a.mp4 and a.mkv in one folder (or two folders into one --out_dir) would write the same
    a.vatt.*: refused before any work, both paths named."""
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(world / "clips" / "test_00000.mp4", folder / "a.mp4")
    shutil.copy(world / "clips" / "test_00001.mp4", folder / "a.mkv")
    with pytest.raises(SystemExit) as e:
        sample.main([f"--ckpt_dir={world}/out", f"--video={folder}", "--steps=2"])
    assert str(e.value.code) == (f"error: {folder}/a.mkv and {folder}/a.mp4 would both write {folder}/a.vatt.*: "
                                 "rename one, or sample them into different --out_dir folders")
    assert sorted(p.name for p in folder.iterdir()) == ["a.mkv", "a.mp4"]


def test_strict_makes_a_skipped_clip_an_error(world, tmp_path, capsys):
    features = tmp_path / "features"
    shutil.copytree(world / "features", features)
    (features / "video" / "test_00001.npy").unlink()
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    stage1 = torch.load(world / "out" / "stage1.pt", weights_only=True)
    stage1["config"]["features_dir"] = str(features)  # sample.py reads the split's features from here
    torch.save(stage1, ckpt / "stage1.pt")
    shutil.copy(world / "out" / "stage2.pt", ckpt / "stage2.pt")
    args = [f"--ckpt_dir={ckpt}", f"--data_json={world}/v2a_instruction.json", "--steps=2", f"--out_dir={tmp_path}/s"]
    assert sample_split.main(args) == 0
    assert f"warning: 1 test clips have no features in {features}: skipped" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=f"error: --strict: 1 test clips have no features in {features}"):
        sample_split.main(args + ["--strict"])


def test_strict_in_extraction_and_training(world, tmp_path, capsys):
    """extract_features.py refuses two videos with one stem before any work and, with --strict,
    stops at a video it cannot read; the trainers leave out a train clip without features and
    say so, or with --strict stop on it. Each run's last line counts what it was given and did."""
    import extract_features
    import stage1_caption

    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(world / "clips" / "train_00000.mp4", videos / "a.mp4")
    shutil.copy(world / "clips" / "train_00001.mp4", videos / "a.mkv")
    args = [f"--input={videos}", f"--out_dir={tmp_path}/features", "--num_workers=0"]
    with pytest.raises(SystemExit) as e:
        extract_features.main(args)
    assert str(e.value.code) == (f"error: {videos}/a.mkv and {videos}/a.mp4 share the file stem 'a', so their "
                                 "features would overwrite each other: rename one")
    assert not (tmp_path / "features" / "video").exists()
    (videos / "a.mkv").rename(videos / "b.mkv")
    (videos / "c.mp4").write_bytes(b"")
    assert extract_features.main(args) == 1
    assert "done: 3 clips, 0 done earlier, 2 extracted, 1 skipped" in capsys.readouterr().out
    (tmp_path / "features" / "video" / "a.npy").unlink()
    with pytest.raises(SystemExit, match=f"error: --strict: {videos}/c.mp4: not a readable video"):
        extract_features.main(args + ["--strict"])

    features = tmp_path / "toy-features"
    shutil.copytree(world / "features", features)
    (features / "video" / "train_00001.npy").unlink()
    data = [f"--data_json={world}/v2a_instruction.json", f"--features_dir={features}"]
    stage2_audio.main(data + [f"--converter={world}/out/stage1.pt", f"--out_dir={tmp_path}/s2"] + TINY_STAGE2)
    out = capsys.readouterr().out
    assert f"warning: 1 train clips have no features or tokens in {features}: left out" in out
    assert f"{world}/v2a_instruction.json: 6 train clips, 1 without files and 0 with bad files left out: " \
           "4 training and 1 validation clips" in out
    for main in (lambda a: stage2_audio.main(a + [f"--converter={world}/out/stage1.pt"]), stage1_caption.main):
        with pytest.raises(SystemExit, match="error: --strict: 1 train clips have no features"):
            main(data + [f"--out_dir={tmp_path}/strict", "--strict"])


class Killed(Exception):
    """Stands in for the run being killed in the middle."""


def test_captions_json_grows_batch_by_batch_and_a_rerun_resumes(world, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s"
    calls, die = [], [True]
    generate = sample.generate

    def counting(models, feats, *args, **kwargs):
        calls.append(len(feats))
        if die[0] and len(calls) == 2:  # the second batch dies: the first one's clip is on disk, in captions.json
            assert list(json.loads((out / "captions.json").read_text())["clips"]) == ["test_00000"]
            raise Killed
        return generate(models, feats, *args, **kwargs)

    monkeypatch.setattr(sample, "generate", counting)
    with pytest.raises(Killed):
        split_run(world, out, "--batch_size=1")
    first = (out / "test_00000.wav").read_bytes()
    calls.clear()
    die[0] = False
    assert split_run(world, out, "--batch_size=1") == 0
    assert calls == [1]  # only the clip that was not done
    assert "2 clips, 1 kept from an earlier run, 1 samples made" in capsys.readouterr().err
    assert (out / "test_00000.wav").read_bytes() == first
    assert sorted(json.loads((out / "captions.json").read_text())["clips"]) == ["test_00000", "test_00001"]
    calls.clear()
    assert split_run(world, out, "--batch_size=1", "--seed=3") == 0  # other settings: started over
    assert calls == [1, 1]
