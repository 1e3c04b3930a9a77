"""
Sampling runs that a paper's numbers can rest on: every script takes `--key value` and
`--key=value`; each clip draws its own noise (§3.2.2's random draws per clip, not per run); a bad
item fails alone; the captioning protocol of Table 3; long-video windows whose video and audio
start at the same instant; the features' frame rate read from the data; negative prompts.

The models are the `world` fixture's tiny, barely trained toy checkpoints (conftest.py): these
tests check the plumbing and the arithmetic, not the sound.
"""
import dataclasses
import importlib
import json
import math
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import extract_features
import sample
from eval import read_wav
import stage1_caption
from conftest import TINY_STAGE1
from tools import sample_split
from utils import parse_config

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
# (module, its presets) of the pipeline scripts that read their options with utils.parse_config
PARSE_CONFIG_SCRIPTS = [("extract_features", "PRESETS"), ("stage1_caption", "PRESETS"), ("stage2_audio", "PRESETS"),
                        ("sample", "PRESETS"), ("tools.sample_split", None), ("tools.bench", "PRESETS"),
                        ("data.toy.prepare", None), ("data.toy.llm", None), ("data.toy.score", None)]


def clips(world, folder, names):
    """Copies of the world's clips under new names: {new name: source stem}."""
    folder.mkdir(parents=True, exist_ok=True)
    for new, stem in names.items():
        shutil.copy(world / "clips" / f"{stem}.mp4", folder / new)
    return folder


def run(world, video, *extra):
    return sample.main(["--ckpt_dir", f"{world}/out", "--video", str(video), "--steps", "2", *extra])


# -----------------------------------------------------------------------------
# both argument forms


@pytest.mark.parametrize("module", [m for m, _ in PARSE_CONFIG_SCRIPTS] + ["eval", "tools.official"])
def test_every_script_prints_its_help(module, capsys):
    mod = importlib.import_module(module)
    with pytest.raises(SystemExit) as e:
        if mod.main(["--help"]) == 0:  # official.py returns its status instead of exiting
            raise SystemExit(0)
    assert e.value.code in (0, None)
    text = capsys.readouterr().out
    assert ("usage" in text) if module in ("eval", "tools.official") else (mod.__doc__.strip()[:40] in text and "presets:" in text)


def options_of_each_type(cfg_cls):
    """One option of each type the Config has (bool, int, float, str), set to a value that is not
    its default; strings get a space, as shell-quoted values do."""
    changed = {bool: lambda d: not d, int: lambda d: d + 3, float: lambda d: d + 0.5, str: lambda d: d + "a b"}
    out = {}
    for f in dataclasses.fields(cfg_cls):
        if f.name != "preset" and type(f.default) in changed and type(f.default) not in out:
            out[type(f.default)] = (f.name, changed[type(f.default)](f.default))
    return out.values()


@pytest.mark.parametrize("module,presets", PARSE_CONFIG_SCRIPTS)
def test_both_argument_forms_give_the_same_config(module, presets):
    mod = importlib.import_module(module)
    presets = getattr(mod, presets) if presets else {"toy": {}}
    preset = list(presets)[-1]
    spaced, joined = ["--preset", preset], [f"--preset={preset}"]
    for name, value in options_of_each_type(mod.Config):
        if value is True:  # a boolean: alone, or with its value
            spaced, joined = spaced + [f"--{name}"], joined + [f"--{name}=true"]
        else:
            spaced, joined = spaced + [f"--{name}", str(value)], joined + [f"--{name}={value}"]
    a, b = parse_config(mod.Config, presets, spaced), parse_config(mod.Config, presets, joined)
    assert a == b and a.preset == preset
    assert all(getattr(a, name) == value for name, value in options_of_each_type(mod.Config))
    for flag in (f.name for f in dataclasses.fields(mod.Config) if isinstance(f.default, bool)):
        for argv, value in (([f"--{flag}"], True), ([f"--{flag}=false"], False), ([f"--{flag}", "false"], False),
                            ([f"--{flag}", "true"], True), ([f"--{flag}=0"], False)):
            assert getattr(parse_config(mod.Config, presets, argv), flag) is value, argv


