"""
eval.py: the metrics of the VATT paper (Liu, Su, Shlizerman, NeurIPS 2024), computed the way the field does.

  Table 1/2 (audio):   KLD (PaSST), FAD (VGGish), Align Acc (Diff-Foley), CLAP score
  Table 3 (captions):  BERTScore F1, BLEU-4, ROUGE-L, CIDEr (coco-caption definitions), CLAP score

Copy-paste:

  # captions: JSON files, either {"id": "caption", ...} or [{"video_path"|"id": ..., "caption"|"output": ...}, ...]
  python eval.py captions --generated out/captions.json --reference data/vggsound_test_captions.json
  python eval.py captions --generated out/captions.json --reference refs.json --audio data/test_wavs  # + CLAP

  # audio: folders of .wav files, paired by file name (stem)
  python eval.py audio --generated out/wavs --reference data/test_wavs
  python eval.py audio --generated out/wavs --reference data/test_wavs --captions refs.json  # + CLAP (text)

Each command prints a table laid out like the paper's and writes a JSON (--out, default <generated>.metrics.json)
holding every number plus every setting that changes a number (tokenizer, resampler, padding, window hop, epsilons).

Nothing here downloads. The model-based metrics look for local files under --weights_dir, whose default is the torch
hub cache (~/.cache/torch/hub), so weights that any of the upstream tools once downloaded are found as they are:

  WEIGHTS/checkpoints/vggish-10086976.pth                  FAD    GitHub release harritaylor/torchvggish v0.1
  WEIGHTS/checkpoints/passt-s-f128-p16-s10-ap.476-swa.pt   KLD    GitHub release kkoutini/PaSST v0.0.1-audioset
                                                                  (+ pip install hear21passt)
  WEIGHTS/checkpoints/630k-audioset-best.pt                CLAP   Hugging Face lukewys/laion_clap
                                                                  (+ pip install laion_clap; roberta-base in HF cache)
  WEIGHTS/roberta-large/                                   BERTScore  save_pretrained() folder of HF roberta-large
  WEIGHTS/diff_foley_ckpt/eval_classifier.ckpt             Align Acc  Hugging Face SimianLuo/Diff-Foley (see below)

A metric whose weights or package are missing is reported as {"skipped": "<reason>"} and the command still exits 0.

References
  coco-caption / pycocoevalcap (Chen et al. 2015): bleu/bleu_scorer.py, rouge/rouge.py, cider/cider_scorer.py,
    tokenizer/ptbtokenizer.py; VATT's vatt/v2cap/eval_gen_text_nlg_metrics.py is a copy of it
  BERTScore (Zhang et al. 2020), Tiiiger/bert_score defaults for lang="en"
  FAD (Kilgour et al. 2019) on VGGish (Hershey et al. 2017); google-research frechet_audio_distance
  KLD with PaSST (Koutini et al. 2022) as in SpecVQGAN / Diff-Foley / FoleyGen; hkchengrex/av-benchmark
  CLAP (Wu et al. 2023, laion_clap); VATT's vatt/v2cap/eval_gen_{audio,text}_clap_score.py
  Align Acc: Diff-Foley (Luo et al. 2023) evaluation/align_acc.py
"""

import argparse
import json
import math
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import save_json

# -----------------------------------------------------------------------------
# captions: tokenisation (coco-caption's PTB tokenizer, re-done in Python)

# coco-caption drops these tokens after the PTB tokenizer (pycocoevalcap tokenizer/ptbtokenizer.py). Its list also
# holds -LRB- -RRB- -LCB- -RCB-, but in upper case, which never matches the lower-cased output, so brackets survive
# as -lrb- etc. We reproduce that quirk. '"' is here because Java turns it into `` or '' first.
COCO_PUNCTUATION = {"''", "'", "``", "`", '"', ".", "?", "!", ",", ":", "-", "--", "...", ";"}
PTB_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
PTB_TOKEN = re.compile(r"""
      n't | '(?:s|re|ll|ve|d|m)\b               # clitics split off by the substitution below: do n't, it 's
    | \d+(?:[.,:]\d+)+                           # 3.5, 1,000 and 10:30 stay one token
    | (?:[^\W\d_]\.){2,}                         # dotted abbreviations: u.s., p.m., e.g.
    | (?:mr|mrs|ms|dr|st|vs|etc|jr|sr|prof)\.    # a few abbreviations PTB knows by name keep their period
    | \w+(?:[-'&/]\w+)*                          # words; hip-hop, o'clock, at&t, and/or stay whole
    | \.\.\. | -- | [!?]{2,}                     # PTB keeps these runs whole ("!!!" is not in coco's list, so it stays)
    | \S                                         # any other symbol is a token of its own ($ % & * ...)
""", re.X)


