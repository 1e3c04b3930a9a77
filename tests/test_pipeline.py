"""
The five scripts end to end on a handful of toy clips, with tiny configs (plumbing, not
quality; the `world` fixture in conftest.py runs prepare, extract, stage 1 and stage 2), plus the promised behaviour on bad input: one clear line naming the file, batch jobs
skip and report, no partial output left behind.
"""
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import eval as vatt_eval
import extract_features
import sample
import stage2_audio
from data.toy import score
from tools import sample_split

ROOT = Path(__file__).resolve().parents[1]
def test_extract_features_layout(world):
    meta = json.loads((world / "features" / "meta.json").read_text())
    v = np.load(world / "features" / "video" / "train_00000.npy")
    a = np.load(world / "features" / "audio" / "train_00000.npy")
    assert v.dtype == np.float16 and v.shape == (10, meta["feature_dim"])  # 2 s at 5 fps
    assert a.dtype == np.int16 and a.shape == (4, 100)  # 4 codebooks at 50 Hz
    assert 0 <= a.min() and a.max() < meta["bins"]


def test_checkpoints_are_self_describing(world):
    s1 = torch.load(world / "out" / "stage1.pt", weights_only=True)
    s2 = torch.load(world / "out" / "stage2.pt", weights_only=True)
    assert s1["kind"] == "vatt-converter" and s1["step"] == 2 and s1["projector"]["weight"].shape[0] == 32
    assert s1["config"]["llm"] == f"{world}/out/toy_llm" and "llm_path" not in s1  # the base LLM, as given
    assert s2["kind"] == "vatt-audio" and s2["step"] == 2 and s2["model_config"]["dim"] == 32
    model, _ = stage2_audio.load_vatt_audio(world / "out" / "stage2.pt", torch.device("cpu"))
    assert model.codebooks.shape == (4, 64, 32)  # the codec's tables travel with the model


def test_sample_and_eval_end_to_end(world):
    common = [f"--ckpt_dir={world}/out", f"--data_json={world}/v2a_instruction.json", "--steps=2"]
    for name, extra in (("video_only", []), ("gt_caption", ["--prompt_field=output"]),
                        ("self_caption", ["--self_prompt"]), ("swapped_pitch_text", ["--prompt_field=swapped"]),
                        ("negative_pitch", ["--negative_field=swapped"])):
        assert sample_split.main(common + [f"--name={name}"] + extra) == 0
    wav, sr = vatt_eval.read_wav(world / "out" / "samples" / "gt_caption" / "test_00000.wav")
    assert sr == 16000 and len(wav) == 32000
    assert score.main([f"--data_json={world}/v2a_instruction.json", f"--features_dir={world}/features",
                       f"--samples_dir={world}/out/samples", "--split=test", f"--out={world}/out/eval.json"]) == 0
    result = json.loads((world / "out" / "eval.json").read_text())
    assert set(result["audio"]) == {"ground_truth", "codec_roundtrip", "video_only", "gt_caption",
                                    "self_caption", "swapped_pitch_text", "negative_pitch"}
    assert set(result["captions"]) >= {"class_acc", "count_acc", "pitch_acc", "bleu4", "rouge_l", "cider"}
    assert result["audio"]["ground_truth"]["onset_f1"] == 1.0  # the analyzer reads the real clips right
    assert {"prepare", "extract_features", "stage1_caption", "stage2_audio"} <= set(result["timing"])


def test_sample_single_video_writes_wav_mp4_json(world, tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    video.write_bytes((world / "clips" / "test_00001.mp4").read_bytes())
    assert sample.main([f"--ckpt_dir={world}/out", f"--video={video}", "--steps=2"]) == 0
    record = json.loads((tmp_path / "clip.vatt.json").read_text())
    assert record["caption"] is not None and record["prompt"] is None
    assert record["seed"] == sample.clip_seed(0, 0, "clip.mp4")
    with av.open(str(tmp_path / "clip.vatt.mp4")) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        assert c.streams.video[0].codec_context.name == "h264"  # copied, not re-encoded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "clip.vatt.json", "clip.vatt.mp4", "clip.vatt.wav"]


# -----------------------------------------------------------------------------
# bad input


def _broken_videos(folder, good):
    (folder / "good.mp4").write_bytes(good.read_bytes())
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "corrupt.mp4").write_bytes(good.read_bytes()[:300] + b"\x00" * 2000)
    with av.open(str(folder / "silent.mp4"), "w") as c:  # a video without an audio track
        s = c.add_stream("libx264", rate=25)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        for i in range(25):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 8, np.uint8), format="rgb24")
            c.mux(s.encode(frame))
        c.mux(s.encode(None))


