"""
Tests of the toy world (data/toy): caption grammar, analyzer, struck frames, ToyCodec, prepare.py,
its random ViT and its LLM.
Exact wherever the world is exact (strike times, frame indices, shapes); the whole file runs in
well under 30 s on 2 CPU cores.
"""
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # so `data.toy` imports however pytest is started
from data.toy import world  # noqa: E402
from data.toy.codec import ToyCodec  # noqa: E402


def clips(n, seed, **kw):
    return [world.render_clip(np.random.default_rng([seed, i]), **kw) for i in range(n)]


def assert_heard_right(analysis, meta, onset_tol):
    assert (analysis["class"], analysis["pitch"], analysis["count"]) == (meta["class"], meta["pitch"], meta["count"])
    assert np.allclose(analysis["onsets"], meta["onsets"], atol=onset_tol)

# -----------------------------------------------------------------------------
# captions


def test_captions_parse_back_for_every_combination():
    rng = np.random.default_rng(0)
    seen = set()
    for cls, pitch, count in itertools.product(world.CLASSES, world.PITCHES, (1, 2, 3)):
        for _ in range(30):
            caption = world.make_caption(cls, pitch, count, rng)
            seen.add(caption)
            assert re.fullmatch(r"[a-z]+( [a-z]+)*", caption), caption  # lower case, no punctuation
            words = caption.split()
            assert sum(w in world.CLASSES for w in words) == 1, caption
            # the register as a pair of its two words, joined by "and", in either order
            pitch_words = [w for w in words if w in world.PITCH_OF_WORD]
            assert sorted(pitch_words) == sorted(world.PITCH_WORDS[pitch]), caption
            assert " and ".join(pitch_words) in caption, caption
            assert world.parse_caption(caption) == {"class": cls, "pitch": pitch, "count": count}, caption
    assert len(seen) > 300  # the grammar has real variety


def test_swap_pitch_flips_only_the_pitch():
    rng = np.random.default_rng(1)
    for cls, pitch, count in itertools.product(world.CLASSES, world.PITCHES, (1, 2, 3)):
        for _ in range(10):
            caption = world.make_caption(cls, pitch, count, rng)
            swapped = world.swap_pitch(caption)
            flipped = "high" if pitch == "low" else "low"
            assert world.parse_caption(swapped) == {"class": cls, "pitch": flipped, "count": count}
            assert len(swapped.split()) == len(caption.split())
            assert world.swap_pitch(swapped) == caption
    assert world.swap_pitch("two deep drum hits") == "two bright drum hits"
    assert world.swap_pitch("a high bell rings twice") == "a low bell rings twice"


def test_parse_caption_tolerates_model_output():
    assert world.parse_caption("Two BELLS, bright!!") == {"class": "bell", "pitch": "high", "count": 2}
    assert world.parse_caption("a deep drum drum is hit three times.") == {"class": "drum", "pitch": "low", "count": 3}
    assert world.parse_caption("whistles blowing") == {"class": "whistle", "pitch": None, "count": None}
    assert world.parse_caption("") == {"class": None, "pitch": None, "count": None}

# -----------------------------------------------------------------------------
# the clips and the analyzer


def test_render_clip_shapes_and_strike_grid():
    for seconds, fps, size in [(2.0, 25, 128), (1.0, 10, 64), (10.0, 30, 32)]:
        for frames, audio, meta in clips(20, 2, seconds=seconds, fps=fps, size=size):
            assert frames.shape == (round(seconds * fps), size, size, 3) and frames.dtype == np.uint8
            assert audio.shape == (round(seconds * world.SAMPLE_RATE),) and audio.dtype == np.float32
            ks = np.round(np.array(meta["onsets"]) * world.FEATURE_FPS)
            assert np.allclose(ks / world.FEATURE_FPS, meta["onsets"], atol=1e-12)  # on the 5 fps grid
            assert ks.min() >= 1 and ks.max() <= round(seconds * world.FEATURE_FPS) - 3
            assert np.all(np.diff(ks) >= 2) and meta["count"] == len(ks) and 1 <= len(ks) <= 3
            assert meta["class"] in world.CLASSES and meta["pitch"] in world.PITCHES
            # each strike starts at its onset sample: before it only the -60 dB floor (and, from the
            # second strike on, the previous sound's tail, > 25 dB down); within 5 ms it rises
            # clearly above that, and it peaks near -6 dBFS
            for e, ts in enumerate(meta["onsets"]):
                start = round(ts * world.SAMPLE_RATE)
                before = np.abs(audio[start - 200: start]).max()
                assert before < (0.01 if e == 0 else 0.03)
                first = np.argmax(np.abs(audio[start - 200:]) > 2 * before + 0.005) - 200
                assert 0 <= first <= 80
                assert 0.3 < np.abs(audio[start: start + 1600]).max() <= 0.52


