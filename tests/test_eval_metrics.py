"""
Tests for eval.py: the metric formulas against closed forms and numbers computed with the
reference coco-caption code, then the audio and caption pipelines end to end with tiny random networks on
synthetic wavs (no pretrained weights, no network).

    python -m pytest -q tests/test_eval_metrics.py
"""

import json
import math
import shutil
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import eval as vatt_eval  # the repo's eval.py (pytest.ini puts the repo root on sys.path)
from tools import sample_split

# a worked example (made-up captions; the numbers from pycocoevalcap 1.2)
HYPS = ["a man is playing a guitar on the stage", "a dog is barking at the mailman",
        "the rain falls on the roof of the house", "a car engine is revving loudly"]
REFS = [["a man is playing the guitar on a stage", "someone plays guitar"], ["a dog is barking loudly at a mailman"],
        ["rain falls on the roof of a house"], ["a car engine revs loudly", "an engine is revving"]]


# -----------------------------------------------------------------------------
# captions


def test_caption_metrics_match_coco_on_worked_example():
    m = vatt_eval.caption_metrics(HYPS, REFS)
    assert m["bleu4"] == pytest.approx(0.497462423, abs=1e-9)
    assert m["rouge_l"] == pytest.approx(0.785006788, abs=1e-9)
    assert m["cider"] == pytest.approx(4.434596190, abs=1e-9)


def test_bleu_without_any_4gram_match_is_tiny_not_zero():
    hyps = ["the cat sat on the mat", "a dog barks loudly in the distance", "birds chirping while wind blows"]
    refs = [["the cat is sitting on the mat"], ["a dog is barking in the distance"],
            ["birds are chirping and wind is blowing"]]
    m = vatt_eval.caption_metrics(hyps, refs)
    assert m["bleu4"] == pytest.approx(4.07100706e-05, rel=1e-6)  # sacrebleu would say 0 here
    assert m["rouge_l"] == pytest.approx(0.652801108, abs=1e-9)
    assert m["cider"] == pytest.approx(2.903996077, abs=1e-9)


def test_identical_captions_and_argument_order():
    assert vatt_eval.caption_metrics(HYPS, [[h] for h in HYPS])["bleu4"] == pytest.approx(1.0, abs=1e-9)
    swapped = vatt_eval.caption_metrics([r[0] for r in REFS], [[h] for h in HYPS])
    assert swapped["rouge_l"] != pytest.approx(0.785006788, abs=1e-6)  # beta = 1.2 makes ROUGE-L asymmetric


@pytest.mark.parametrize("text, tokens", [  # outputs of CoreNLP 3.4.1 (-lowerCase), coco punctuation removed
    ("The dog doesn't stop barking; it's loud!", "the dog does n't stop barking it 's loud"),
    ("Birds chirp (loudly) while a car's engine revs.", "birds chirp -lrb- loudly -rrb- while a car 's engine revs"),
    ('"Hello," she said -- and the crowd cheered...', "hello she said and the crowd cheered"),
    ("Music plays at 3.5 kHz, around 10:30 p.m.", "music plays at 3.5 khz around 10:30 p.m."),
    ("A hip-hop song plays in the U.S. and Mr. Smith talks.", "a hip-hop song plays in the u.s. and mr. smith talks"),
    ("Water splashes and/or a dog barks * twice.", "water splashes and/or a dog barks * twice"),
    ("The colour is grey; he cannot stop.", "the colour is grey he can not stop"),
    ("He won't go, they're gonna leave, I'd say we'll see.", "he wo n't go they 're gon na leave i 'd say we 'll see"),
    ("Cost is $3.88 & 50% off, e.g. o'clock.", "cost is $ 3.88 & 50 % off e.g. o'clock"),
    ("A \u201cquoted\u201d word, don\u2019t [now] {ok}", "a quoted word do n't -lsb- now -rsb- -lcb- ok -rcb-"),
    ("Rain falls on a tin roof!!! Thunder?!", "rain falls on a tin roof !!! thunder ?!"),
    ("A 10-year-old at AT&T sees 1,000 dogs' toys", "a 10-year-old at at&t sees 1,000 dogs toys"),
])
def test_tokenize_matches_java_ptb_outputs(text, tokens):
    assert vatt_eval.tokenize(text) == tokens.split()