@pytest.mark.parametrize("argv,message", [
    (["x.mp4"], "error: unexpected argument 'x.mp4' (options are --key value or --key=value; see --help)"),
    (["--nope", "1"], "error: unknown option --nope (see --help)"),
    (["--nope=1"], "error: unknown option --nope (see --help)"),
    (["--seed"], "error: option --seed needs a value (--seed VALUE or --seed=VALUE)"),
    (["--seed", "--steps=2"], "error: option --seed needs a value (--seed VALUE or --seed=VALUE)"),
    (["--seed", "abc"], "error: --seed expects an int, got 'abc'"),
    (["--guidance_scale=x"], "error: --guidance_scale expects a float, got 'x'"),
    (["--compile=maybe"], "error: --compile expects true or false, got 'maybe'"),
    (["--preset", "huge"], "error: unknown preset 'huge'; choose one of toy, gemma-2b, llama-2-7b"),
])
def test_argument_errors_are_one_clear_line(argv, message):
    with pytest.raises(SystemExit) as e:
        parse_config(sample.Config, sample.PRESETS, argv)
    assert e.value.code == message


def test_sample_command_line_with_space_separated_options(world, tmp_path):
    """`python sample.py --video x.mp4 --prompt "a low bell"`, as a shell passes it."""
    video = clips(world, tmp_path, {"x.mp4": "test_00000"}) / "x.mp4"
    r = subprocess.run([sys.executable, "sample.py", "--ckpt_dir", f"{world}/out", "--video", str(video),
                        "--prompt", "a low bell", "--steps", "2"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "x.vatt.json").read_text())
    assert record["prompt"] == "a low bell" and record["prompts_used"] == ["a low bell"]
    assert (tmp_path / "x.vatt.wav").exists() and (tmp_path / "x.vatt.mp4").exists()


# -----------------------------------------------------------------------------
# per-clip noise


def test_clip_seed_is_a_stable_hash():
    assert sample.clip_seed(0, 0, "a.mp4") == sample.clip_seed(0, 0, "a.mp4")
    seeds = {sample.clip_seed(s, k, key) for s in (0, 1) for k in (0, 1, 2) for key in ("a.mp4", "b.mp4", "a")}
    assert len(seeds) == 18 and all(0 <= s < 2**63 for s in seeds)
    # the same in another process (Python's own hash() of a str is salted per process)
    r = subprocess.run([sys.executable, "-c", "import sample; print(sample.clip_seed(3, 1, 'clip.mp4'))"],
                       cwd=ROOT, capture_output=True, text=True)
    assert int(r.stdout) == sample.clip_seed(3, 1, "clip.mp4")


def spy_decoding(monkeypatch):
    """Records, per decode_tokens call, the generators' starting states and the codes after step 1."""
    calls = []
    decode_tokens = sample.decode_tokens

    def spy(model, cond, cond_mask, null_cond, codes, generators, *args, **kwargs):
        states = [g.get_state() for g in generators]
        kwargs["history"] = history = []
        out = decode_tokens(model, cond, cond_mask, null_cond, codes, generators, *args, **kwargs)
        calls.append((states, history[0]))
        return out

    monkeypatch.setattr(sample, "decode_tokens", spy)
    return calls


def test_two_clips_in_one_batch_draw_different_noise(world, tmp_path, monkeypatch):
    """With the paper's tau0 = 25.5 the noise decides the reveal order: two clips of one batch must
    not reveal the same positions (they did when every clip shared one noise stream)."""
    folder = clips(world, tmp_path / "videos", {"a.mp4": "test_00000", "b.mp4": "test_00001"})
    calls = spy_decoding(monkeypatch)
    assert run(world, folder, "--batch_size", "2", "--mask_temperature", "25.5", "--steps", "4",
               "--out_dir", str(tmp_path / "out")) == 0
    (states, step1), = calls
    assert not torch.equal(states[0], states[1])
    revealed = step1 != 64  # (2, L, T): the positions revealed at step 1 (64 = the toy's MASK)
    shared = (revealed[0] & revealed[1]).sum() / revealed[0].sum()
    assert shared < 0.5, shared  # independent draws share about a tenth; one stream shared them all


def test_same_video_under_two_names_gives_two_samples(world, tmp_path):
    folder = clips(world, tmp_path / "videos", {"one.mp4": "test_00000", "two.mp4": "test_00000"})
    assert run(world, folder, "--out_dir", str(tmp_path / "out")) == 0
    assert not np.array_equal(read_wav(tmp_path / "out" / "one.vatt.wav")[0], read_wav(tmp_path / "out" / "two.vatt.wav")[0])