def test_struck_frames_exactly_on_the_feature_frames():
    """Resampling the file frames to 5 fps by nearest frame shows the struck object exactly at the
    strikes' feature frames; every other feature frame shows the idle picture."""
    bright = lambda f: (f.min(axis=-1) > 200).sum()
    for fps in (25, 8, 12, 30):
        for frames, _, meta in clips(15, 3, fps=fps, size=64):
            idle = frames[0]  # t = 0 is never a strike (k >= 1)
            # every file frame within 0.07 s of a strike is struck, every other one idle
            t = np.arange(len(frames)) / fps
            near = np.min(np.abs(t[:, None] - np.array(meta["onsets"])[None]), axis=1) < 0.07
            assert [not np.array_equal(f, idle) for f in frames] == near.tolist()
            strikes = {round(ts * world.FEATURE_FPS) for ts in meta["onsets"]}
            for k in range(round(2.0 * world.FEATURE_FPS)):
                frame = frames[min(round(k / world.FEATURE_FPS * fps), len(frames) - 1)]
                if k in strikes:  # near-white, larger, ringed: many more bright pixels
                    assert bright(frame) > bright(idle) + 100, (fps, k)
                else:
                    assert np.array_equal(frame, idle), (fps, k)


def test_analyzer_hears_fresh_audio_exactly():
    truths, analyses = [], []
    for _, audio, meta in clips(60, 4, size=16):
        analysis = world.analyze(audio)
        assert_heard_right(analysis, meta, onset_tol=0.010)
        truths.append(meta)
        analyses.append(analysis)
    assert world.score(analyses, truths) == {"class_acc": 1.0, "count_acc": 1.0, "onset_f1": 1.0, "pitch_acc": 1.0}
    flipped = [dict(t, target="high" if t["pitch"] == "low" else "low") for t in truths]
    assert world.score(analyses, flipped, pitch_key="target")["pitch_acc"] == 0.0


def test_analyzer_on_silence_and_noise():
    rng = np.random.default_rng(5)
    for wav in (np.zeros(32000), 1e-3 * rng.standard_normal(32000), 0.1 * rng.standard_normal(32000), np.zeros(10)):
        assert world.analyze(wav) == {"class": None, "pitch": None, "count": 0, "onsets": []}


def test_analyzer_ignores_mild_noise_and_reverb():
    rng = np.random.default_rng(6)
    for _, audio, meta in clips(20, 7, size=16):
        assert_heard_right(world.analyze(audio + 0.01 * rng.standard_normal(len(audio))), meta, 0.010)
        room = np.exp(-np.arange(800) / 480.0) * rng.standard_normal(800) * 0.02  # a 30 ms tail
        room[0] = 1.0
        assert_heard_right(world.analyze(np.convolve(audio, room)[: len(audio)]), meta, 0.010)


def test_score_counts_onsets_one_to_one():
    truth = {"class": "bell", "pitch": "low", "count": 2, "onsets": [0.4, 1.0]}
    guess = {"class": "drum", "pitch": "low", "count": 3, "onsets": [0.43, 0.45, 1.2]}
    s = world.score([guess], [truth])
    assert s == {"class_acc": 0.0, "count_acc": 0.0, "onset_f1": 2 * 1 / (3 + 2), "pitch_acc": 1.0}

# -----------------------------------------------------------------------------
# ToyCodec