def test_against_pycocoevalcap_when_installed():
    """Optional cross-check with the real thing (pip install pycocoevalcap, needs java); skipped otherwise."""
    pytest.importorskip("pycocoevalcap")
    if shutil.which("java") is None:
        pytest.skip("java not found")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    hyps = ["Dummy first line.", "A man's guitar (loud) plays!", "Dogs don't stop barking, 3.5 times..."] + HYPS
    refs = [["dummy first line"], ["a man plays a loud guitar"], ["the dogs won't stop barking"]] + REFS
    tok = PTBTokenizer().tokenize({i: [{"caption": c} for c in [h] + r] for i, (h, r) in enumerate(zip(hyps, refs))})
    assert all(tok[i][0].split() == vatt_eval.tokenize(h) for i, h in enumerate(hyps))
    gts, res = {i: tok[i][1:] for i in tok}, {i: tok[i][:1] for i in tok}
    ours = vatt_eval.caption_metrics(hyps, refs)
    assert ours["bleu4"] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3], abs=1e-9)
    assert ours["rouge_l"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-9)
    assert ours["cider"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-9)


def test_bertscore_greedy_matching_closed_form():
    e1, e2, e3 = np.eye(3)
    cand, cand_w = np.stack([e1, e2]), np.ones(2)
    ref, ref_w = np.stack([e1, 3 * e3]), np.ones(2)  # scale must not matter (cosine)
    assert vatt_eval.bertscore_greedy(cand, cand_w, ref, ref_w) == pytest.approx((0.5, 0.5, 0.5))
    # a special token (weight 0) is still a match candidate: e2 now finds it, so P rises while R does not
    ref_s, ref_ws = np.stack([e1, 3 * e3, e2]), np.array([1.0, 1.0, 0.0])
    assert vatt_eval.bertscore_greedy(cand, cand_w, ref_s, ref_ws) == pytest.approx((1.0, 0.5, 2 / 3))


def write_tiny_roberta(folder: Path):
    """A randomly initialised 17-layer RoBERTa with a byte-level vocabulary and no merges, saved like roberta-large."""
    from transformers import RobertaConfig, RobertaModel
    folder.mkdir(parents=True)
    byte_chars = [chr(c) for c in [*range(33, 127), *range(161, 173), *range(174, 256), *range(256, 324)]]
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", *byte_chars, "<mask>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=len(vocab), hidden_size=8, num_hidden_layers=17, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=64)
    RobertaModel(cfg).save_pretrained(folder)


def test_captions_cli_end_to_end(tmp_path, capsys):
    # generated: list of records with paths as ids and raw, punctuated text; reference: dict id -> list of captions
    gen = [{"video_path": f"videos/v{i}.mp4", "caption": h.capitalize() + "."} for i, h in enumerate(HYPS)]
    gen.append({"video_path": "videos/extra.mp4", "caption": "not in the reference"})
    ref = {f"v{i}": r for i, r in enumerate(REFS)} | {"only_ref": ["never generated"]}
    (tmp_path / "gen.json").write_text(json.dumps(gen))
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    args = ["captions", "--generated", str(tmp_path / "gen.json"), "--reference", str(tmp_path / "ref.json")]

    vatt_eval.main(args + ["--weights_dir", str(tmp_path / "no_weights")])
    out = json.loads((tmp_path / "gen.metrics.json").read_text())
    m = out["metrics"]
    assert (out["n_captions"], out["only_in_generated"], out["only_in_reference"]) == (4, ["extra"], ["only_ref"])
    assert (m["bleu4"], m["rouge_l"], m["cider"]) == pytest.approx((0.497462423, 0.785006788, 4.434596190), abs=1e-9)
    assert "roberta-large" in m["bertscore"]["skipped"] and "--audio" in m["clap"]["skipped"]
    assert "tokenizer" in out["settings"] and "layer 17" in out["settings"]["bertscore"]
    printed = capsys.readouterr().out
    assert "| Methods | BertScore (F1) ↑ | BLEU-4 ↑ | ROUGE-L ↑ | CIDEr ↑ | CLAP Score ↑ |" in printed
    assert "| gen | – | 0.497 | 0.785 | 4.435 | – |" in printed
    assert (f"scored 4 captions matched by name; left out: 1 only in {tmp_path / 'gen.json'}, "
            f"1 only in {tmp_path / 'ref.json'}") in printed


