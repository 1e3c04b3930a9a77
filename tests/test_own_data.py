"""
Training on data this project did not make, on the tiny toy world of conftest.py:
- the authors' released VGGSound layout (paper §4 features, §3.2.1 tokens) read as it is by both
  trainers: two folders, tokens stored time-first (500, 4), no meta.json;
- every file of the train split checked by its header before step 0 (extract_features.check_npy against
  np.load as the reference): a bad file is named, and the run stops or leaves the clip out;
- the V2A-Instruction step (paper §4, appendix C, tools/caption_audio.py): the toy analyzer's captions
  against the generator's, and a tiny random Qwen2-Audio saved with save_pretrained through the
  exact loading and generation path;
- fine-tuning (--init_from) for both stages, from our checkpoints and from the authors' VATT
  checkpoint (converted by tools/official.py): exact reloads, mismatches refused, and the first loss of a
  fine-tuning run against a run from scratch;
- the whole own-data path, new clips -> captions from their audio -> features -> stage 1 ->
  stage 2 -> sample.
Nothing here touches the network.
"""
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch

import extract_features
import sample
import stage1_caption
import stage2_audio
from conftest import TINY_LLM, TINY_STAGE1, TINY_STAGE2, fixture
from data.toy import llm as toy_llm, prepare, world as toy_world
from tools import caption_audio
from extract_features import BadFileError, FeatureFiles, check_npy
from utils import read_checkpoint

pytestmark = pytest.mark.usefixtures("offline")  # no test here may reach the hub
YTIDS = ["-3b9gwBYXp8_000503", "0aZ9v8kQ_bQ_000030", "Zz_top-9xk4_000120", "a1b2c3d4e5f_000000",
         "q-w_e-r_t-y_000010", "UvWxYz01234_000250", "mnOPqrSTuvw_000007"]  # <ytid>_<start, 6 digits>


def val_loss_at(log, step=0):
    return float(re.search(rf"step {step}: val loss (\d+\.\d+)", log)[1])


def tiny_llm(data_json, folder):
    """A tiny toy LLM over the words of this data's train captions (data/toy/llm.py), the --llm of
    a stage-1 run on data other than the world's."""
    toy_llm.main([f"--data_json={data_json}", f"--out={folder}"] + TINY_LLM)
    return f"--llm={folder}"


# -----------------------------------------------------------------------------
# the authors' layout


@pytest.fixture
def authors_data(tmp_path, monkeypatch):
    """A V2A-Instruction JSON and the two folders exactly as the authors' download unzips them:
    vggsound_clip_5fps/<ytid>_<start>.npy (50, 768) and meta_pretrain_vgg_encodec_tokens/ (500, 4),
    in more than one dtype, no meta.json. AudioGen's codec cannot be downloaded here and its
    weights play no part in reading the layout: a stand-in with its table sizes replaces it."""
    d = tmp_path / "dataset"
    rng = np.random.default_rng(0)
    for i, ytid in enumerate(YTIDS):
        for sub, arr in (("vggsound_clip_5fps", rng.standard_normal((50, 768)).astype([np.float16, np.float32][i % 2])),
                         ("meta_pretrain_vgg_encodec_tokens", rng.integers(0, 2048, (500, 4)).astype([np.int64, np.int16][i % 2]))):
            (d / sub).mkdir(parents=True, exist_ok=True)
            np.save(d / sub / f"{ytid}.npy", arr)
    entries = [{"input": "", "video_path": ytid, "dataset": "vggsound", "output": f"a dog barks {i} times",
                "split": "test" if i == len(YTIDS) - 1 else "train"} for i, ytid in enumerate(YTIDS)]
    (d / "vggsound_v2a_instruction.json").write_text(json.dumps(entries))
    import codec

    stand_in = SimpleNamespace(n_q=4, bins=2048, dim=128, codebooks=torch.randn(4, 2048, 128))
    load = lambda name: stand_in if name == "facebook/audiogen-medium" else None  # noqa: E731
    for module in (codec, stage2_audio, sample):  # the stages import it by name
        monkeypatch.setattr(module, "load_codec", load)
    return d