def test_clip_gives_the_same_audio_alone_in_a_batch_and_in_two_runs(world, tmp_path):
    six = {f"{stem}.mp4": stem for stem in ("test_00000", "test_00001", "train_00000", "train_00001", "train_00002",
                                            "train_00003")}
    batch = clips(world, tmp_path / "six", six)
    alone = clips(world, tmp_path / "alone", {"train_00001.mp4": "train_00001"})
    assert run(world, batch, "--batch_size", "6", "--out_dir", str(tmp_path / "out6")) == 0
    assert run(world, alone, "--out_dir", str(tmp_path / "out1")) == 0
    assert run(world, batch, "--batch_size", "4", "--out_dir", str(tmp_path / "again")) == 0
    wav = read_wav(tmp_path / "out1" / "train_00001.vatt.wav")[0]
    assert np.array_equal(wav, read_wav(tmp_path / "out6" / "train_00001.vatt.wav")[0])
    for name in six:
        base = Path(name).stem + ".vatt.wav"
        assert np.array_equal(read_wav(tmp_path / "out6" / base)[0], read_wav(tmp_path / "again" / base)[0]), name


# -----------------------------------------------------------------------------
# a bad item fails alone


@pytest.fixture(scope="module")
def models(world):
    return sample.load_models(world / "out", CPU)


def features(world, *stems):
    return [extract_features.load_features(world / "features", s) for s in stems]


def test_over_long_prompt_fails_its_clip_alone(world, models):
    args = dataclasses.replace(sample.Config(**sample.TOY_SAMPLING), steps=2)  # the toy's 2 s windows
    feats = features(world, "test_00000", "test_00001", "train_00000")
    prompts = ["a low bell rings twice", "a very long prompt " * 20, "a high whistle"]
    out = sample.generate(models, feats, [2.0] * 3, prompts, [1, 2, 3], args, CPU)
    assert set(out[1]) == {"error"} and "is longer than the 24 tokens" in out[1]["error"]
    for i in (0, 2):  # generated, as they are without the bad clip
        alone = sample.generate(models, feats[i: i + 1], [2.0], prompts[i: i + 1], [i + 1], args, CPU)
        assert torch.equal(out[i]["codes"], alone[0]["codes"])
    # the same negative prompt fails its clip; cut_prompts (reference captions) cuts it instead
    out = sample.generate(models, feats[:2], [2.0] * 2, prompts[:1] * 2, [1, 2], args, CPU,
                          negatives=[None, prompts[1]])
    assert "codes" in out[0] and "negative prompt" in out[1]["error"]
    out = sample.generate(models, feats[:2], [2.0] * 2, prompts[:2], [1, 2], args, CPU, cut_prompts=True)
    assert all(r["codes"].shape == (4, 100) for r in out)