def test_read_captions_accepts_every_format_it_documents(tmp_path):
    # a split run's captions.json (tools/sample_split.py): {"settings", "counts", "clips": {id: {"caption",
    # "prompt", ...}}}; the metrics must see the caption, not the record's keys
    sample_split.write_captions(tmp_path, {"seed": 0}, {"v0": {"caption": "a dog barks",
                                                              "prompt": "What audio could be inferred?"}})
    formats = {"captions.json": json.loads((tmp_path / "captions.json").read_text()),
               "plain.json": {"a/v0.mp4": "a dog barks"},
               "refs.json": {"v0": ["a dog barks"]},
               "records.json": [{"video_path": "clips/v0.mp4", "output": "a dog barks"}]}
    for name, data in formats.items():
        (tmp_path / name).write_text(json.dumps(data))
        assert vatt_eval.read_captions(tmp_path / name) == {"v0": ["a dog barks"]}, name
    (tmp_path / "prompted.json").write_text(json.dumps({"v0": {"caption": None, "prompt": "a dog barks"}}))
    with pytest.raises(AssertionError, match="without a prompt"):
        vatt_eval.read_captions(tmp_path / "prompted.json")


def test_bertscore_loader_with_tiny_random_roberta(tmp_path):
    write_tiny_roberta(tmp_path / "roberta-large")
    embed = vatt_eval.load_bertscore(tmp_path)
    (cand, cand_w), (ref, _) = embed(["a dog barks", "wind"])
    assert cand.shape == (2 + len(" a dog barks"), 8) and cand_w.tolist() == [0] + [1] * 12 + [0]  # <s> bytes </s>
    same = vatt_eval.bertscore(["a dog barks", "wind"], [["rain", "a dog barks"], ["wind"]], embed)
    assert same == pytest.approx({"precision": 1.0, "recall": 1.0, "f1": 1.0}, abs=1e-6)  # best reference is exact
    (tmp_path / "g.json").write_text(json.dumps({"x": "a dog barks loudly"}))
    (tmp_path / "r.json").write_text(json.dumps({"x": ["a cat meows", "rain"]}))
    bs = vatt_eval.evaluate_captions(tmp_path / "g.json", tmp_path / "r.json", embed, None)["metrics"]["bertscore"]
    assert -1 <= bs["precision"] < 1 and -1 <= bs["recall"] < 1 and bs["f1"] < 1


# -----------------------------------------------------------------------------
# audio: pure functions