def test_extract_features_skips_and_reports_bad_videos(world, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    _broken_videos(videos, world / "clips" / "train_00000.mp4")
    out = tmp_path / "features"
    assert extract_features.main([f"--input={videos}", f"--out_dir={out}", "--num_workers=0"]) == 1
    err = capsys.readouterr().err
    for name, problem in (("empty.mp4", "not a readable video"), ("corrupt.mp4", ""), ("silent.mp4", "no audio track")):
        line = next(l for l in err.splitlines() if name in l)
        assert problem in line
    assert sorted(p.name for p in (out / "video").iterdir()) == ["good.npy"]  # nothing partial
    assert not [p for p in out.rglob(".*")]  # no temporary files left


def test_feature_file_of_wrong_shape_is_named(world, tmp_path):
    (tmp_path / "video").mkdir()
    np.save(tmp_path / "video" / "x.npy", np.zeros((10, 7), np.float16))
    with pytest.raises(ValueError, match=r"x\.npy: expected features of shape \(frames, 256\)"):
        extract_features.load_features(tmp_path, "x", 256)


def test_sample_bad_inputs_give_one_clear_line(world, tmp_path):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"not a video at all")
    run = lambda *a: subprocess.run([sys.executable, "sample.py", *a], cwd=ROOT, capture_output=True, text=True)  # noqa: E731
    r = run(f"--ckpt_dir={world}/out", f"--video={bad}", "--steps=1")
    assert r.returncode == 1 and f"{bad}: not a readable video" in r.stderr
    r = run(f"--ckpt_dir={tmp_path}", f"--video={bad}")
    assert r.returncode == 1 and "stage1.pt: no such checkpoint" in r.stderr
    r = run(f"--ckpt_dir={world}/out", f"--video={world}/clips/test_00000.mp4", f"--prompt={'a very long prompt ' * 20}")
    assert r.returncode == 1 and "longer than the" in r.stderr


def test_3_1_each_prompt_and_caption_tokenized_once_as_the_tokenizer_does(world):
    """The Converter tokenizes an instruction or caption once and reuses it at every later step;
    what it reuses is what the tokenizer gives, and a caller changing the returned list does not
    change the next step's."""
    from stage1_caption import TEMPLATE, load_converter

    conv = load_converter(world / "out" / "stage1.pt", torch.device("cpu"))
    tok, n = conv.tokenizer, conv.max_text_tokens
    rendered = tok.apply_chat_template([{"role": "user", "content": TEMPLATE}], add_generation_prompt=True, tokenize=False)
    ids = tok(rendered, add_special_tokens=False).input_ids
    first, was_cut = conv.prompt_ids(TEMPLATE)
    assert (first, was_cut) == (ids[:n], len(ids) > n)
    first.append(-1)
    assert conv.prompt_ids(TEMPLATE)[0] == ids[:n] and conv._prompt_cache.cache_info().hits == 1
    caption = "a high and bright bell rings twice"
    assert conv.caption_ids(caption) == tok(caption, add_special_tokens=False).input_ids[:n] + [tok.eos_token_id]


def test_runs_that_end_together_both_record_their_time(tmp_path):
    """make runs the sampling modes two at a time: two processes adding entries to one
    timing.json at the same moment lose none of them."""
    code = ("import sys, time, pathlib, utils\n"
            "out, name = sys.argv[1:]\n"
            "pathlib.Path(out, name + '.ready').touch()\n"
            "while not pathlib.Path(out, 'go').exists(): time.sleep(0.01)\n"
            "for i in range(100): utils.record_timing(out, f'{name}{i}', time.time())\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), name], cwd=ROOT) for name in "ab"]
    while not all((tmp_path / f"{name}.ready").exists() for name in "ab"):
        assert all(p.poll() is None for p in procs)
    (tmp_path / "go").touch()
    assert [p.wait() for p in procs] == [0, 0]
    assert sorted(json.loads((tmp_path / "timing.json").read_text())) == sorted(f"{n}{i}" for n in "ab" for i in range(100))