def test_authors_layout_shapes_and_transposition(authors_data):
    files = FeatureFiles(authors_data)
    assert files.layout == "authors" and not (authors_data / "meta.json").exists()
    assert (files.meta["fps"], files.meta["seconds"], files.meta["feature_dim"]) == (5.0, 10.0, 768)
    assert (files.meta["codec"], files.meta["n_q"], files.meta["bins"], files.meta["frame_rate"]) == \
        ("facebook/audiogen-medium", 4, 2048, 50)
    stem = YTIDS[1]  # int16 tokens, float32 features
    raw = np.load(authors_data / "meta_pretrain_vgg_encodec_tokens" / f"{stem}.npy")
    tokens = files.load_tokens(stem)
    assert raw.shape == (500, 4) and tokens.shape == (4, 500) and tokens.dtype == torch.int64
    assert torch.equal(tokens, torch.from_numpy(raw.T.astype(np.int64)))  # (T, L) on disk -> (L, T)
    feats = files.load_video(YTIDS[0])  # float16 on disk
    assert feats.shape == (50, 768) and feats.dtype == torch.float32
    assert files.problems(stem, tokens=True) == []


def test_authors_layout_trains_both_stages(authors_data, tmp_path, capsys):
    data = [f"--data_json={authors_data}/vggsound_v2a_instruction.json", f"--features_dir={authors_data}"]
    out = tmp_path / "out"
    llm = tiny_llm(authors_data / "vggsound_v2a_instruction.json", tmp_path / "toy_llm")
    stage1_caption.main(data + [f"--out_dir={out}", llm] + TINY_STAGE1)
    s1 = torch.load(out / "stage1.pt", weights_only=True)
    assert s1["features_meta"]["feature_dim"] == 768 and s1["projector"]["weight"].shape == (32, 768)
    stage2_audio.main(data + [f"--converter={out}/stage1.pt", f"--out_dir={out}"] + TINY_STAGE2)
    s2 = torch.load(out / "stage2.pt", weights_only=True)
    assert s2["step"] == 2 and s2["codec"] == "facebook/audiogen-medium" and s2["model_config"]["bins"] == 2048
    log = capsys.readouterr().out
    assert "checked the 6 files of 6 clips" in log and "checked the 12 files of 6 clips" in log
    assert not (authors_data / "meta.json").exists()


# -----------------------------------------------------------------------------
# bad files, found before step 0


# name -> (writer of the bad bytes to a path, the problem the check must report): the ways a file goes bad
BAD_FILES = {
    "pickled": (lambda p: np.save(p, np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True), "pickled Python objects"),
    "random": (lambda p: p.write_bytes(np.random.default_rng(1).bytes(100)), "not a .npy file"),
    "empty": (lambda p: p.write_bytes(b""), "empty file"),
    "truncated": (lambda p: p.write_bytes(_npy_bytes(np.zeros((500, 4), np.int16))[:-10]), "truncated"),
    "wrong_shape": (lambda p: np.save(p, np.zeros((4, 500), np.int16)), "shape (4, 500), expected (500, 4)"),
    "floats": (lambda p: np.save(p, np.zeros((500, 4), np.float32)), "expected integers"),
}


def _npy_bytes(arr):
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_check_npy_against_np_load(tmp_path):
    """The header check says "fine" exactly when np.load reads an array of the expected shape and
    kind, and otherwise names the problem."""
    good = {"int16": np.zeros((500, 4), np.int16), "int64": np.ones((500, 4), np.int64),
            "fortran": np.asfortranarray(np.zeros((500, 4), np.int32))}
    for name, arr in good.items():
        np.save(tmp_path / f"{name}.npy", arr)
        assert check_npy(tmp_path / f"{name}.npy", (500, 4), "iu") is None
    for name, (write, problem) in BAD_FILES.items():
        path = tmp_path / f"{name}.npy"
        write(path)
        found = check_npy(path, (500, 4), "iu")
        assert found is not None and problem in found, (name, found)
        try:
            x = np.load(path)
            assert x.shape != (500, 4) or x.dtype.kind not in "iu"  # the reference agrees it is unusable
        except (ValueError, OSError, EOFError):
            pass
    assert check_npy(tmp_path / "absent.npy", (500, 4), "iu") == "no such file"
    assert check_npy(tmp_path / "int16.npy", (None, 4), "iu") is None  # any length on a free axis