def exact_gaussian_samples(mu, cov, n, seed):
    """n samples whose sample mean is mu and whose (n-1) sample covariance is cov, exactly."""
    z = np.random.default_rng(seed).standard_normal((n, len(mu)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whiten: sample covariance = I
    return z @ np.linalg.cholesky(cov).T + mu


def test_frechet_distance_closed_forms():
    a = exact_gaussian_samples(np.zeros(2), np.eye(2), 50, seed=0)
    b = exact_gaussian_samples(np.array([1.0, 2.0]), np.array([[2.0, 1.0], [1.0, 2.0]]), 60, seed=1)
    fd = vatt_eval.frechet_distance(*vatt_eval.gaussian_stats(a), *vatt_eval.gaussian_stats(b))
    assert fd == pytest.approx(5 + 4 - 2 * math.sqrt(3), abs=1e-9)  # 5.535898384862
    assert fd == pytest.approx(5.535898384862, abs=1e-9)
    # diagonal: |dmu|^2 + sum (sqrt(a_i) - sqrt(b_i))^2 = 3 + (1 + 1 + 4) = 9
    assert vatt_eval.frechet_distance(np.zeros(3), np.diag([1.0, 4, 9]), np.ones(3), np.diag([4.0, 1, 1])) == \
        pytest.approx(9.0, abs=1e-12)
    mu, sigma = vatt_eval.gaussian_stats(b)
    assert vatt_eval.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-12)


def test_frechet_distance_agrees_with_eig_of_product():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((40, 6)), rng.standard_normal((30, 6)) @ rng.standard_normal((6, 6)) + 0.5
    (m1, s1), (m2, s2) = vatt_eval.gaussian_stats(x), vatt_eval.gaussian_stats(y)
    tr_covmean = np.sqrt(np.linalg.eigvals(s1 @ s2).real).sum()  # the non-symmetric route, as fadtk's eig path
    reference = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
    assert vatt_eval.frechet_distance(m1, s1, m2, s2) == pytest.approx(reference, abs=1e-8)
    assert vatt_eval.frechet_distance(m1, s1, m2, s2) == pytest.approx(vatt_eval.frechet_distance(m2, s2, m1, s1))


def test_kl_divergence_direction_and_values():
    p, q = np.array([9, 12, 4]) / 25, np.full(3, 1 / 3)
    assert vatt_eval.kl_divergence(np.log(p)[None], np.log(q)[None]) == pytest.approx(0.0852996013, abs=1e-9)
    assert vatt_eval.kl_divergence(np.log(q)[None], np.log(p)[None]) == pytest.approx(0.0974550068, abs=1e-9)
    # logits are only defined up to a constant per row, and the mean over rows is a plain mean
    two = vatt_eval.kl_divergence(np.stack([np.log(p) + 5, np.log(q)]), np.stack([np.log(q) - 2, np.log(q)]))
    assert two == pytest.approx(0.0852996013 / 2, abs=1e-9)
    gt, gen = torch.randn(5, 527, generator=torch.Generator().manual_seed(0)), torch.randn(5, 527)
    torch_kl = F.kl_div(gen.log_softmax(-1), gt.log_softmax(-1), log_target=True, reduction="sum").item() / 5
    assert vatt_eval.kl_divergence(gt, gen) == pytest.approx(torch_kl, rel=1e-5)
    assert vatt_eval.kl_divergence(gt, gt) == pytest.approx(0.0, abs=1e-12)


def test_cosine_and_align_acc():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert vatt_eval.mean_cosine(a, 5 * a) == pytest.approx(1.0)
    assert vatt_eval.mean_cosine(a, a[::-1]) == pytest.approx(0.0)
    assert vatt_eval.mean_cosine(a, np.array([[1.0, 1.0], [0.0, -1.0]])) == pytest.approx((math.sqrt(0.5) - 1) / 2)
    assert vatt_eval.align_acc([0.2, 0.5, 0.51, 0.9]) == 0.5


# -----------------------------------------------------------------------------
# audio: reading, resampling, VGGish


def write_wav(path: Path, x: np.ndarray, sr: int, float32: bool = False):
    """x: (T,) or (T, C) in [-1, 1]; 16-bit PCM through the wave module, or IEEE float32 written by hand."""
    x = x.reshape(len(x), -1)
    if not float32:
        with wave.open(str(path), "wb") as w:
            w.setnchannels(x.shape[1]), w.setsampwidth(2), w.setframerate(sr)
            w.writeframes(np.round(x * 32768).astype("<i2").tobytes())
        return
    data = x.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, x.shape[1], sr, sr * 4 * x.shape[1], 4 * x.shape[1], 32)
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE" + b"fmt "
                     + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)


def test_read_wav_pcm16_stereo_and_float32(tmp_path):
    x = np.random.default_rng(0).uniform(-0.9, 0.9, (1000, 2)).astype(np.float32)
    write_wav(tmp_path / "a.wav", x, 22050)
    y, sr = vatt_eval.read_wav(tmp_path / "a.wav")
    assert sr == 22050 and y.shape == (1000, 2) and np.abs(y - x).max() <= 0.5 / 32768
    write_wav(tmp_path / "b.wav", x[:, 0], 48000, float32=True)
    y, sr = vatt_eval.read_wav(tmp_path / "b.wav")
    assert sr == 48000 and np.array_equal(y[:, 0], x[:, 0])