def test_codec_interface():
    codec = ToyCodec()
    assert (codec.sample_rate, codec.frame_rate, codec.n_q) == (16000, 50, 4)
    assert codec.codebooks.shape == (codec.n_q, codec.bins, codec.dim) and codec.codebooks.dtype == torch.float32
    assert len(list(codec.parameters())) == 0
    books = codec.codebooks
    near = torch.cosine_similarity(books[:, 1:], books[:, :-1], dim=-1)
    far = torch.cosine_similarity(books[:, :1], books[:, -1:], dim=-1)
    assert near.min() > 0.9 and far.max() < 0.5  # neighbouring bins alike, the ends apart

    for S in (32000, 32017, 320, 5):
        wav = 0.3 * torch.randn(3, 1, S, generator=torch.Generator().manual_seed(S))
        codes = codec.encode(wav)
        T = -(-S // 320)
        assert codes.shape == (3, 4, T) and codes.dtype == torch.int64
        assert codes.min() >= 0 and codes.max() < codec.bins
        out = codec.decode(codes)
        assert out.shape == (3, 1, T * 320) and torch.isfinite(out).all()
        assert torch.equal(codec.encode(wav), codes)  # deterministic
        assert torch.equal(codec.decode(codes), out)
        assert torch.allclose(codec.decode(codes[1:2]), out[1:2], atol=1e-6)  # independent of the batch
    assert codec.decode(codec.encode(torch.zeros(1, 1, 3200))).abs().max() == 0  # silence stays silent


def test_codec_round_trip_keeps_what_the_analyzer_hears():
    codec = ToyCodec()
    rendered = clips(30, 8, size=16)
    wav = torch.from_numpy(np.stack([audio for _, audio, _ in rendered]))[:, None]
    out = codec.decode(codec.encode(wav))[:, 0].numpy()
    for y, (_, _, meta) in zip(out, rendered):
        assert_heard_right(world.analyze(y), meta, onset_tol=0.020)

# -----------------------------------------------------------------------------
# prepare.py end to end


def read_mp4(path, sr=16000):
    """The audio decoding recipe documented in prepare.py, plus the video stream's properties."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        info = (video.average_rate, video.codec_context.name, video.width, video.height)
        n_frames = sum(1 for _ in container.decode(video))
    with av.open(str(path)) as container:
        audio_stream = container.streams.audio[0]
        assert audio_stream.codec_context.name == "aac"
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        chunks, first_pts = [], None
        for frame in container.decode(audio_stream):
            first_pts = frame.pts if first_pts is None else first_pts
            chunks += [f.to_ndarray()[0] for f in resampler.resample(frame)]
        chunks += [f.to_ndarray()[0] for f in resampler.resample(None)]
    assert first_pts == 0  # the AAC priming samples are already dropped
    return info, n_frames, np.concatenate(chunks)


def test_prepare_end_to_end(tmp_path):
    script = ROOT / "data" / "toy" / "prepare.py"
    args = [sys.executable, str(script), "--n_train=4", "--n_test=2", "--n_val=1", f"--out_dir={tmp_path}", "--workers=2"]
    subprocess.run(args, check=True, capture_output=True)
    entries = json.loads((tmp_path / "v2a_instruction.json").read_text())
    assert [e["split"] for e in entries] == ["train"] * 4 + ["test"] * 2 + ["val"]
    assert [e["video_path"] for e in entries] == [f"clips/train_{i:05d}.mp4" for i in range(4)] + \
        [f"clips/test_{i:05d}.mp4" for i in range(2)] + ["clips/val_00000.mp4"]
    for e in entries:
        assert set(e) == {"video_path", "output", "split", "class", "pitch", "f0", "onsets", "count", "swapped", "edit"}
        start, end = map(float, e["edit"].split(":"))  # the editing test's range: 0.1 s before the first strike, 0.3 after
        assert start == pytest.approx(e["onsets"][0] - 0.1, abs=1e-3) and end == pytest.approx(e["onsets"][0] + 0.3, abs=1e-3)
        assert world.parse_caption(e["swapped"])["pitch"] != world.parse_caption(e["output"])["pitch"]
        assert world.parse_caption(e["output"]) == {k: e[k] for k in ("class", "pitch", "count")}
        info, n_frames, audio = read_mp4(tmp_path / e["video_path"])
        assert info == (25, "h264", 128, 128) and n_frames == 50
        assert 32000 <= len(audio) < 32000 + 1024  # only the last AAC frame's padding is extra
        assert_heard_right(world.analyze(audio[:32000]), e, onset_tol=0.020)

    # deterministic: clip i of a split is seeded from (seed, split, i) alone
    rng = np.random.default_rng([1337, 1, 1])
    _, _, meta = world.render_clip(rng, 2.0, 25, 128)
    assert {k: entries[5][k] for k in meta} == meta
    # resumable: a second run keeps the existing files and writes the same JSON
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "clips").iterdir()}
    subprocess.run(args, check=True, capture_output=True)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "clips").iterdir()} == stamps
    assert json.loads((tmp_path / "v2a_instruction.json").read_text()) == entries
    assert not [p for p in os.listdir(tmp_path / "clips") if not p.endswith(".mp4")]  # no temp files left


def test_prepare_rejects_unknown_options(tmp_path):
    script = ROOT / "data" / "toy" / "prepare.py"
    bad = subprocess.run([sys.executable, str(script), "--n_trian=3"], capture_output=True, text=True)
    assert bad.returncode != 0 and "n_trian" in bad.stderr
    usage = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, check=True)
    assert "n_train: int = 2000" in usage.stdout

# -----------------------------------------------------------------------------
# the toy's random ViT (data/toy/toy-vit.json) and its base LLM (data/toy/llm.py, a step of its own)


def test_toy_vit_is_random_without_a_warning_and_a_named_model_without_weights_warns(caplog):
    """The toy's ViT (a model config file, no --clip_pretrained) is random by design: open_clip's
    warning about it is dropped. The same network named as a registered model, without weights,
    still gets the warning."""
    import dataclasses
    import logging

    import open_clip

    import extract_features

    cfg = extract_features.Config()
    with caplog.at_level(logging.WARNING):
        extract_features.build_visual_encoder(cfg, torch.device("cpu"))
    assert "initialized randomly" not in caplog.text
    open_clip.add_model_config(cfg.clip_model)
    with caplog.at_level(logging.WARNING):
        extract_features.build_visual_encoder(dataclasses.replace(cfg, clip_model="toy-vit"), torch.device("cpu"))
    assert "No pretrained weights loaded for model 'toy-vit'" in caplog.text


def test_toy_llm_is_written_once_and_stage1_continues_its_seeded_stream(world, tmp_path):  # noqa: F811 (the fixture)
    """llm.py writes the LLM over the words of the train split's captions and the instructions, and
    rng_state.pt: the CPU generator as the LLM's init leaves it, where one process drawing the LLM
    and then the Converter would be. A second call keeps the folder. Stage 1's initial weights
    continue that stream (build_converter); make demo gives both steps one SEED."""
    import shutil

    import stage1_caption
    from conftest import TINY_LLM
    from data.toy import llm as toy_llm
    from utils import parse_config

    folder, data = tmp_path / "base_llm", f"--data_json={world}/v2a_instruction.json"
    toy_llm.main([data, f"--out={folder}", "--seed=3"] + TINY_LLM)
    built = (folder / "model.safetensors").stat().st_mtime_ns
    toy_llm.main([data, f"--out={folder}", "--seed=3"] + TINY_LLM)
    assert (folder / "model.safetensors").stat().st_mtime_ns == built
    entries = json.loads((world / "v2a_instruction.json").read_text())
    texts = [e["output"] for e in entries if e["split"] == "train"] + stage1_caption.INSTRUCTIONS
    with torch.random.fork_rng(devices=[]):  # the same build in this process: the same files, the same stream
        toy_llm.build_toy_llm(toy_llm.Config(seed=3, toy_width=32, toy_layers=1, toy_heads=2), texts, tmp_path / "again")
        assert torch.equal(torch.get_rng_state(), torch.load(folder / "rng_state.pt", weights_only=True))
    for name in ("model.safetensors", "tokenizer.json"):
        assert (folder / name).read_bytes() == (tmp_path / "again" / name).read_bytes()

    meta = json.loads((world / "features" / "meta.json").read_text())

    def projector(llm, seed):
        cfg = parse_config(stage1_caption.Config, stage1_caption.PRESETS, [f"--llm={llm}", f"--seed={seed}"])
        with torch.random.fork_rng(devices=[]):
            return stage1_caption.build_converter(cfg, meta, torch.device("cpu")).proj.weight

    assert torch.equal(projector(folder, 5), projector(folder, 6))  # the LLM's stream, whatever stage 1's seed
    shutil.copytree(folder, tmp_path / "hub_like")
    (tmp_path / "hub_like" / "rng_state.pt").unlink()  # a pretrained LLM's folder: stage 1's seed decides
    assert not torch.equal(projector(tmp_path / "hub_like", 5), projector(tmp_path / "hub_like", 6))


def test_stage1_keeps_a_trained_models_own_base_llm(world, tmp_path, monkeypatch):  # noqa: F811 (the fixture)
    """Fine-tuning (--init_from) with --llm left at its default loads the trained model's own base
    LLM, not whatever lies at out/toy/base_llm. And a base LLM inside the run's out_dir travels with
    stage1.pt: loaded from another place, with another run's base_llm under the name its config gives
    (relative to the current directory), the Converter still gets its own, whose frozen input
    embeddings are not in the checkpoint."""
    import shutil

    import stage1_caption
    from conftest import TINY_LLM, TINY_STAGE1
    from data.toy import llm as toy_llm
    from transformers import AutoModelForCausalLM

    monkeypatch.chdir(tmp_path)
    data = [f"--data_json={world}/v2a_instruction.json", f"--features_dir={world}/features"]
    toy_llm.main([data[0], f"--out={stage1_caption.Config.llm}", "--seed=7"] + TINY_LLM)  # a stranger at the default
    stage1_caption.main(data + ["--out_dir=ft", f"--init_from={world}/out/stage1.pt"] + TINY_STAGE1)
    assert torch.load("ft/stage1.pt", weights_only=True)["config"]["llm"] == f"{world}/out/toy_llm"

    for out, seed in (("run", 0), ("other", 1)):
        toy_llm.main([data[0], f"--out={out}/base_llm", f"--seed={seed}"] + TINY_LLM)
        stage1_caption.main(data + [f"--out_dir={out}", f"--llm={out}/base_llm", f"--seed={seed}"] + TINY_STAGE1)
    shutil.move("run", "moved")
    shutil.move("other", "run")  # another run's base_llm at run/base_llm, the folder stage1.pt names
    embeddings = lambda m: m.get_input_embeddings().weight  # noqa: E731
    own, other = (embeddings(AutoModelForCausalLM.from_pretrained(f"{d}/base_llm")) for d in ("moved", "run"))
    assert not torch.equal(own, other)
    conv = stage1_caption.load_converter("moved/stage1.pt", torch.device("cpu"))
    assert torch.equal(embeddings(conv.llm), own)


# -----------------------------------------------------------------------------
# the text-path diagnostic (tools/toy/text_gain.py)


def test_text_gain_finds_the_pitch_words_and_runs(world, capsys):  # noqa: F811 (the fixture, not the module)
    from tools.toy import text_gain
    from data.toy.world import PITCH_OF_WORD
    from stage1_caption import load_converter

    conv = load_converter(world / "out" / "stage1.pt", torch.device("cpu"))
    prompts = ["a high and bright bell rings twice", "two deep and low drum hits"]
    n_cond = conv.n_video_tokens(10) + conv.max_text_tokens
    at = text_gain.pitch_positions(conv, prompts, n_cond)
    for prompt, row in zip(prompts, at):
        ids, _ = conv.prompt_ids(prompt)
        words = conv.tokenizer.convert_ids_to_tokens([ids[i - (n_cond - len(ids))] for i in row.nonzero()[:, 0]])
        assert sorted(words) == sorted(w for w in prompt.split() if w in PITCH_OF_WORD)
    text_gain.main([f"--ckpt_dir={world}/out", f"--data_json={world}/v2a_instruction.json", "--split=val"])
    out = capsys.readouterr().out
    assert "1. condition" in out and "2. attention" in out and out.count(" | ") >= 4


def test_negative_check_counts_every_clip_once(world, tmp_path, capsys):  # noqa: F811 (the fixture, not the module)
    """tools/toy/negative_check.py on the micro world's 2 validation clips: each clip lands in
    exactly one row of its table, and the avoided share is the mean of the rows."""
    from tools.toy import negative_check
    from data.toy.world import REGISTER_SPLIT_HZ

    assert negative_check.main([f"--ckpt_dir={world}/out", f"--data_json={world}/v2a_instruction.json",
                                "--split=val", "--k=2", f"--out_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    rows = [(int(c), int(n), float(a)) for c, n, a in re.findall(r"^\| (\d) \| (\d+) \| ([\d.]+) \|$", out, re.M)]
    assert sum(n for _, n, _ in rows) == 2 and all(0 <= c <= 2 for c, _, _ in rows)
    overall = float(re.search(r"the negative avoided ([\d.]+)", out)[1])
    assert overall == pytest.approx(sum(n * a for _, n, a in rows) / 2, abs=1e-3)
    assert sorted(p.name for p in (tmp_path / "video_only").glob("*.wav")) == \
        ["val_00000.0.wav", "val_00000.1.wav", "val_00001.0.wav", "val_00001.1.wav"]
    # the first decoding step: six probabilities, and each clip in one row of the second table
    first = re.search(r"null ([\d.]+), template ([\d.]+), true caption ([\d.]+), negative ([\d.]+), "
                      r"guided \(w = 2\) with the null ([\d.]+) and with the negative ([\d.]+)", out)
    assert first and all(0 <= float(x) <= 1 for x in first.groups())
    clips = json.loads((tmp_path / "clips.json").read_text())
    assert [c["clip"] for c in clips] == ["val_00000", "val_00001"]
    assert [sorted(c["first_step"]) for c in clips] == [["caption", "guided", "guided_null", "negative", "null", "template"]] * 2
    rows = re.findall(r"^\| [\d.]+ to [\d.]+ \| (\d+) \| [\d.]+ \|$", out, re.M)
    assert sum(map(int, rows)) == 2
    # the register split in the codec's frequency bins: the decoder plays bin HIGH_FROM - 1 below
    # the analyzer's 640 Hz and bin HIGH_FROM above it (data/toy/codec.py's log spacing)
    hz = lambda b: ToyCodec.f_min * (ToyCodec.f_max / ToyCodec.f_min) ** (b / (ToyCodec.bins - 1))  # noqa: E731
    assert hz(negative_check.HIGH_FROM - 1) < REGISTER_SPLIT_HZ < hz(negative_check.HIGH_FROM)


def test_3_2_2_masking_curves_on_the_micro_world(world, tmp_path, capsys):  # noqa: F811 (the fixture, not the module)
    """tools/toy/masking_curves.py end to end on the micro world: both masking distributions
    trained with the kept checkpoints, every point sampled, scored and measured, the table and
    the figure written; a second call measures nothing again."""
    from tools.toy import masking_curves

    args = [f"--converter={world}/out/stage1.pt", f"--data_json={world}/v2a_instruction.json",
            f"--features_dir={world}/features", f"--out_dir={tmp_path}", "--seeds=0", "--steps=2", "--every=1",
            "--batch_size=2", f"--figure={tmp_path}/curves.png"]
    masking_curves.main(args)
    results = json.loads((tmp_path / "curves.json").read_text())
    assert sorted(results) == ["paper-seed0/1", "paper-seed0/2", "toy-seed0/1", "toy-seed0/2"]
    for key, r in results.items():
        run = torch.load(tmp_path / key.split("/")[0] / f"stage2-step{r['step']}.pt", weights_only=True)
        assert run["step"] == r["step"] and (run["config"]["mask_mean"], run["config"]["mask_std"]) == masking_curves.MASKINGS[r["masking"]]
        assert sorted(r["template_loss"]) == [str(x) for x in masking_curves.RATIOS] and 0 <= r["gt_caption_register"] <= 1
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert capsys.readouterr().out.count("| paper | 0 |") == 2
    stamp = (tmp_path / "curves.json").stat().st_mtime_ns
    masking_curves.main(args)
    assert (tmp_path / "curves.json").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit, match="'uniform' is not one of paper, toy"):
        masking_curves.main(args + ["--maskings=uniform"])