def test_bad_files_are_named_before_step_0(authors_data, tmp_path, capsys):
    tokens = authors_data / "meta_pretrain_vgg_encodec_tokens"
    bad = dict(zip(YTIDS[:3], ["random", "empty", "wrong_shape"]))
    for ytid, kind in bad.items():
        BAD_FILES[kind][0](tokens / f"{ytid}.npy")
    data = [f"--data_json={authors_data}/vggsound_v2a_instruction.json", f"--features_dir={authors_data}"]
    out = tmp_path / "out"
    llm = tiny_llm(authors_data / "vggsound_v2a_instruction.json", tmp_path / "toy_llm")
    stage1_caption.main(data + [f"--out_dir={out}", llm] + TINY_STAGE1)  # stage 1 reads no tokens
    assert "checked the 6 files of 6 clips in" in capsys.readouterr().out
    np.save(authors_data / "vggsound_clip_5fps" / f"{YTIDS[3]}.npy", np.zeros((49, 768), np.float16))  # a short clip
    s2 = data + [f"--converter={out}/stage1.pt", f"--out_dir={out}"] + TINY_STAGE2
    with pytest.raises(SystemExit, match=r"4 of 6 clips have bad files.*--skip_bad_files=true"):
        stage2_audio.main(s2)
    captured = capsys.readouterr()
    for ytid, kind in bad.items():
        line = next(l for l in captured.err.splitlines() if ytid in l)
        assert line.startswith(str(tokens / f"{ytid}.npy")) and BAD_FILES[kind][1] in line
    assert re.search(rf"{YTIDS[3]}\.npy: shape \(49, 768\), expected \(50, 768\)", captured.err)
    assert "step 0" not in captured.out and not (out / "stage2.pt").exists()  # stopped before training

    stage2_audio.main(s2 + ["--skip_bad_files=true"])  # or: leave them out, say so, and train
    captured = capsys.readouterr()
    assert "left out 4 of 6 clips with bad files" in captured.out and "1 training and 1 validation clips" in captured.out
    assert torch.load(out / "stage2.pt", weights_only=True)["step"] == 2


def test_bad_file_in_our_layout_and_during_training(world, tmp_path, capsys):
    features = tmp_path / "features"
    shutil.copytree(world / "features", features)
    (features / "video" / "train_00002.npy").write_bytes(np.random.default_rng(1).bytes(100))
    with pytest.raises(SystemExit, match="1 of 6 clips have bad files"):
        stage1_caption.main([f"--data_json={world}/v2a_instruction.json", f"--features_dir={features}",
                             f"--out_dir={tmp_path}/out", f"--llm={world}/out/toy_llm"] + TINY_STAGE1)
    assert f"{features}/video/train_00002.npy: not a .npy file" in capsys.readouterr().err
    # a file that goes bad after the check: one error naming it when it is read
    with pytest.raises(BadFileError, match=r"train_00002\.npy: unreadable"):
        FeatureFiles(features).load_video("train_00002")
    (features / "audio" / "train_00001.npy").write_bytes(_npy_bytes(np.zeros((4, 100), np.int16))[:-8])
    with pytest.raises(BadFileError, match=r"train_00001\.npy: unreadable"):
        FeatureFiles(features).load_tokens("train_00001")
    # ... and what the trainers read at each step ends the run with one line naming it
    with pytest.raises(SystemExit, match=r"train_00001\.npy: unreadable .* changed during the run"):
        FeatureFiles(features).load_clip("train_00001", tokens=True)
    assert FeatureFiles(features).load_clip("train_00001").shape == (10, 256)  # its features are fine


# -----------------------------------------------------------------------------
# the V2A-Instruction step (tools/caption_audio.py)


def test_toy_captioner_agrees_with_the_generator(world, tmp_path):
    """On the micro world's 10 clips the toy analyzer + grammar name the same source, register and
    count as the generator's captions (the 200 test clips: docs/own-data.md)."""
    out = tmp_path / "captions.json"
    assert caption_audio.main([f"--input={world}/clips", f"--out={out}", "--num_workers=0"]) == 0
    truth = {Path(e["video_path"]).stem: e for e in json.loads((world / "v2a_instruction.json").read_text())}
    entries = json.loads(out.read_text())
    assert len(entries) == 10
    for e in entries:
        assert set(e) == {"video_path", "output", "split", "captioner", "prompt"} and e["captioner"] == "toy-analyzer"
        assert (out.parent / e["video_path"]).resolve() == (world / "clips" / f"{Path(e['video_path']).stem}.mp4").resolve()
        heard, said = toy_world.parse_caption(e["output"]), toy_world.parse_caption(truth[Path(e["video_path"]).stem]["output"])
        assert heard == said, (e["output"], truth[Path(e["video_path"]).stem]["output"])