@pytest.mark.parametrize("orig, new", [(16000, 32000), (16000, 48000), (48000, 16000), (44100, 16000)])
def test_resample_is_band_limited_interpolation(orig, new):
    t = torch.arange(orig, dtype=torch.float64) / orig  # 1 s
    y = vatt_eval.resample(torch.sin(2 * math.pi * 440 * t), orig, new)
    assert y.shape == (new,)
    expected = torch.sin(2 * math.pi * 440 * torch.arange(new, dtype=torch.float64) / new)
    assert (y - expected)[new // 10:-new // 10].abs().max() < 5e-3  # away from the zero-padded edges
    assert torch.equal(vatt_eval.resample(t, orig, orig), t)


def test_resample_matches_torchaudio_defaults():
    ta = pytest.importorskip("torchaudio.functional")
    x = torch.randn(12345, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for orig, new in [(16000, 32000), (48000, 16000), (44100, 16000)]:  # float64: both build the same kernel
        assert torch.allclose(vatt_eval.resample(x, orig, new), ta.resample(x, orig, new), rtol=0, atol=1e-12)


def test_vggish_parameter_layout_matches_torchvggish():
    with torch.device("meta"):
        sd = vatt_eval.VGGish().state_dict()
    convs = {f"features.{i}.{p}" for i in (0, 3, 6, 8, 11, 13) for p in ("weight", "bias")}
    fcs = {f"embeddings.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    assert set(sd) == convs | fcs
    assert sd["embeddings.0.weight"].shape == (4096, 512 * 6 * 4) and sd["embeddings.4.weight"].shape == (128, 4096)
    assert isinstance(vatt_eval.VGGish(widths=(1,) * 6, fc=(2, 2, 2)).embeddings[-1], nn.Linear)  # no final ReLU


def test_vggish_frontend():
    mel = vatt_eval.vggish_mel_matrix()
    assert mel.shape == (257, 64) and mel[0].abs().sum() == 0 and (mel.sum(0) > 0).all()
    ex = vatt_eval.vggish_examples(torch.zeros(32000))  # 2 s -> 198 frames of 10 ms -> 2 examples of 96 frames
    assert ex.shape == (2, 1, 96, 64)
    assert torch.allclose(ex, torch.full_like(ex, math.log(0.01)))  # silence: log(0 + 0.01)


# -----------------------------------------------------------------------------
# audio pipeline end to end with tiny random networks


def tiny_models(seed=0):
    """Random stand-ins with the interfaces of VGGish (frames), PaSST (527 logits) and CLAP (audio + text)."""
    torch.manual_seed(seed)
    vggish = vatt_eval.VGGish(widths=(2, 2, 3, 3, 4, 4), fc=(8, 8, 6)).eval()
    tagger = nn.Sequential(nn.Conv1d(1, 4, 640, stride=320), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                           nn.Linear(4, 527))
    clap_audio = nn.Sequential(nn.Conv1d(1, 4, 960, stride=480), nn.Tanh(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                               nn.Linear(4, 5))
    clap_text = nn.EmbeddingBag(128, 5)
    text = lambda texts: torch.stack([clap_text(torch.tensor([[ord(c) % 128 for c in t]]))[0] for t in texts])
    return {"vggish": vatt_eval.AudioModel(16000, lambda w: vggish(vatt_eval.vggish_examples(w))),
            "passt": vatt_eval.AudioModel(32000, lambda w: tagger(vatt_eval.fit_length(w, 64000)[None, None])),
            "clap": vatt_eval.AudioModel(48000, lambda w: clap_audio(w[None, None]), text),
            "align": "no classifier in this test"}


def synthetic_clips(folder: Path, names, seed: int, sr=16000):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for k, name in enumerate(names):  # a decaying tone plus noise, different per clip, 2 s each
        t = np.arange(2 * sr) / sr
        x = 0.4 * np.sin(2 * np.pi * (200 + 150 * k) * t) * np.exp(-t * (k + 1)) + 0.05 * rng.standard_normal(len(t))
        write_wav(folder / f"{name}.wav", x, sr)


def test_audio_pipeline_pairs_by_name_and_is_zero_on_copies(tmp_path):
    synthetic_clips(tmp_path / "ref", ["c", "a", "b", "0_only_ref"], seed=0)
    (tmp_path / "gen").mkdir()
    for name in ["b", "a", "c"]:  # same contents; "0_only_ref" sorts first, so pairing by index would mix them up
        shutil.copy(tmp_path / "ref" / f"{name}.wav", tmp_path / "gen" / f"{name}.wav")
    captions = {"a": "a dog barks", "b": "rain falls", "c": "a bell rings"}
    res = vatt_eval.evaluate_audio(tmp_path / "gen", tmp_path / "ref", tiny_models(), captions)
    m = res["metrics"]
    assert res["n_pairs"] == 3 and res["only_in_reference"] == ["0_only_ref"] and res["only_in_generated"] == []
    assert m["kld"] == pytest.approx(0.0, abs=1e-12)
    assert m["fad"] == pytest.approx(0.0, abs=1e-6)
    assert m["clap_gt_audio"] == pytest.approx(1.0, abs=1e-9)
    assert m["align_acc"] == {"skipped": "no classifier in this test"}
    # the text CLAP equals the formula applied by hand to the same tiny networks
    models = tiny_models()
    with torch.no_grad():
        audio = np.concatenate([vatt_eval.embed_clip(models["clap"], vatt_eval.load_clip(tmp_path / "gen" / f"{i}.wav"))
                                for i in "abc"])
        text = models["clap"].text([captions[i] for i in "abc"]).numpy()
    assert m["clap"] == pytest.approx(vatt_eval.mean_cosine(audio, text), abs=1e-9)


def test_audio_pipeline_on_different_audio(tmp_path):
    synthetic_clips(tmp_path / "ref", ["a", "b", "c"], seed=0)
    synthetic_clips(tmp_path / "gen", ["a", "b", "c"], seed=1)  # same tones, other noise
    (tmp_path / "gen" / "c.wav").unlink()
    write_wav(tmp_path / "gen" / "c.wav", np.random.default_rng(2).uniform(-0.5, 0.5, 96000), 48000, float32=True)
    models = tiny_models()
    m = vatt_eval.evaluate_audio(tmp_path / "gen", tmp_path / "ref", models)["metrics"]
    assert m["kld"] > 0 and m["fad"] > 0 and m["clap_gt_audio"] < 1
    assert "--captions" in m["clap"]["skipped"]
    rows = lambda side: [vatt_eval.embed_clip(models["passt"], vatt_eval.load_clip(tmp_path / side / f"{i}.wav"))
                         for i in "abc"]
    assert m["kld"] == pytest.approx(vatt_eval.kl_divergence(np.concatenate(rows("ref")),
                                                             np.concatenate(rows("gen"))), abs=1e-12)


def test_audio_cli_with_tiny_vggish_checkpoint(tmp_path, capsys):
    synthetic_clips(tmp_path / "ref", ["a", "b", "c"], seed=0)
    synthetic_clips(tmp_path / "gen", ["a", "b", "c"], seed=1)
    (tmp_path / "w" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)  # a tiny random VGGish saved under the released file name: the real loader reads it
    torch.save(vatt_eval.VGGish(widths=(2, 2, 3, 3, 4, 4), fc=(8, 8, 6)).state_dict(),
               tmp_path / "w" / "checkpoints" / "vggish-10086976.pth")
    vatt_eval.main(["audio", "--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"),
                    "--weights_dir", str(tmp_path / "w"), "--name", "tiny"])
    out = json.loads((tmp_path / "gen.metrics.json").read_text())
    m = out["metrics"]
    assert isinstance(m["fad"], float) and m["fad"] > 0
    assert "passt-s-f128-p16-s10-ap.476-swa.pt" in m["kld"]["skipped"]
    assert "630k-audioset-best.pt" in m["clap"]["skipped"] and "630k-audioset-best.pt" in m["clap_gt_audio"]["skipped"]
    assert "eval_classifier.ckpt" in m["align_acc"]["skipped"]
    assert "torchaudio" in out["settings"]["resampler"] and out["settings"]["models"]["vggish"]["sample_rate"] == 16000
    printed = capsys.readouterr().out
    assert "| Methods | KLD ↓ | FAD ↓ | Align Acc ↑ | CLAP Score ↑ | CLAP vs GT audio ↑ |" in printed
    assert f"| tiny | – | {m['fad']:.2f} | – | – | – |" in printed
    assert f"scored 3 pairs matched by name; left out: 0 only in {tmp_path / 'gen'}, 0 only in" in printed


def test_loaders_explain_missing_packages(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for name in ["passt-s-f128-p16-s10-ap.476-swa.pt", "630k-audioset-best.pt"]:
        (tmp_path / "checkpoints" / name).write_bytes(b"not a checkpoint")
    for package, loader in [("hear21passt", vatt_eval.load_passt), ("laion_clap", vatt_eval.load_clap)]:
        try:
            __import__(package)
        except ImportError:
            assert f"pip install {package}" in vatt_eval.try_load(loader, tmp_path)
    (tmp_path / "diff_foley_ckpt").mkdir()
    (tmp_path / "diff_foley_ckpt" / "eval_classifier.ckpt").write_bytes(b"")
    assert "align_acc.py" in vatt_eval.try_load(vatt_eval.load_align_classifier, tmp_path)