def tokenize(caption: str) -> list[str]:
    """Python stand-in for coco-caption's tokenisation: the Stanford PTBTokenizer (Java, CoreNLP 3.4.1, options
    -preserveLines -lowerCase) followed by the removal of coco's punctuation list.

    Checked against that jar on ~30 probe sentences; it gives the same tokens (clitics "do n't" / "it 's" /
    "ca n't", "can not", "gon na", numbers "3.5" "1,000" "10:30", hyphenated words, "u.s." "p.m." "e.g." "mr.",
    "$ 3.88", "50 %", "and/or", "at&t", brackets as -lrb- -rrb- -lsb- -rsb- -lcb- -rcb-, curly quotes, and "!!!" or
    "?!" kept as tokens) except for these known differences:
      - PTB knows a longer list of abbreviations that keep their period (inc. co. corp. jan. gov. sen. lt. ft. ...);
        here only the dotted ones and those listed above do, so "inc." becomes "inc";
      - "rock'n'roll" gives "rock 'n' roll" in Java and one token here;
      - the jar leaves the very first word of its whole input upper-case when a clitic follows ("He's" -> "He 's");
        coco runs all captions through one call, so this touches the first caption of a corpus only;
      - any other rule of the JFlex lexer that the probes did not hit (unicode symbols, URLs, emoticons, ...).
    The jar applies no Americanisation ("colour" stays) and no escaping of "/" or "*", so neither is done here.
    """
    s = caption.lower().replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    s = re.sub(r"\bcannot\b", "can not", s)
    s = re.sub(r"\b(gon|wan|got|lem|gim)(na|ta|me)\b", r"\1 \2", s)  # gonna -> gon na, gotta -> got ta, ...
    s = re.sub(r"(\w)(n't|'(?:s|re|ll|ve|d|m))\b", r"\1 \2", s)   # don't -> do n't, it's -> it 's
    tokens = (PTB_BRACKETS.get(t, t) for t in PTB_TOKEN.findall(s))
    return [t for t in tokens if t not in COCO_PUNCTUATION]


# -----------------------------------------------------------------------------
# captions: BLEU-4, ROUGE-L, CIDEr-D exactly as coco-caption computes them


def ngram_counts(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu4(cands: list[list[str]], refs: list[list[list[str]]]) -> float:
    """Corpus BLEU-4 (Papineni et al. 2002) as coco's bleu_scorer.py with option 'closest': clipped n-gram matches
    and candidate n-gram counts are summed over the corpus before taking the precisions."""
    tiny, small = 1e-15, 1e-9  # coco's smoothing: a corpus with no 4-gram match gets a tiny positive score, not 0
    correct, guess, c_len, r_len = [0] * 4, [0] * 4, 0, 0
    for c, rs in zip(cands, refs):
        c_len += len(c)
        r_len += min((abs(len(r) - len(c)), len(r)) for r in rs)[1]  # closest reference length, ties -> shorter
        for n in range(1, 5):
            max_ref = Counter()
            for r in rs:
                max_ref |= ngram_counts(r, n)  # | is the element-wise max: a match is clipped by its best reference
            correct[n - 1] += sum(min(k, max_ref[g]) for g, k in ngram_counts(c, n).items())
            guess[n - 1] += max(0, len(c) - n + 1)
    log_precision = sum(math.log((correct[i] + tiny) / (guess[i] + small)) for i in range(4)) / 4
    brevity = min(0.0, 1 - (r_len + small) / (c_len + tiny))  # log of the brevity penalty exp(1 - r/c) when c < r
    return math.exp(log_precision + brevity)


def lcs_length(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)  # one row of the classic dynamic programme
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b):
            prev_diag, row[j + 1] = row[j + 1], prev_diag + 1 if x == y else max(row[j + 1], row[j])
    return row[-1]


def rouge_l(cands: list[list[str]], refs: list[list[list[str]]], beta: float = 1.2) -> float:
    """ROUGE-L (Lin 2004) as coco's rouge.py: per sentence, precision and recall each maximised over the references
    separately, F-measure with beta = 1.2 (recall weighted more), then the mean over sentences."""
    scores = []
    for c, rs in zip(cands, refs):
        lcs = [lcs_length(r, c) for r in rs]
        p = max(k / max(len(c), 1) for k in lcs)  # max(.., 1) only guards an empty caption, which coco would crash on
        r = max(k / max(len(ref), 1) for k, ref in zip(lcs, rs))
        scores.append((1 + beta ** 2) * p * r / (r + beta ** 2 * p) if p > 0 and r > 0 else 0.0)
    return float(np.mean(scores))