def test_data_json_cuts_long_captions_and_counts_them(world, tmp_path, capsys):
    """A reference caption longer than the model takes is cut as training cuts it and counted; an
    entry without the field fails alone, with one line naming it."""
    entries = json.loads((world / "v2a_instruction.json").read_text())
    for e in entries:
        if e["video_path"].endswith("test_00000.mp4"):
            e["swapped"] = "a very long caption " * 20
        if e["video_path"].endswith("test_00001.mp4"):
            del e["swapped"]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(entries))
    out = tmp_path / "out"
    assert sample_split.main(["--ckpt_dir", f"{world}/out", "--data_json", str(data), "--prompt_field", "swapped",
                              "--out_dir", str(out), "--steps", "2"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert f"failed: test_00001: its entry in {data} has no text in the field 'swapped'" in err
    assert any(line.startswith("note: 1 texts of the field 'swapped' are longer than the 24 tokens") for line in err)
    assert sorted(p.name for p in out.iterdir()) == ["captions.json", "test_00000.wav"]
    run_file = json.loads((out / "captions.json").read_text())
    assert run_file["counts"]["prompts_cut"] == 1 and list(run_file["clips"]) == ["test_00000"]
    assert run_file["clips"]["test_00000"]["seed"] == sample.clip_seed(0, 0, "test_00000")


# -----------------------------------------------------------------------------
# captioning protocol (Table 3)


def test_caption_settings_and_limit(world, tmp_path, capsys):
    video = clips(world, tmp_path, {"clip.mp4": "test_00000"}) / "clip.mp4"
    assert run(world, video, "--caption_only") == 0
    record = json.loads((tmp_path / "clip.vatt.json").read_text())
    assert record["caption_prompt"] == stage1_caption.TEMPLATE and record["caption_max_tokens"] == 25  # 24 + its end
    assert run(world, video, "--caption_only", "--caption_prompt", stage1_caption.TABLE3_INSTRUCTION,
               "--caption_max_tokens", "3") == 0
    record = json.loads((tmp_path / "clip.vatt.json").read_text())
    assert record["caption_prompt"] == "Describe the possible audio for this video:"
    # the barely trained model never ends a caption in 3 tokens: counted and reported, not silently cut
    assert record["caption_at_limit"] is True and len(record["caption"].split()) <= 3
    assert "warning: 1 captions reached the limit of 3 new tokens without ending" in capsys.readouterr().err


def test_caption_decoding_and_limit_detection(models, monkeypatch):
    conv = models.converter
    eos, pad = conv.tokenizer.eos_token_id, conv.tokenizer.pad_token_id
    seen = {}

    def fake_generate(**kwargs):  # two captions: one ended with EOS, one stopped at the limit
        seen.update(kwargs)
        return torch.tensor([[7, 8, eos, pad], [7, 8, 9, 10]])

    monkeypatch.setattr(conv.llm, "generate", fake_generate)
    feats = torch.zeros(2, 10, conv.proj.in_features)
    captions, at_limit = conv.caption(feats)
    assert at_limit == [False, True] and len(captions) == 2
    assert seen["do_sample"] is False and seen["max_new_tokens"] == conv.max_text_tokens + 1
    conv.caption(feats, max_new_tokens=400, sampling=stage1_caption.RELEASED_CAPTION_SAMPLING)
    assert seen["do_sample"] is True and seen["max_new_tokens"] == 400
    assert {k: seen[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty")} == \
        dict(temperature=0.1, top_p=0.95, top_k=500, repetition_penalty=1.1)


# -----------------------------------------------------------------------------
# long videos: windows that stay in sync


PAPER_TIMING = dict(window=10.0, fps=5, rate=50)  # 10 s windows, 5 fps features, 50 Hz tokens


@pytest.mark.parametrize("overlap", [0.0, 0.3, 1.0, 2.0, 2.5, 4.9])  # 0.3 s = 1.5 frames, 2.5 s = 12.5 frames
@pytest.mark.parametrize("duration", [10.0, 25.0, 61.3])
def test_windows_start_video_and_audio_at_the_same_time(overlap, duration):
    window, fps, rate = PAPER_TIMING.values()
    plan = sample.plan_windows(duration, window, overlap, fps, rate)
    for frame, token in plan:
        assert Fraction(frame, fps) == Fraction(token, rate)
    starts = [Fraction(token, rate) for _, token in plan]
    for a, b in zip(starts[:-1], starts[1:-1]):
        shared = window - (b - a)
        assert overlap <= shared < overlap + Fraction(1, 5)  # at least the overlap asked for, on the 0.2 s grid
    if len(starts) > 1:  # the last window ends where the clip does, sharing at least the overlap
        assert window - (starts[-1] - starts[-2]) >= overlap and starts[-2] + window < duration
    assert duration <= starts[-1] + window < max(duration, window) + Fraction(1, 5)


@pytest.mark.parametrize("overlap", [0.0, 2.0, 4.9])
def test_every_window_sees_real_frames_of_the_clip(overlap):
    """No window but a lone one (a clip shorter than the window) holds the clip's last frame: every
    frame a window reads shows a time before the clip's end, and the windows cover every token."""
    window, fps, rate = PAPER_TIMING.values()
    for duration in [10.0 + 0.07 * i for i in range(430)]:  # 10 s to 40 s, off the 0.2 s grid too
        plan = sample.plan_windows(duration, window, overlap, fps, rate)
        for frame, token in plan:
            assert Fraction(frame + round(window * fps) - 1, fps) < duration, (duration, frame)
        ends = [token + round(window * rate) for _, token in plan]
        assert all(b[1] <= e for b, e in zip(plan[1:], ends)) and ends[-1] >= math.ceil(round(duration * rate, 6))


@pytest.mark.parametrize("overlap", [-0.1, 5.0, 7.0, 10.0, 12.0])
def test_overlap_outside_zero_to_half_window_is_refused(overlap):
    with pytest.raises(ValueError, match=r"outside \[0, 5\) s"):
        sample.window_hop(10.0, overlap, 5, 50)


def test_overlap_refused_on_the_command_line(world, tmp_path):
    video = clips(world, tmp_path, {"clip.mp4": "test_00000"}) / "clip.mp4"
    for overlap in ("1.0", "-0.2"):  # the toy's window is 2 s
        with pytest.raises(SystemExit) as e:
            run(world, video, "--overlap", overlap)
        assert e.value.code.startswith("error: --overlap: overlap") and "outside [0, 1) s" in e.value.code


@pytest.mark.parametrize("overlap", [0.3, 2.0])
def test_generate_windows_in_sync_at_paper_timing(models, monkeypatch, overlap):
    """The tiny toy models run with the paper's 10 s window on a 25 s clip: window w's video starts
    at the frame generate() cuts, its audio at the token where its output lands in the clip's
    codes (and its in-painted tokens are the ones already there), and both are one instant."""
    tiny = SimpleNamespace(**{**vars(models), "meta": dict(models.meta, seconds=10.0)})
    assert tiny.meta["fps"] == 5 and tiny.codec.frame_rate == 50
    feats = torch.randn(125, models.meta["feature_dim"])  # 25 s at 5 fps
    frame_starts, windows = [], []
    cut, decode_tokens = sample.window_frames, sample.decode_tokens

    def window_spy(x, start, n):
        frame_starts.append(start)
        return cut(x, start, n)

    def decode_spy(model, cond, cond_mask, null_cond, codes, *args, **kwargs):
        out = decode_tokens(model, cond, cond_mask, null_cond, codes, *args, **kwargs)
        windows.append((codes[0].clone(), out[0].clone()))
        return out

    monkeypatch.setattr(sample, "window_frames", window_spy)
    monkeypatch.setattr(sample, "decode_tokens", decode_spy)
    args = dataclasses.replace(sample.Config(), steps=1, overlap=overlap)
    codes = sample.generate(tiny, [feats], [25.0], ["a low bell rings twice"], [0], args, CPU)[0]["codes"]
    assert codes.shape == (4, 1250) and len(frame_starts) == len(windows) == 3
    token_start = 0
    for w, (frame, (given, out)) in enumerate(zip(frame_starts, windows)):
        if w > 0:  # where this window's output sits in the clip: its known tokens are the clip's from there on
            keep = int((given != 64).all(0).sum())
            token_start = next(t for t in range(codes.shape[-1]) if torch.equal(codes[:, t: t + keep], given[:, :keep]))
            assert overlap * 50 <= keep < 250
        end = min(token_start + 500, codes.shape[-1])
        assert torch.equal(codes[:, token_start:end], out[:, : end - token_start])
        assert Fraction(frame, 5) == Fraction(token_start, 50), (w, frame, token_start)


# -----------------------------------------------------------------------------
# the frame rate of the features comes from the data


def test_converter_takes_the_frame_rate_of_its_features(world, tmp_path):
    feats_dir, out = tmp_path / "features10", tmp_path / "out"
    assert extract_features.main(["--input", f"{world}/v2a_instruction.json", "--out_dir", str(feats_dir),
                                  "--fps", "10", "--num_workers", "0"]) == 0
    assert json.loads((feats_dir / "meta.json").read_text())["fps"] == 10
    x = extract_features.load_features(feats_dir, "train_00000")
    assert x.shape[0] == 20  # 2 s at 10 fps
    stage1_caption.main(["--data_json", f"{world}/v2a_instruction.json", "--features_dir", str(feats_dir),
                         "--out_dir", str(out), "--llm", f"{world}/out/toy_llm"] + TINY_STAGE1)
    conv = stage1_caption.load_converter(out / "stage1.pt", CPU)
    assert conv.fps == 10
    assert conv.video_embeds(x[None]).shape[1] == 10  # the toy's 5 video tokens per second, over 2 s
    assert conv.n_video_tokens(20) == 10 and conv.n_video_tokens(10) == 5