def test_split_is_a_function_of_the_name():
    names = [f"clip_{i}" for i in range(2000)]
    splits = [caption_audio.split_of(n, 0.1, 0) for n in names]
    assert 0.08 < splits.count("test") / len(names) < 0.12
    assert splits == [caption_audio.split_of(n, 0.1, 0) for n in names]  # reproducible
    assert splits != [caption_audio.split_of(n, 0.1, 1) for n in names]  # the seed moves it


def make_tiny_qwen2_audio(folder):
    """A random Qwen2-Audio (Whisper-style encoder + Qwen2 LM) of the real architecture at tiny
    size, with a processor built locally: the real feature extractor settings (128 mel bins, 30 s
    windows at 16 kHz), a word-level tokenizer holding the chat format's special tokens, and the
    processor's own chat template. Saved with save_pretrained, as the hub's folders are."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (PreTrainedTokenizerFast, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration,
                              Qwen2AudioProcessor, WhisperFeatureExtractor)

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]
    text = "system You are a helpful assistant. user assistant Audio 1: " + caption_audio.PAPER_PROMPT + " a bell rings"
    words = sorted({w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words + special)}, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(special)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        unk_token="<|endoftext|>")
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer)
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(Qwen2AudioConfig(
        audio_config=dict(d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, num_mel_bins=128),
        text_config=dict(model_type="qwen2", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>")))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _silent_audio_mp4(path, seconds=2.0):
    frames = np.zeros((int(seconds * 25), 64, 64, 3), np.uint8)
    prepare.write_mp4(str(path), frames, np.zeros(int(seconds * 16000), np.float32), fps=25, crf=30)


def _video_only_mp4(path):
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        for i in range(25):
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 8, np.uint8), format="rgb24")))
        c.mux(s.encode(None))


def test_audio_llm_captioner_tiny_qwen2_audio(world, tmp_path, capsys):
    model = make_tiny_qwen2_audio(tmp_path / "qwen2-audio")
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("train_00000", "train_00001"):
        shutil.copy(world / "clips" / f"{name}.mp4", videos / f"{name}.mp4")
    _video_only_mp4(videos / "no_audio.mp4")
    _silent_audio_mp4(videos / "silent.mp4")
    out = tmp_path / "v2a" / "captions.json"
    args = [f"--captioner={model}", f"--input={videos}", f"--out={out}", "--num_workers=0", "--batch_size=2",
            "--max_new_tokens=6", "--test_fraction=0.5"]
    assert caption_audio.main(args) == 1  # some clips skipped
    captured = capsys.readouterr()
    assert re.search(r"skipped .*no_audio\.mp4: no audio track", captured.err)
    assert re.search(r"skipped .*silent\.mp4: silent audio", captured.err)
    entries = json.loads(out.read_text())
    assert [e["video_path"] for e in entries] == ["../videos/train_00000.mp4", "../videos/train_00001.mp4"]
    for e in entries:
        assert e["captioner"] == str(model) and e["prompt"] == caption_audio.PAPER_PROMPT
        assert isinstance(e["output"], str) and e["output"] and e["split"] == caption_audio.split_of(Path(e["video_path"]).stem, 0.5, 0)
    # the generation path a user runs: the audio went through the processor into generate
    cap = caption_audio.AudioLLMCaptioner(str(model), caption_audio.PAPER_PROMPT, torch.device("cpu"), 6)
    assert "<|AUDIO|>" in cap.text and caption_audio.PAPER_PROMPT in cap.text
    wav = extract_features.load_audio(str(videos / "train_00000.mp4"), cap.sample_rate, 2.0)
    assert cap([wav], ["train_00000"]) == [entries[0]["output"]]

    # resume: a new clip is captioned, the finished ones are not touched again
    shutil.copy(world / "clips" / "test_00000.mp4", videos / "test_00000.mp4")
    (videos / "no_audio.mp4").unlink()
    (videos / "silent.mp4").unlink()
    assert caption_audio.main(args) == 0
    assert "3 videos, 2 already captioned" in capsys.readouterr().out
    resumed = json.loads(out.read_text())
    assert [e["video_path"] for e in resumed] == ["../videos/test_00000.mp4"] + [e["video_path"] for e in entries]
    assert resumed[1:] == entries


# -----------------------------------------------------------------------------
# fine-tuning (--init_from)


def _equal_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stage1_init_from_reloads_exactly(world, tmp_path):
    init = torch.load(world / "out" / "stage1.pt", weights_only=True)
    out, llm = tmp_path / "ft", f"{world}/out/toy_llm"
    # lr 0: the one step changes nothing, so the saved weights are the loaded ones; the architecture
    # options given here are overridden by the checkpoint's
    other_architecture = {"video_tokens_per_second": 1, "lora_r": 16, "lora_alpha": 8, "max_text_tokens": 30}
    assert set(other_architecture) == set(stage1_caption.ARCHITECTURE)
    assert all(init["config"][k] != v for k, v in other_architecture.items())
    stage1_caption.main([f"--data_json={world}/v2a_instruction.json", f"--features_dir={world}/features",
                         f"--out_dir={out}", f"--init_from={world}/out/stage1.pt", f"--llm={llm}", "--lr=0",
                         "--max_steps=1", "--eval_interval=1", "--eval_batches=1", "--batch_size=2"]
                        + [f"--{k}={v}" for k, v in other_architecture.items()])
    ft = torch.load(out / "stage1.pt", weights_only=True)
    assert _equal_state(ft["projector"], init["projector"]) and _equal_state(ft["trainable"], init["trainable"])
    assert ft["step"] == 1  # the architecture comes from the checkpoint
    assert {k: ft["config"][k] for k in stage1_caption.ARCHITECTURE} == {k: init["config"][k] for k in stage1_caption.ARCHITECTURE}
    assert {s["step"].item() for s in ft["optimizer"]["state"].values()} == {1}  # a fresh optimizer
    # the base LLM is the one --llm names, as given, and is not copied anywhere
    assert "llm_path" not in ft and ft["config"]["llm"] == llm == init["config"]["llm"]
    assert not (out / "toy_llm").exists() and ft["vocab_size"] == init["vocab_size"]


def test_stage1_init_from_rejects_a_mismatch(world, tmp_path):
    llm = f"--llm={world}/out/toy_llm"
    data = [f"--data_json={world}/v2a_instruction.json", f"--features_dir={world}/features", f"--out_dir={tmp_path}/ft"]
    with pytest.raises(SystemExit) as e:
        stage1_caption.main(data + [f"--init_from={world}/out/stage2.pt", llm] + TINY_STAGE1)
    assert str(e.value) == f"error: {world}/out/stage2.pt: not a stage-1 (Converter) checkpoint (a 'vatt-audio' one)"
    with pytest.raises(SystemExit, match="this run's own checkpoint"):
        stage1_caption.main([f"--data_json={world}/v2a_instruction.json", f"--features_dir={world}/features",
                             f"--out_dir={world}/out", f"--init_from={world}/out/stage1.pt", llm] + TINY_STAGE1)
    # another vocabulary: the trained checkpoint on a toy LLM of the same size built over other words
    other = tmp_path / "other"
    cfg = toy_llm.Config(toy_width=32, toy_layers=1, toy_heads=2)
    toy_llm.build_toy_llm(cfg, ["some entirely different words"], other / "toy_llm")
    with pytest.raises(SystemExit, match=r"trained with a vocabulary of \d+ tokens, .* has \d+"):
        stage1_caption.main(data + [f"--init_from={world}/out/stage1.pt", f"--llm={other}/toy_llm"] + TINY_STAGE1)
    # other features: a visual encoder of another width
    features = tmp_path / "features"
    shutil.copytree(world / "features", features)
    meta = json.loads((features / "meta.json").read_text())
    (features / "meta.json").write_text(json.dumps({**meta, "feature_dim": 16}))
    for p in (features / "video").iterdir():
        np.save(p, np.zeros((10, 16), np.float16))
    with pytest.raises(SystemExit, match=rf"its projector takes {meta['feature_dim']}-d frame features, these features are 16-d"):
        stage1_caption.main([f"--data_json={world}/v2a_instruction.json", f"--features_dir={features}",
                             f"--out_dir={tmp_path}/ft2", f"--init_from={world}/out/stage1.pt", llm] + TINY_STAGE1)


def test_stage2_init_from_reloads_exactly(world, tmp_path):
    init = torch.load(world / "out" / "stage2.pt", weights_only=True)
    out = tmp_path / "ft"
    stage2_audio.main([f"--data_json={world}/v2a_instruction.json", f"--features_dir={world}/features",
                       f"--converter={world}/out/stage1.pt", f"--out_dir={out}", f"--init_from={world}/out/stage2.pt",
                       "--lr=0", "--max_steps=1", "--eval_interval=1", "--eval_batches=1", "--batch_size=2"])
    ft = torch.load(out / "stage2.pt", weights_only=True)
    assert _equal_state(ft["model"], init["model"]) and ft["model_config"] == init["model_config"]
    assert ft["step"] == 1 and ft["model_config"]["head_order"] == "natural" and ft["config"]["dim"] == 32
    assert "head_order" not in ft  # a property of the network: in model_config
    assert {s["step"].item() for s in ft["optimizer"]["state"].values()} == {1}


def test_stage2_stopped_early_and_resumed_trains_one_run(world, tmp_path, capsys):
    """--stop_at (the learning curves of tools/toy/masking_curves.py): a run stopped at step 2 of 4
    keeps the schedule of its max_steps, and resumed it trains exactly what one run of 4 steps does."""
    args = [f"--data_json={world}/v2a_instruction.json", f"--features_dir={world}/features",
            f"--converter={world}/out/stage1.pt"] + TINY_STAGE2 + ["--max_steps=4", "--eval_interval=2"]
    stage2_audio.main(args + [f"--out_dir={tmp_path}/one"])
    stage2_audio.main(args + [f"--out_dir={tmp_path}/pieces", "--stop_at=2"])
    assert torch.load(tmp_path / "pieces" / "stage2.pt", weights_only=True)["step"] == 2
    capsys.readouterr()
    stage2_audio.main(args + [f"--out_dir={tmp_path}/pieces", "--stop_at=2"])
    assert "is at step 2, stop_at is 2: nothing to train" in capsys.readouterr().out
    stage2_audio.main(args + [f"--out_dir={tmp_path}/pieces"])
    one, pieces = (torch.load(tmp_path / d / "stage2.pt", weights_only=True) for d in ("one", "pieces"))
    assert one["step"] == pieces["step"] == 4 and _equal_state(one["model"], pieces["model"])
    assert one["val_loss"] == pieces["val_loss"]


def test_stage2_init_from_rejects_a_mismatch(world, tmp_path):
    data = [f"--data_json={world}/v2a_instruction.json", f"--features_dir={world}/features",
            f"--converter={world}/out/stage1.pt", f"--out_dir={tmp_path}/ft"] + TINY_STAGE2
    init = torch.load(world / "out" / "stage2.pt", weights_only=True)
    for change, message in (({"codec": "facebook/audiogen-medium"}, "trained on tokens of the codec 'facebook/audiogen-medium'"),
                            ({"model_config": {**init["model_config"], "cond_dim": 64}},
                             "conditions on 64-d LLM states, the Converter gives 32-d ones"),
                            ({"model_config": {**init["model_config"], "bins": 2048}}, "made for a codec of 4 x 2048 tokens"),
                            ({"kind": "vatt-converter"}, "not a stage-2 (VATT Audio) checkpoint")):
        path = tmp_path / "changed.pt"
        torch.save({**init, **change}, path)
        with pytest.raises(SystemExit, match=re.escape(message)):
            stage2_audio.main(data + [f"--init_from={path}"])
    # anything but a stage-2 checkpoint of this project (the authors' .ckpt included: official.py
    # convert makes one of it) is refused with one line naming the file, before any training
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as e:
        stage2_audio.main(data + [f"--init_from={tmp_path}/junk.ckpt"])
    assert str(e.value) == (f"error: {tmp_path}/junk.ckpt: not a readable stage-2 (VATT Audio) checkpoint "
                            "(not a PyTorch checkpoint file)")
    ckpt, _ = _authors_ckpt(tmp_path, codebook_dim=32)
    with pytest.raises(SystemExit) as e:
        stage2_audio.main(data + [f"--init_from={ckpt}"])
    assert str(e.value) == f"error: {ckpt}: not a stage-2 (VATT Audio) checkpoint"
    with pytest.raises(SystemExit) as e:
        stage2_audio.main(data + [f"--init_from={tmp_path}/absent.pt"])
    assert str(e.value) == f"error: {tmp_path}/absent.pt: no such checkpoint (--init_from)"
    assert not (tmp_path / "ft" / "stage2.pt").exists()


def _authors_ckpt(tmp_path, codebook_dim):
    """The authors' tiny VT2AModel fixture (made by running their code) as a Lightning .ckpt, its
    codec width set to `codebook_dim` (the toy codec's tables are 32 wide, the fixture's 16)."""
    sd = dict(torch.load(fixture("vatt_audio_tiny.pt"), weights_only=True)["state_dict"])
    g = torch.Generator().manual_seed(0)
    sd["embedding.out_proj.weight"] = torch.randn(sd["embedding.out_proj.weight"].shape[0], codebook_dim, generator=g) * 0.1
    sd["embedding.special.MASK"] = torch.randn(4, codebook_dim, generator=g) * 0.02
    ckpt = tmp_path / "vatt_tiny.ckpt"
    torch.save({"state_dict": {"audio_token_decoder." + k: v for k, v in sd.items()}, "epoch": 1}, ckpt)
    return ckpt, sd


def test_stage2_init_from_the_authors_checkpoint(world, tmp_path):
    """Their weights, converted by official.py into a checkpoint of ours (safetensors + JSON, no
    pickle), fine-tune in their own
    head order (official.py quirk 2): with lr 0 the saved model is exactly the mapped one, and
    loading it back gives the logits of their model."""
    from tools import official
    from data.toy.codec import ToyCodec

    ckpt, sd = _authors_ckpt(tmp_path, codebook_dim=32)
    torch.save(ToyCodec().codebooks, tmp_path / "toy_codebooks.pt")
    assert official.main(["convert", str(ckpt), str(tmp_path / "released"), f"--codebooks={tmp_path}/toy_codebooks.pt"]) == 0
    assert not (tmp_path / "released" / "converter.safetensors").exists()  # no Converter weights in this .ckpt
    converted = read_checkpoint(tmp_path / "released" / "stage2.safetensors", "vatt-audio")
    assert converted["kind"] == "vatt-audio" and converted["codec"] is None and converted["step"] == 0
    assert converted["model_config"]["head_order"] == "released" and "head_order" not in converted
    # on the toy: the converted files and the .ckpt sample the same tokens and audio, bit for bit
    import sample

    conv = stage1_caption.load_converter(world / "out" / "stage1.pt", torch.device("cpu"))
    feats = torch.stack([FeatureFiles(world / "features").load_video(f"test_0000{i}") for i in range(2)])
    cond, cond_mask = stage2_audio.audio_condition(conv, feats, ["a low and deep bell rings twice"] * 2)
    pieces = []
    for model in (stage2_audio.load_vatt_audio(tmp_path / "released" / "stage2.safetensors", torch.device("cpu"))[0],
                  official.load_official_vatt_audio(ckpt, tmp_path / "toy_codebooks.pt")):
        start = torch.full((2, 4, 100), model.config.bins)
        codes = sample.decode_tokens(model, *sample.guidance_batch(cond, cond_mask), start, [torch.Generator().manual_seed(i) for i in range(2)],
                                     8, 2.0, 0.5, 256, 0.5)
        pieces.append((codes, ToyCodec().decode(codes)))
    assert torch.equal(pieces[0][0], pieces[1][0]) and torch.equal(pieces[0][1], pieces[1][1])
    out = tmp_path / "ft"
    stage2_audio.main([f"--data_json={world}/v2a_instruction.json", f"--features_dir={world}/features",
                       f"--converter={world}/out/stage1.pt", f"--out_dir={out}",
                       f"--init_from={tmp_path}/released/stage2.safetensors",
                       "--lr=0", "--max_steps=1", "--eval_interval=1", "--eval_batches=1", "--batch_size=2"])
    ft = torch.load(out / "stage2.pt", weights_only=True)

    theirs = official.build_official_vatt_audio(sd, ToyCodec().codebooks, head_order="natural")
    assert ft["model_config"]["head_order"] == "released"
    assert (ft["model_config"]["dim"], ft["model_config"]["n_head"]) == (64, 4)
    assert _equal_state(ft["model"], theirs.state_dict())  # their position table (`pos`) included
    model, _ = stage2_audio.load_vatt_audio(out / "stage2.pt", torch.device("cpu"))
    assert isinstance(model, stage2_audio.VATTAudio) and model.config.head_order == "released"
    codes = torch.randint(0, 65, (2, 4, 100), generator=torch.Generator().manual_seed(0))
    cond, cond_mask = torch.randn(2, 34, 32), torch.ones(2, 34, dtype=torch.long)
    with torch.no_grad():
        want = official.build_official_vatt_audio(sd, ToyCodec().codebooks)(codes, cond, cond_mask)  # their order
        assert torch.allclose(model(codes, cond, cond_mask), want, atol=1e-5)  # the same weights and positions

    # a converted checkpoint made for another codec width is refused
    ckpt16, sd16 = _authors_ckpt(tmp_path, codebook_dim=16)
    torch.save(torch.randn(4, 64, 16), tmp_path / "codebooks16.pt")
    assert official.main(["convert", str(ckpt16), str(tmp_path / "released16"), f"--codebooks={tmp_path}/codebooks16.pt"]) == 0
    with pytest.raises(SystemExit, match=re.escape("made for a codec of 4 x 64 tokens of width 16, "
                                                   "'data.toy.codec:ToyCodec' has 4 x 64 of width 32")):
        stage2_audio.main([f"--data_json={world}/v2a_instruction.json", f"--features_dir={world}/features",
                           f"--converter={world}/out/stage1.pt", f"--out_dir={tmp_path}/ft16",
                           f"--init_from={tmp_path}/released16/stage2.safetensors"])


# -----------------------------------------------------------------------------
# the own-data path end to end, and fine-tuning against training from scratch


def test_own_videos_end_to_end_and_fine_tuning_starts_trained(world, tmp_path, capsys):
    """New toy clips with no captions -> captions from their audio -> features -> stage 1 and
    stage 2 fine-tuned from trained checkpoints -> a sample. Stage 2's first loss when fine-tuning
    is the trained model's, well below a run from scratch on the same clips (which starts from the
    very weights a fine-tuning run would have if --init_from loaded nothing: same seed). At this
    size the trained model has memorised its 5 clips more than it has learnt the world, so its
    loss on new clips stays above its own validation loss. The full-size numbers are in docs/own-data.md."""
    data = [f"--data_json={world}/v2a_instruction.json", f"--features_dir={world}/features"]
    trained = tmp_path / "trained"  # a stage 2 trained for more than the fixture's 2 steps
    stage2_audio.main(data + [f"--converter={world}/out/stage1.pt", f"--out_dir={trained}"] + TINY_STAGE2
                      + ["--max_steps=60", "--eval_interval=60", "--lr=3e-3"])  # the last value of an option wins
    trained_loss = val_loss_at(capsys.readouterr().out, 60)

    mine = tmp_path / "mine"  # a folder of new videos (the generator's own JSON is not used)
    prepare.main([f"--out_dir={mine}", "--n_train=10", "--n_test=0", "--n_val=0", "--seed=7", "--workers=1"])
    captions = mine / "captions.json"
    assert caption_audio.main([f"--input={mine}/clips", f"--out={captions}", "--test_fraction=0.2", "--num_workers=0"]) == 0
    assert extract_features.main([f"--input={captions}", f"--out_dir={mine}/features", "--num_workers=0"]) == 0
    new = [f"--data_json={captions}", f"--features_dir={mine}/features"]
    stage1_caption.main(new + [f"--out_dir={mine}/ft", f"--init_from={world}/out/stage1.pt",
                               f"--llm={world}/out/toy_llm"] + TINY_STAGE1)
    runs = {}
    for name, init in (("fine-tuned", [f"--init_from={trained}/stage2.pt"]), ("scratch", [])):
        stage2_audio.main(new + [f"--converter={mine}/ft/stage1.pt", f"--out_dir={mine}/{name}"] + init + TINY_STAGE2)
        runs[name] = val_loss_at(capsys.readouterr().out, 0)
    print(f"stage 2 val loss at step 0: trained model {trained_loss:.3f} on its validation clip; on the new clips "
          f"fine-tuned {runs['fine-tuned']:.3f}, from scratch {runs['scratch']:.3f}")
    assert runs["fine-tuned"] < runs["scratch"] - 0.2

    shutil.copy(mine / "fine-tuned" / "stage2.pt", mine / "ft" / "stage2.pt")
    clip = json.loads(captions.read_text())[0]
    assert sample.main([f"--ckpt_dir={mine}/ft", f"--video={captions.parent / clip['video_path']}", "--steps=2"]) == 0
    assert (captions.parent / clip["video_path"]).with_suffix(".vatt.wav").exists()