def cider_d(cands: list[list[str]], refs: list[list[list[str]]], sigma: float = 6.0) -> float:
    """CIDEr-D (Vedantam et al. 2015) as coco's cider_scorer.py (coco calls it 'Cider'). tf-idf vectors of 1..4-grams,
    idf = log(#items) - log(#items whose references contain the n-gram), so the idf comes from the evaluated corpus
    itself: the score of a caption depends on which other captions are evaluated with it."""
    tf = lambda toks: sum((ngram_counts(toks, n) for n in range(1, 5)), Counter())  # all 1..4-grams of a sentence
    c_tf, r_tf = [tf(c) for c in cands], [[tf(r) for r in rs] for rs in refs]
    df = Counter(g for rts in r_tf for g in set().union(*rts))
    log_items = math.log(len(cands))

    def vec(t: Counter):  # per n: {ngram: tf * idf}, its L2 norm, and the "length" used by the length penalty
        v = [{} for _ in range(4)]
        for g, k in t.items():
            v[len(g) - 1][g] = k * (log_items - math.log(max(1.0, df[g])))
        norms = [math.sqrt(sum(w * w for w in vn.values())) for vn in v]
        return v, norms, sum(k for g, k in t.items() if len(g) == 2)  # coco quirk: length counted from bigrams

    scores = []
    for ct, rts in zip(c_tf, r_tf):
        vc, nc, lc = vec(ct)
        total = np.zeros(4)
        for rt in rts:
            vr, nr, lr = vec(rt)
            for n in range(4):
                # the "-D" part: the candidate's weight is clipped by the reference's, min(c, r) * r
                dot = sum(min(w, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, w in vc[n].items())
                cos = dot / (nc[n] * nr[n]) if nc[n] and nr[n] else dot
                total[n] += cos * math.exp(-((lc - lr) ** 2) / (2 * sigma ** 2))  # Gaussian length penalty
        scores.append(total.mean() / len(rts) * 10.0)  # mean over n, mean over references, x10 (coco's scale)
    return float(np.mean(scores))


def caption_metrics(candidates: list[str], references: list[list[str]]) -> dict:
    """BLEU-4, ROUGE-L and CIDEr-D of raw caption strings, one list of references per candidate."""
    assert len(candidates) == len(references) > 0 and all(references), "one non-empty reference list per candidate"
    cands = [tokenize(c) for c in candidates]
    refs = [[tokenize(r) for r in rs] for rs in references]
    return {"bleu4": bleu4(cands, refs), "rouge_l": rouge_l(cands, refs), "cider": cider_d(cands, refs)}


CAPTION_SETTINGS = {
    "tokenizer": "eval.tokenize: Python re-implementation of coco-caption's PTBTokenizer (CoreNLP 3.4.1, "
                 "-lowerCase) + coco punctuation removal; differences listed in its docstring",
    "bleu4": "coco-caption corpus BLEU-4, reference length 'closest', smoothing 1e-15 / 1e-9",
    "rouge_l": "coco-caption ROUGE-L, beta 1.2, max over references, mean over captions",
    "cider": "coco-caption CIDEr-D, n = 1..4, sigma 6, clipped tf-idf, x10, idf over the evaluated captions",
    "bertscore": "roberta-large, hidden layer 17, no idf, no baseline rescaling, max over references "
                 "(bert_score defaults for lang='en')",
}


# -----------------------------------------------------------------------------
# captions: BERTScore's greedy matching


def bertscore_greedy(cand: np.ndarray, cand_w: np.ndarray, ref: np.ndarray, ref_w: np.ndarray):
    """Greedy cosine matching of contextual token embeddings, cand (Lc, D) and ref (Lr, D), as bert_score's
    greedy_cos_idf. Every token, special ones included, can be matched; the weights (0 for <s> and </s>, 1 otherwise
    when idf is off) only decide which tokens are averaged. Returns (P, R, F)."""
    if cand_w.sum() == 0 or ref_w.sum() == 0:
        return 0.0, 0.0, 0.0  # bert_score's convention for an empty sentence
    cand = cand / np.linalg.norm(cand, axis=1, keepdims=True)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    sim = cand @ ref.T  # (Lc, Lr)
    p = float(sim.max(1) @ cand_w / cand_w.sum())  # each candidate token takes its best reference token
    r = float(sim.max(0) @ ref_w / ref_w.sum())  # and vice versa
    return p, r, 2 * p * r / (p + r) if p + r else 0.0


def bertscore(candidates: list[str], references: list[list[str]], embed: Callable, batch_size: int = 64) -> dict:
    """Mean BERTScore P/R/F1. embed(list of sentences) -> list of ((L, D) embeddings, (L,) weights). With several
    references per candidate, P, R and F are each maximised over them separately, as bert_score does."""
    sentences = sorted(set(candidates) | {r for rs in references for r in rs})
    table = {}
    for i in range(0, len(sentences), batch_size):
        table.update(zip(sentences[i:i + batch_size], embed(sentences[i:i + batch_size])))
    best = np.array([np.max([bertscore_greedy(*table[c], *table[r]) for r in rs], axis=0)
                     for c, rs in zip(candidates, references)])  # (N, 3)
    return dict(zip(("precision", "recall", "f1"), best.mean(0).tolist()))


# -----------------------------------------------------------------------------
# audio: pure metric functions over embeddings and logits


def gaussian_stats(x: np.ndarray):
    """Mean and unbiased (n-1) covariance of embeddings x (N, D), as every FAD implementation computes them."""
    x = np.asarray(x, dtype=np.float64)
    return x.mean(0), np.cov(x, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982):
        |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)).
    sigma1 sigma2 is similar to the symmetric PSD matrix S = sigma1^(1/2) sigma2 sigma1^(1/2), so the trace of its
    square root is the sum of sqrt(eigenvalues of S). Two symmetric eigendecompositions replace scipy's sqrtm, whose
    `disp` argument (used by every FAD copy) was removed in SciPy 1.18, and need no eps fix-ups."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # sigma1^(1/2)
    s = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((s + s.T) / 2), 0, None)).sum()  # tiny negatives are round-off
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)  # subtract the max so exp cannot overflow
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl_divergence(gt_logits, gen_logits) -> float:
    """KLD as in SpecVQGAN / Diff-Foley / FoleyGen / av-benchmark: KL(ground truth || generated) in nats between the
    softmax class distributions of each (GT, generated) pair, summed over classes, averaged over pairs.
    Computed in log space with no epsilon (av-benchmark); audioldm_eval / audiocraft add eps = 1e-6 to the generated
    probabilities, which moves the value by a few 1e-6."""
    lp = log_softmax(np.asarray(gt_logits, dtype=np.float64))  # (N, C)
    lq = log_softmax(np.asarray(gen_logits, dtype=np.float64))  # (N, C)
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


def mean_cosine(a, b) -> float:
    """Mean over rows of cos(a_i, b_i): the CLAP score (VATT reports the raw mean, not x100)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float((a * b).sum(-1).mean())


def align_acc(probs) -> float:
    """Diff-Foley's Align Acc: every (video, generated audio) pair is labelled 'aligned' and the classifier's
    p(aligned) is rounded; torch.round sends 0.5 to 0, so a pair counts when p > 0.5."""
    return float(np.mean(np.asarray(probs) > 0.5))


# -----------------------------------------------------------------------------
# audio: reading and resampling


# VATT writes 16 kHz audio. Every clip, generated and reference, is brought to 16 kHz first, so both sides have the
# same bandwidth before each embedding network resamples to its own rate.
COMMON_SR = 16000
RESAMPLER = ("eval.resample: Hann-windowed sinc, 6 zero crossings, rolloff 0.99 "
             "(the defaults of torchaudio.functional.resample, used by av-benchmark)")


def read_wav(path) -> tuple[np.ndarray, int]:
    """A .wav file as (T, C) float32 in [-1, 1] and its sample rate. Reads PCM 16/32-bit and IEEE float 32/64-bit
    (Python's `wave` module refuses float files, hence this small RIFF reader)."""
    data = Path(path).read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", f"{path} is not a RIFF/WAVE file"
    pos, fmt, pcm = 12, None, None
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if chunk == b"fmt ":
            fmt = body
        elif chunk == b"data":
            pcm = body
        pos += 8 + size + (size & 1)  # chunks are padded to an even length
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: the real format tag opens the sub-format GUID
        tag = struct.unpack("<H", fmt[24:26])[0]
    dtypes = {(1, 16): ("<i2", 32768.0), (1, 32): ("<i4", 2147483648.0), (3, 32): ("<f4", 1.0), (3, 64): ("<f8", 1.0)}
    assert (tag, bits) in dtypes, f"{path}: unsupported wav format (tag {tag}, {bits} bit)"
    dtype, scale = dtypes[(tag, bits)]
    x = np.frombuffer(pcm[:len(pcm) // (bits // 8) * (bits // 8)], dtype=dtype)
    return (x.reshape(-1, channels) / scale).astype(np.float32), rate


def resample(x: torch.Tensor, orig_sr: int, new_sr: int, zero_crossings: int = 6, rolloff: float = 0.99):
    """Band-limited resampling of x (T,) -> (ceil(T * new_sr / orig_sr),), polyphase with a Hann-windowed sinc
    low-pass at rolloff * min(orig_sr, new_sr) / 2. Same kernel as torchaudio.functional.resample's defaults."""
    if orig_sr == new_sr:
        return x
    g = math.gcd(orig_sr, new_sr)
    o, n = orig_sr // g, new_sr // g  # every n outputs consume o inputs
    base = rolloff * min(o, n)  # cutoff, in units of the reduced rates
    width = math.ceil(zero_crossings * o / base)  # kernel half-width in input samples
    # output phase p sits at input position p * o / n inside each block of o inputs
    taps, phases = torch.arange(-width, width + o, dtype=torch.float64), torch.arange(n, dtype=torch.float64)
    t = taps[None] - phases[:, None] * o / n  # (n, 2 * width + o) tap positions relative to each output sample
    u = (t * base / o).clamp(-zero_crossings, zero_crossings)  # in units of the low-pass's zero crossings
    window = torch.cos(u * math.pi / (2 * zero_crossings)) ** 2
    kernel = (base / o) * torch.sinc(u) * window  # torch.sinc(u) = sin(pi u) / (pi u)
    xp = F.pad(x[None, None], (width, width + o))  # (1, 1, T + 2 * width + o)
    y = F.conv1d(xp, kernel.to(x.dtype)[:, None], stride=o)  # (1, n, T // o + 1): one row per phase
    return y[0].T.reshape(-1)[:math.ceil(n * x.shape[-1] / o)]  # interleave the phases


def load_clip(path) -> torch.Tensor:
    """A wav file as a mono (T,) float32 tensor at COMMON_SR with its DC offset removed (as av-benchmark does)."""
    x, rate = read_wav(path)
    x = resample(torch.from_numpy(x).mean(1), rate, COMMON_SR)
    return x - x.mean()


def fit_length(x: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad or truncate (T,) to exactly n samples."""
    return F.pad(x[:n], (0, max(0, n - x.shape[-1])))


def wav_files(folder) -> dict[str, Path]:
    """{stem: path} of the .wav files in a folder. Pairing goes by name; VATT's CLAP script pairs two unsorted
    glob() lists by index, which can pair the wrong files."""
    return {p.stem: p for p in sorted(Path(folder).glob("*.wav"))}


# -----------------------------------------------------------------------------
# audio: embedding networks (all optional, local weights only)


class Skipped(Exception):
    """A metric that cannot run on this machine; the message says which file or package is missing and where."""


@dataclass
class AudioModel:
    """An embedding network as the evaluation sees it; tests inject tiny random ones."""
    sample_rate: int  # Hz the network expects
    audio: Callable  # (T,) float32 waveform at sample_rate -> (K, D) rows (K = 1 per clip, or one per frame)
    text: Optional[Callable] = None  # list[str] -> (N, D): CLAP's text tower
    settings: dict = field(default_factory=dict)  # everything that changes its numbers, copied into the JSON


def weight_file(weights_dir, name: str, source: str) -> Path:
    path = Path(weights_dir) / "checkpoints" / name
    if not path.is_file():
        raise Skipped(f"missing weights: put {name} ({source}) at {path}")
    return path


class VGGish(nn.Module):
    """VGGish (Hershey et al. 2017) with harritaylor/torchvggish's parameter names, so vggish-10086976.pth loads
    as is. The last ReLU of that port is left out: FAD uses TF's 'vggish/embedding' tensor, which is pre-activation
    (fc2 has activation_fn=None in vggish_slim.py), without PCA or 8-bit quantisation."""

    def __init__(self, widths=(64, 128, 256, 256, 512, 512), fc=(4096, 4096, 128)):
        super().__init__()
        layers, c_in = [], 1
        for w, pool in zip(widths, (True, True, False, True, False, True)):
            layers += [nn.Conv2d(c_in, w, 3, padding=1), nn.ReLU()] + ([nn.MaxPool2d(2, 2)] if pool else [])
            c_in = w
        self.features = nn.Sequential(*layers)
        dims = (c_in * 6 * 4,) + tuple(fc)  # four 2x2 poolings take a 96 x 64 example down to 6 x 4
        fcs = [m for a, b in zip(dims[:-1], dims[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
        self.embeddings = nn.Sequential(*fcs[:-1])

    @classmethod
    def from_state_dict(cls, sd: dict) -> "VGGish":
        """Read the layer widths off the checkpoint, so the released file and a tiny test file use one loader."""
        model = cls(widths=[sd[f"features.{i}.weight"].shape[0] for i in (0, 3, 6, 8, 11, 13)],
                    fc=[sd[f"embeddings.{i}.weight"].shape[0] for i in (0, 2, 4)])
        model.load_state_dict(sd)
        return model

    def forward(self, x):  # x: (K, 1, 96, 64) log-mel examples
        x = self.features(x)  # (K, C, 6, 4)
        x = x.permute(0, 2, 3, 1).flatten(1)  # (K, 6 * 4 * C), channels last: TF's flattening order
        return self.embeddings(x)  # (K, 128)


def vggish_mel_matrix(n_mels=64, n_bins=257, sr=16000, lo=125.0, hi=7500.0) -> torch.Tensor:
    """(257, 64) HTK-mel triangles from 125 to 7500 Hz, as VGGish's mel_features.py builds them."""
    mel = lambda hz: 1127.0 * np.log(1.0 + hz / 700.0)
    bins = mel(np.linspace(0.0, sr / 2, n_bins))[:, None]  # (257, 1)
    edges = np.linspace(mel(lo), mel(hi), n_mels + 2)  # (66,)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    w = np.maximum(0.0, np.minimum((bins - lower) / (center - lower), (upper - bins) / (upper - center)))
    w[0] = 0.0  # the DC bin gets no weight
    return torch.from_numpy(w)


def vggish_examples(wav: torch.Tensor) -> torch.Tensor:
    """(T,) at 16 kHz -> (K, 1, 96, 64): log(mel + 0.01) of 25 ms periodic-Hann windows every 10 ms (512-point FFT),
    cut into non-overlapping 0.96 s examples, as torchvggish's waveform_to_examples."""
    frames = wav.double().unfold(0, 400, 160)  # (F, 400)
    window = 0.5 - 0.5 * torch.cos(2 * math.pi * torch.arange(400, dtype=torch.float64) / 400)  # periodic Hann
    spec = torch.fft.rfft(frames * window, n=512).abs()  # (F, 257) magnitude
    logmel = torch.log(spec @ vggish_mel_matrix() + 0.01)  # (F, 64)
    return logmel.unfold(0, 96, 96).transpose(1, 2)[:, None].float()  # (K, 1, 96, 64)


def load_vggish(weights_dir) -> AudioModel:
    path = weight_file(weights_dir, "vggish-10086976.pth", "GitHub release harritaylor/torchvggish v0.1")
    model = VGGish.from_state_dict(torch.load(path, map_location="cpu", weights_only=True)).eval()
    return AudioModel(16000, lambda wav: model(vggish_examples(wav)), settings={
        "checkpoint": path.name, "sample_rate": 16000, "log_mel": "64 HTK mels 125-7500 Hz, 25 ms Hann, 10 ms hop, "
        "512 FFT, log(mel + 0.01)", "frames": "non-overlapping 0.96 s examples of the whole clip, pooled over clips "
        "(torch ports; the TF reference hops 0.5 s)", "embedding": "pre-activation fc (no final ReLU, no PCA)"})


def load_passt(weights_dir) -> AudioModel:
    path = weight_file(weights_dir, "passt-s-f128-p16-s10-ap.476-swa.pt",
                       "GitHub release kkoutini/PaSST v0.0.1-audioset")
    try:
        from hear21passt.base import get_basic_model
    except ImportError as e:
        raise Skipped(f"pip install hear21passt (it also needs torchaudio and timm): {e}")
    # hear21passt fetches its checkpoint through the torch hub cache, <hub dir>/checkpoints/<file name>. Pointing the
    # hub dir at weights_dir turns that fetch into a cache hit, so nothing is downloaded.
    hub = torch.hub.get_dir()
    torch.hub.set_dir(str(weights_dir))
    try:
        model = get_basic_model(mode="logits").eval()
    finally:
        torch.hub.set_dir(hub)
    return AudioModel(32000, lambda wav: model(fit_length(wav, 320000)[None]), settings={  # (1, 527) logits
        "checkpoint": path.name, "sample_rate": 32000, "clip": "zero-padded / truncated to 10 s (av-benchmark; "
        "audiocraft instead chunks into 10 s pieces)", "output": "AudioSet-527 logits, softmax in the KL"})


def load_clap(weights_dir) -> AudioModel:
    path = weight_file(weights_dir, "630k-audioset-best.pt", "Hugging Face lukewys/laion_clap")
    try:
        import laion_clap
    except ImportError as e:
        raise Skipped(f"pip install laion_clap: {e}")
    try:
        model = laion_clap.CLAP_Module(enable_fusion=False, amodel="HTSAT-tiny")  # VATT's default load_ckpt() model
        model.load_ckpt(ckpt=str(path))
    except Exception as e:  # CLAP_Module also loads roberta-base from the HF hub (LAION-AI/CLAP issue #108)
        raise Skipped(f"laion_clap could not build its model offline; it needs roberta-base in the Hugging Face "
                      f"cache ({type(e).__name__}: {e})")

    def audio(wav):  # (T,) at 48 kHz -> (1, 512) unit-norm embedding
        x = wav[:480000].numpy()  # the first 10 s; laion_clap itself repeat-pads shorter clips
        x = (np.clip(x, -1, 1) * 32767).astype(np.int16) / 32767.0  # the int16 round trip of its file loader
        return model.get_audio_embedding_from_data(x=x[None].astype(np.float32), use_tensor=False)

    def text(texts):  # list[str] -> (N, 512) unit-norm embeddings
        # laion_clap's tokenizer squeezes dim 0, which breaks a batch of one text: add one text and drop its row
        return model.get_text_embedding(texts + texts[:1], use_tensor=False)[:len(texts)]

    return AudioModel(48000, audio, text, settings={
        "checkpoint": path.name, "sample_rate": 48000, "clip": "first 10 s, int16 round trip, shorter clips "
        "repeat-padded by laion_clap (its file loader crops longer clips at random)", "score": "raw mean cosine"})


def load_align_classifier(weights_dir):
    """Align Acc needs Diff-Foley's alignment classifier: eval_classifier.ckpt from the Hugging Face repo
    SimianLuo/Diff-Foley (folder diff_foley_ckpt), plus Diff-Foley's model code (luosiallen/Diff-Foley, not on PyPI)
    and CAVP features of the videos. This offline re-implementation only has the final formula, `align_acc`, so this
    always raises Skipped, saying what is missing."""
    path = Path(weights_dir) / "diff_foley_ckpt" / "eval_classifier.ckpt"
    if not path.is_file():
        raise Skipped("missing weights: put eval_classifier.ckpt (Hugging Face SimianLuo/Diff-Foley, "
                      f"diff_foley_ckpt/) at {path}")
    raise Skipped(f"found {path}, but the classifier also needs Diff-Foley's code and CAVP video features, which "
                  "`eval.py audio` does not take: run Diff-Foley's evaluation/align_acc.py on the generated audio")


def load_bertscore(weights_dir, layer: int = 17) -> Callable:
    """An embed() for `bertscore`: hidden layer 17 of a local roberta-large (bert_score's choice for English)."""
    path = Path(weights_dir) / "roberta-large"
    if not (path / "config.json").is_file():
        raise Skipped(f"missing weights: put a save_pretrained() folder of Hugging Face roberta-large at {path}")
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    special = torch.tensor([tok.cls_token_id, tok.sep_token_id])

    def embed(sentences):
        # bert_score strips each sentence and encodes it with RoBERTa's add_prefix_space; the leading " " does that
        enc = tok([" " + s.strip() for s in sentences], padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc, output_hidden_states=True).hidden_states[layer]  # (B, L, D); [0] is the embedding layer
        keep = enc["attention_mask"].bool()
        return [(e[k].double().numpy(), (~torch.isin(ids[k], special)).double().numpy())
                for e, ids, k in zip(h, enc["input_ids"], keep)]
    return embed


# -----------------------------------------------------------------------------
# evaluation drivers


def try_load(loader: Callable, weights_dir):
    """The loaded model, or the reason it was skipped (a str)."""
    try:
        return loader(weights_dir)
    except Skipped as e:
        return str(e)


def embed_clip(model: AudioModel, wav: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return np.asarray(model.audio(resample(wav, COMMON_SR, model.sample_rate)), dtype=np.float64)  # (K, D)


def clap_with_text(model: AudioModel, audio_rows: dict, texts: dict) -> float:
    """Mean cosine between CLAP audio embeddings {id: (1, D)} and CLAP text embeddings of texts {id: caption}."""
    ids = sorted(audio_rows.keys() & texts.keys())
    assert ids, "no caption id matches an audio file name"
    with torch.no_grad():  # batches of 64 texts keep the text tower's memory small
        text = np.concatenate([np.asarray(model.text([texts[i] for i in ids[j:j + 64]]), dtype=np.float64)
                               for j in range(0, len(ids), 64)])  # (N, D)
    return mean_cosine(np.concatenate([audio_rows[i] for i in ids]), text)


def evaluate_audio(generated, reference, models: dict, captions: Optional[dict] = None) -> dict:
    """Paired audio metrics of two wav folders. models: {"vggish", "passt", "clap", "align"} -> AudioModel or a skip
    reason (str). captions: {id: text prompt} for the audio-text CLAP score of Table 2."""
    gen, ref = wav_files(generated), wav_files(reference)
    ids = sorted(gen.keys() & ref.keys())
    assert ids, f"no .wav file names in common between {generated} and {reference}"
    ready = {k: m for k, m in models.items() if isinstance(m, AudioModel)}
    rows = {k: ({}, {}) for k in ready}  # per model: {id: (K, D)} for generated and for reference clips
    for i in ids:
        g, r = load_clip(gen[i]), load_clip(ref[i])
        for k, m in ready.items():
            rows[k][0][i], rows[k][1][i] = embed_clip(m, g), embed_clip(m, r)
    stack = lambda k, side: np.concatenate([rows[k][side][i] for i in ids])  # pooled rows of one side, (N, D)
    # missing(k) is None when model k is loaded, else {"skipped": why}; `missing(k) or value` computes value only then
    missing = lambda k: None if k in ready else {"skipped": models.get(k, f"no {k} model given")}
    no_text = None if captions else {"skipped": "pass --captions FILE with the text prompts (GT audio captions)"}
    metrics = {
        "kld": missing("passt") or kl_divergence(stack("passt", 1), stack("passt", 0)),
        "fad": missing("vggish") or frechet_distance(*gaussian_stats(stack("vggish", 0)),
                                                     *gaussian_stats(stack("vggish", 1))),
        "align_acc": {"skipped": models.get("align", "no Diff-Foley classifier given")},
        "clap": missing("clap") or no_text or clap_with_text(ready["clap"], rows["clap"][0], captions),
        "clap_gt_audio": missing("clap") or mean_cosine(stack("clap", 0), stack("clap", 1)),
    }
    return {"n_pairs": len(ids), "only_in_generated": sorted(gen.keys() - ref.keys()),
            "only_in_reference": sorted(ref.keys() - gen.keys()), "metrics": metrics,
            "settings": {"pairing": "by file stem", "audio": f"mono (channel mean), resampled to {COMMON_SR} Hz, "
                         "DC removed, then resampled to each network's rate", "resampler": RESAMPLER,
                         "kld": "KL(reference || generated) of softmax(PaSST logits), nats, log space, no epsilon, "
                         "mean over pairs", "fad": "Frechet distance of VGGish embeddings, (n-1) covariances, trace "
                         "term from eigenvalues", "clap": "mean cosine, generated audio vs its text prompt",
                         "clap_gt_audio": "mean cosine, generated audio vs reference audio",
                         "models": {k: m.settings for k, m in ready.items()}}}


def read_captions(path) -> dict[str, list[str]]:
    """{id: [captions]} from a JSON dict {id: caption or [captions]}, the captions.json of
    tools/sample_split.py ({"settings", "counts", "clips": {id: {"caption", "prompt", ...}}}), or a
    list of records with "id" or "video_path" and "caption" or "output" (VATT's V2A-Instruction
    files). Ids are cut to their file stem ("a/b_01.mp4" -> "b_01") so that they also match audio
    file names."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict) and set(data) == {"settings", "counts", "clips"}:  # a split run's captions.json
        data = data["clips"]
    pairs = [(k, v["caption"] if isinstance(v, dict) else v) for k, v in data.items()] if isinstance(data, dict) else [
        (e.get("id", e.get("video_path")), e.get("caption", e.get("output"))) for e in data]
    out = {}
    for k, v in pairs:
        assert k is not None and v is not None, (f"{path}: a record lacks its id/video_path or caption/output "
                                                 "(sampling writes captions only when it runs without a prompt)")
        out.setdefault(Path(str(k)).stem, []).extend([v] if isinstance(v, str) else v)
    return out


def evaluate_captions(generated, reference, bert, clap, audio_dir=None) -> dict:
    """Caption metrics of two caption files, matched by id. bert: embed() or a skip reason; clap: AudioModel or a
    skip reason; audio_dir: reference wavs for the caption-audio CLAP score of Table 3."""
    gen, ref = read_captions(generated), read_captions(reference)
    ids = sorted(gen.keys() & ref.keys())
    assert ids, f"no caption id in common between {generated} and {reference}"
    assert all(len(gen[i]) == 1 for i in ids), "the generated file must hold one caption per id"
    cands, refs = [gen[i][0] for i in ids], [ref[i] for i in ids]
    metrics = caption_metrics(cands, refs)
    metrics["bertscore"] = {"skipped": bert} if isinstance(bert, str) else bertscore(cands, refs, bert)
    if isinstance(clap, str) or audio_dir is None:
        metrics["clap"] = {"skipped": clap if isinstance(clap, str) else "pass --audio DIR with the reference wavs"}
    else:
        wavs = wav_files(audio_dir)
        audio = {i: embed_clip(clap, load_clip(wavs[i])) for i in ids if i in wavs}
        metrics["clap"] = clap_with_text(clap, audio, dict(zip(ids, cands)))
    n_show = 20  # a V2A-Instruction reference file also holds the train split: list only the first few ids
    return {"n_captions": len(ids), "only_in_generated": sorted(gen.keys() - ref.keys())[:n_show],
            "n_only_in_generated": len(gen.keys() - ref.keys()),
            "only_in_reference": sorted(ref.keys() - gen.keys())[:n_show],
            "n_only_in_reference": len(ref.keys() - gen.keys()), "metrics": metrics,
            "settings": dict(CAPTION_SETTINGS, clap="mean cosine, generated caption vs reference audio",
                             clap_model=clap.settings if isinstance(clap, AudioModel) else None)}


# -----------------------------------------------------------------------------
# tables and command line


AUDIO_COLUMNS = [("KLD ↓", "kld", "{:.2f}"), ("FAD ↓", "fad", "{:.2f}"), ("Align Acc ↑", "align_acc", "{:.2%}"),
                 ("CLAP Score ↑", "clap", "{:.3f}"), ("CLAP vs GT audio ↑", "clap_gt_audio", "{:.3f}")]
CAPTION_COLUMNS = [("BertScore (F1) ↑", "bertscore", "{0[f1]:.3f}"), ("BLEU-4 ↑", "bleu4", "{:.3f}"),
                   ("ROUGE-L ↑", "rouge_l", "{:.3f}"), ("CIDEr ↑", "cider", "{:.3f}"),
                   ("CLAP Score ↑", "clap", "{:.3f}")]


def format_table(name: str, metrics: dict, columns: list) -> str:
    """A markdown table with the paper's columns (Align Acc as a percentage), then the reasons for skipped cells."""
    skipped = {k: v["skipped"] for k, v in metrics.items() if isinstance(v, dict) and "skipped" in v}
    cells = ["–" if key in skipped else fmt.format(metrics[key]).rstrip("%") for _, key, fmt in columns]
    lines = ["| Methods | " + " | ".join(h for h, _, _ in columns) + " |", "|---" * (len(columns) + 1) + "|",
             f"| {name} | " + " | ".join(cells) + " |"]
    return "\n".join(lines + [f"skipped {k}: {why}" for k, why in skipped.items()])


def write_report(args, result: dict, columns: list):
    out = Path(args.out or Path(args.generated).with_suffix("").as_posix() + ".metrics.json")
    result = {"command": args.command, "generated": str(args.generated), "reference": str(args.reference), **result}
    save_json(result, out)
    n = result.get("n_pairs", result.get("n_captions"))
    left = {k: result.get(f"n_{k}", len(result[k])) for k in ("only_in_generated", "only_in_reference")}
    print(f"scored {n} {'pairs' if 'n_pairs' in result else 'captions'} matched by name; left out: "
          f"{left['only_in_generated']} only in {args.generated}, {left['only_in_reference']} only in {args.reference}")
    print(format_table(args.name or Path(args.generated).stem, result["metrics"], columns))
    print(f"wrote {out}")


def run_captions(args):
    weights_dir = args.weights_dir or torch.hub.get_dir()
    bert = try_load(load_bertscore, weights_dir)
    clap = try_load(load_clap, weights_dir) if args.audio else None
    write_report(args, evaluate_captions(args.generated, args.reference, bert, clap, args.audio), CAPTION_COLUMNS)


def run_audio(args):
    loaders = {"vggish": load_vggish, "passt": load_passt, "clap": load_clap, "align": load_align_classifier}
    models = {k: try_load(f, args.weights_dir or torch.hub.get_dir()) for k, f in loaders.items()}
    captions = {k: v[0] for k, v in read_captions(args.captions).items()} if args.captions else None
    write_report(args, evaluate_audio(args.generated, args.reference, models, captions), AUDIO_COLUMNS)


def main(argv=None):
    parser = argparse.ArgumentParser(description="VATT evaluation metrics (see the module docstring)")
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("captions", help="BLEU-4, ROUGE-L, CIDEr, BERTScore, CLAP of generated captions (Table 3)")
    cap.add_argument("--generated", required=True, help="JSON of generated captions")
    cap.add_argument("--reference", required=True, help="JSON of reference captions (one or several per id)")
    cap.add_argument("--audio", default=None, help="folder of reference wavs named by id, for the CLAP score")
    aud = sub.add_parser("audio", help="KLD, FAD, Align Acc, CLAP of generated audio (Tables 1, 2)")
    aud.add_argument("--generated", required=True, help="folder of generated .wav files")
    aud.add_argument("--reference", required=True, help="folder of reference .wav files with the same names")
    aud.add_argument("--captions", default=None, help="JSON of the text prompts by id, for the CLAP score")
    for p, run in ((cap, run_captions), (aud, run_audio)):
        p.add_argument("--weights_dir", default=None, help="local weights (default: the torch hub cache)")
        p.add_argument("--out", default=None, help="output JSON (default: <generated>.metrics.json)")
        p.add_argument("--name", default=None, help="row name in the table (default: name of --generated)")
        p.set_defaults(func=run)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
