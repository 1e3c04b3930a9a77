"""
The toy audio-visual world: procedurally generated clips on which the whole VATT pipeline can be
trained from scratch on a CPU in minutes (the project's counterpart of nanoGPT's shakespeare_char).

It shows the paper's thesis in miniature:
  * the VIDEO decides WHEN and WHAT sounds: one object per clip, its shape and surface pattern pick
    the sound source (ringed circle = bell, banded square = drum, ribbed triangle = whistle; see
    stripes()) and it visibly strikes 1 to 3 times;
  * the TEXT adds what the video cannot show: the pitch register (low / high) is drawn at random,
    nothing in the picture depends on it, and only the caption says it.
Everything else (background, object colour, size and position) is a random distractor.

This file is pure numpy and holds the world's whole "physics" plus an analytic judge of it:
    render_clip(rng, ...)     -> video frames, audio, ground truth
    make_caption / parse_caption / swap_pitch      the caption grammar
    analyze(wav, sr)          -> what a listener would say: source class, register, strike count, onsets
    score(analyses, truths)   -> clip-level accuracies and onset F1
The analyzer is hand-written DSP (no learning), so it can grade generated audio without any model.
"""
import re
from collections import Counter

import numpy as np

CLASSES = ("bell", "drum", "whistle")
PITCHES = ("low", "high")
SHAPES = {"bell": "circle", "drum": "square", "whistle": "triangle"}
SAMPLE_RATE = 16000

# Strike times lie on the 5 fps grid of the model's video features (ts = k / 5 s). This is a
# deliberate simplification: the visual encoder sees the video at 5 fps, so putting strikes on that
# grid makes the timing fully visible to it (a strike between two feature frames could be missed).
FEATURE_FPS = 5
STRUCK_HALF_WIDTH = 0.07  # a frame looks "struck" iff |t - ts| < 0.07 s (see render_clip)
MIN_GAP = 2  # grid steps (0.4 s) between strikes, so one sound has died away before the next
MAX_STRIKES = 3
STRIPE_PERIOD = 8  # pixels, at the default 128 x 128

# Registers are two octaves apart so that the analyzer can tell them apart with a wide margin even
# on audio that went through AAC or the toy codec. The exact frequency within a register is random.
F0_RANGE = {  # Hz; bell = fundamental, drum = band centre, whistle = start of the upward glide
    ("bell", "low"): (220, 330), ("bell", "high"): (880, 1320),
    ("drum", "low"): (250, 350), ("drum", "high"): (1000, 1400),
    ("whistle", "low"): (300, 400), ("whistle", "high"): (1200, 1600),
}
REGISTER_SPLIT_HZ = 640  # analyzer threshold: low sounds measure <= ~500 Hz, high ones >= ~870 Hz
PEAK = 0.5  # every strike peaks at -6 dBFS
NOISE_FLOOR = 1e-3  # -60 dBFS white background noise, so no clip is digitally silent

# -----------------------------------------------------------------------------
# the sounds


def bell(rng, f0, sr):
    """A decaying harmonic tone: partials 1, 2, 3 fading with a 0.12 s time constant, short enough
    that a bell is 29 dB down when the next strike can come (0.4 s later)."""
    t = np.arange(int(0.7 * sr)) / sr
    x = sum(a * np.sin(2 * np.pi * h * f0 * t) for h, a in ((1, 1.0), (2, 0.5), (3, 0.25)))
    return x * np.exp(-t / 0.12)


def drum(rng, f0, sr):
    """A short burst of band-pass noise: white noise shaped in the frequency domain to about the two
    octaves [f0 / 2, f0 * 2], decaying with a 0.04 s time constant. The band is wide on purpose: a
    burst this short has a lumpy spectrum, and only a wide band (many lumps in a 32 ms analysis
    window) is never mistaken for a few tones, even at 300 Hz."""
    n = int(0.3 * sr)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    octaves = np.log2(np.maximum(np.fft.rfftfreq(n, 1 / sr), 1.0) / f0)
    # flat within +-0.8 octave, falling smoothly to zero at +-1.2 octave
    mask = np.clip((1.2 - np.abs(octaves)) / 0.4, 0, 1)
    x = np.fft.irfft(spectrum * np.sin(0.5 * np.pi * mask) ** 2, n)
    return x * np.exp(-np.arange(n) / sr / 0.04)


def whistle(rng, f0, sr):
    """A sustained sine gliding upward from f0 to 1.5 * f0 over 0.3 s, with 20 ms attack and
    release: its sustain, and secondly its glide, tell it apart from a bell."""
    n = int(0.3 * sr)
    t = np.arange(n) / sr
    freq = f0 * 1.5 ** (t / 0.3)
    x = np.sin(2 * np.pi * np.cumsum(freq) / sr)
    ramp = int(0.02 * sr)
    env = np.ones(n)
    env[:ramp] = np.linspace(0, 1, ramp)
    env[-ramp:] = np.linspace(1, 0, ramp)
    return x * env


SOUNDS = {"bell": bell, "drum": drum, "whistle": whistle}

# -----------------------------------------------------------------------------
# the pictures


def hsv_to_rgb(h, s, v):
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def shape_sdf(shape, dx, dy, r):
    """Signed distance (pixels, negative inside) to a shape of 'radius' r centred at the origin."""
    if shape == "circle":
        return np.hypot(dx, dy) - r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * r  # a bit smaller: same visual weight
    # upward equilateral triangle, circumradius 1.25 r: max over its three edges' outward normals
    # (y points down in images: the normals point down, up-left and up-right)
    edges = [(0.0, 1.0), (-np.sqrt(3) / 2, -0.5), (np.sqrt(3) / 2, -0.5)]
    return np.max([nx * dx + ny * dy for nx, ny in edges], axis=0) - 0.625 * r


def stripes(cls, dx, dy):
    """The surface pattern of each source: rings on the bell, horizontal bands on the drum,
    vertical ribs on the whistle (period 8 px). A random-weight ViT, which is all the toy can
    have, barely sees outlines but sees textures well: from one frame an MLP probe on its
    features tells the three sources apart 0.33 (outline only) vs 0.96 (with the pattern) of the
    time, so the pattern is what makes the source visible."""
    phase = {"bell": np.hypot(dx, dy), "drum": dy, "whistle": dx}[cls]
    return np.sin(2 * np.pi * phase / STRIPE_PERIOD) > 0


def paint(image, sdf, colour):
    """Anti-aliased fill: a pixel is covered in proportion to how far inside the edge it lies."""
    alpha = np.clip(0.5 - sdf, 0, 1)[..., None]
    return image * (1 - alpha) + colour * alpha


def render_clip(rng, seconds=2.0, fps=25, size=128, sr=SAMPLE_RATE):
    """One random clip: (frames uint8 (N, H, W, 3), audio float32 (S,), meta dict) with
    N = round(seconds * fps), S = round(seconds * sr) and
    meta = {"class", "pitch", "f0" (Hz), "onsets" (seconds, sorted), "count"}."""
    cls = CLASSES[rng.integers(len(CLASSES))]
    pitch = PITCHES[rng.integers(len(PITCHES))]
    f0 = float(rng.uniform(*F0_RANGE[cls, pitch]))

    # strike times: k / 5 s with k in 1 .. n_grid - 3 (the last strike leaves >= 0.6 s to ring
    # out), at least MIN_GAP grid steps apart
    n_grid = round(seconds * FEATURE_FPS)
    allowed = np.arange(1, n_grid - 2)
    assert len(allowed) >= 1, f"clips must be at least {4 / FEATURE_FPS} s long"
    count = int(rng.integers(1, min(MAX_STRIKES, (len(allowed) + MIN_GAP - 1) // MIN_GAP) + 1))
    while True:
        ks = np.sort(rng.choice(allowed, size=count, replace=False))
        if np.all(np.diff(ks) >= MIN_GAP):
            break
    onsets = [int(k) / FEATURE_FPS for k in ks]

    # audio: every strike starts its sound exactly at its onset sample
    n_samples = round(seconds * sr)
    audio = NOISE_FLOOR * rng.standard_normal(n_samples)
    for ts in onsets:
        start = round(ts * sr)
        x = SOUNDS[cls](rng, f0, sr)
        x = PEAK * x / np.abs(x).max()
        x = x[: n_samples - start]
        audio[start: start + len(x)] += x
    audio = np.clip(audio, -1, 1).astype(np.float32)

    # picture: a gentle two-colour gradient, then the object. Colours avoid near-white, which is
    # reserved for the struck object, and the object must contrast with its background.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((xx - size / 2) * np.cos(angle) + (yy - size / 2) * np.sin(angle)) / size + 0.5
    c1, c2 = rng.uniform(0.05, 0.6, size=(2, 3))
    background = c1 + (c2 - c1) * np.clip(ramp, 0, 1)[..., None]
    r = size * rng.uniform(0.22, 0.27)
    margin = min(1.45 * r + 2, size / 2)  # room for the grown object and its ring (tiny test frames: centred)
    cx, cy = rng.uniform(margin, size - margin, size=2)
    local = background[int(cy), int(cx)]
    while True:
        colour = hsv_to_rgb(rng.uniform(), rng.uniform(0.6, 1.0), rng.uniform(0.45, 0.85))
        if np.abs(colour - local).mean() > 0.2:
            break
    shape = SHAPES[cls]
    dx, dy = xx - cx, yy - cy
    pattern = stripes(cls, dx, dy)[..., None]
    idle = paint(background, shape_sdf(shape, dx, dy, r), np.where(pattern, 0.3 * colour, colour))
    # struck: near-white, 1.3x larger, with a thin white ring around it
    bright = 0.85 + 0.15 * colour
    struck = paint(background, shape_sdf(shape, dx, dy, 1.3 * r), np.where(pattern, 0.5 * bright, bright))
    struck = paint(struck, np.abs(np.hypot(dx, dy) - 1.45 * r) - 1.0, np.ones(3))
    images = np.stack([idle, struck])
    images = np.round(255 * images).astype(np.uint8)

    # A frame shows the strike iff its time is within 0.07 s of a strike. Resampling any file frame
    # rate >= 8 fps to 5 fps by nearest frame then picks a struck frame exactly at the strike's
    # feature frame (its nearest file frame is <= 1/16 s away) and never at the neighbouring feature
    # frames (0.2 s away, so >= 0.1375 s from the strike).
    t = np.arange(round(seconds * fps)) / fps
    is_struck = np.any(np.abs(t[:, None] - np.array(onsets)[None, :]) < STRUCK_HALF_WIDTH, axis=1)
    frames = images[is_struck.astype(np.int64)]

    meta = {"class": cls, "pitch": pitch, "f0": round(f0, 2), "onsets": onsets, "count": count}
    return frames, audio, meta

# -----------------------------------------------------------------------------
# captions


PITCH_WORDS = {"low": ("low", "deep"), "high": ("high", "bright")}
COUNT_ADVERBS = {1: "once", 2: "twice", 3: "three times"}
COUNT_NUMBERS = {1: "one", 2: "two", 3: "three"}
VERBS = {  # (intransitive 3rd person, -ing form, past participle, transitive 3rd person)
    "bell": (("rings", "chimes", "dings"), ("ringing", "chiming"), ("rung", "struck", "tapped"),
             ("rings", "strikes", "taps")),
    "drum": (("beats", "thumps", "sounds"), ("beating", "thumping"), ("hit", "struck", "beaten"),
             ("hits", "strikes", "beats")),
    "whistle": (("blows", "toots", "sounds"), ("blowing", "tooting"), ("blown", "sounded"),
                ("blows", "sounds")),
}
HIT_NOUNS = {  # (singular, plural) for "two deep and low drum hits"
    "bell": (("ring", "rings"), ("chime", "chimes"), ("strike", "strikes")),
    "drum": (("hit", "hits"), ("beat", "beats"), ("thump", "thumps")),
    "whistle": (("blow", "blows"), ("toot", "toots"), ("call", "calls")),
}
TEMPLATES = (
    "a {p} {c} {v3} {n}",                    # a high and bright bell rings twice
    "{num} {p} {c} {hit}",                   # two deep and low drum hits
    "the sound of a {p} {c} {ving} {n}",     # the sound of a low and deep whistle blowing three times
    "a {c} is {vpp} {n} with a {p} {tone}",  # a drum is hit once with a bright and high pitch
    "someone {vt} a {p} {c} {n}",            # someone strikes a high and bright bell three times
    "{p} {c} sound heard {n}",               # deep and low bell sound heard twice
)


def make_caption(cls, pitch, count, rng):
    """A random caption from the grammar: exactly one class word, one count, and the register as a
    pair of pitch words in either order ("high and bright", "deep and low"). The pair is what
    makes the register survive in a captioner's states: after "high and" comes "bright", after "low
    and" comes "deep", so an LLM trained to write these captions must keep the register in its
    last layer. With one pitch word nothing later depends on it, and the captioner's training maps
    "high" and "low" onto nearly the same state (docs/toy-tuning.md)."""
    pick = lambda options: options[rng.integers(len(options))]
    v3, ving, vpp, vt = VERBS[cls]
    singular, plural = pick(HIT_NOUNS[cls])
    first, second = rng.permutation(PITCH_WORDS[pitch])
    return pick(TEMPLATES).format(
        p=f"{first} and {second}", c=cls, n=COUNT_ADVERBS[count], num=COUNT_NUMBERS[count],
        hit=singular if count == 1 else plural, v3=pick(v3), ving=pick(ving), vpp=pick(vpp),
        vt=pick(vt), tone=pick(("pitch", "tone", "sound")))


PITCH_OF_WORD = {w: p for p, words in PITCH_WORDS.items() for w in words}
COUNT_OF_WORD = {"once": 1, "one": 1, "single": 1, "1": 1, "twice": 2, "two": 2, "2": 2,
                 "thrice": 3, "three": 3, "3": 3}


def parse_caption(text):
    """{"class", "pitch", "count"} read off a caption by keywords; None where a slot is missing.
    Tolerant of model output: any case, punctuation, plurals ("bells"), repeated words. When words
    of a slot disagree, the first one wins."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    cls = next((c for w in words for c in CLASSES if w.startswith(c)), None)
    pitch = next((PITCH_OF_WORD[w] for w in words if w in PITCH_OF_WORD), None)
    count = next((COUNT_OF_WORD[w] for w in words if w in COUNT_OF_WORD), None)
    return {"class": cls, "pitch": pitch, "count": count}


SWAP = {"low": "high", "high": "low", "deep": "bright", "bright": "deep"}


def swap_pitch(caption):
    """The same caption with the pitch word(s) flipped: low <-> high, deep <-> bright."""
    return re.sub(r"\b(low|high|deep|bright)\b", lambda m: SWAP[m.group(1)], caption)

# -----------------------------------------------------------------------------
# the analyzer: what a listener would say about a clip


def db(power):
    return 10 * np.log10(power + 1e-12)


def tonal_fraction(power):
    """Share of a power spectrum that sits in sinusoidal peaks: bins standing more than 13 dB above
    the median of their +-6 bin neighbourhood (a tone's main lobe stands ~40 dB above its
    sidelobes; a bin of band noise rarely stands out that far), widened by one bin on each side.
    ~1 for tones, ~0 for noise."""
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(power, 6, mode="edge"), 13)
    peak = power > 20 * np.median(windows, axis=1)
    peak = np.convolve(peak, np.ones(3), mode="same") > 0
    return power[peak].sum() / max(power.sum(), 1e-20)


def median_frequency(power, freqs):
    """The frequency that splits the spectrum's power in half: a tone's frequency (a bell's
    harmonics shift it only within the fundamental's main lobe), a noise band's centre. Bins more
    than 20 dB below the strongest are left out, so that broadband background noise (weak per bin,
    but spread over many bins) cannot drag it upward."""
    cum = np.cumsum(np.where(power > 0.01 * power.max(), power, 0.0))
    return freqs[np.searchsorted(cum, cum[-1] / 2)]


def analyze(wav, sr=SAMPLE_RATE):
    """{"class", "pitch", "count", "onsets"} of a mono clip, by plain signal processing.

    1. Onsets: the power envelope in 5 ms hops, smoothed over 20 ms, must jump more than 10 dB above
       its minimum over the preceding 40 ms while being above a floor (max - 30 dB, and -50 dBFS),
       and the event must peak within 20 dB of the clip's loudest moment. The onset time is then
       refined on the raw 5 ms envelope as the first hop within 15 dB of the event's peak, so that
       pre-echo (AAC smears a little energy up to a block ahead of a transient) does not pull it
       early. Onsets closer than 150 ms are merged; a sound already playing at t = 0 is no onset.
    2. Per event, from 32 ms spectra every 10 ms over its first 200 ms (while within 12 dB of its
       peak) and its envelope:
         drum     if its first 60 ms are noise (tonal fraction < 0.5) or it has fallen more than
                  26 dB 0.2 s after the onset (only a drum dies that fast: bells fall ~15 dB);
         whistle  else if it holds (fallen < 8 dB at 0.2 s), or it holds fairly (< 12 dB) while its
                  frequency glides upward (> x1.15);
         bell     otherwise.
       Register: the median frequency of its spectra below or above 640 Hz.
    3. Clip class and register = majority vote over its events; count = number of events.
       A clip with no onset gets class None, pitch None, count 0.
    """
    x = np.asarray(wav, dtype=np.float64).reshape(-1)
    hop = sr // 200  # 5 ms
    n_hops = len(x) // hop
    if n_hops < 4:  # shorter than the 20 ms smoothing window: nothing to hear
        return {"class": None, "pitch": None, "count": 0, "onsets": []}
    power = (x[: n_hops * hop].reshape(n_hops, hop) ** 2).mean(axis=1)
    fine = db(power)
    smooth = db(np.convolve(power, np.ones(4) / 4)[3:])  # 20 ms starting at each hop
    loudest = smooth.max(initial=-120.0)
    floor = max(loudest - 30, -50.0)

    onsets = []
    for i in range(1, len(smooth)):
        before = smooth[max(0, i - 8): max(1, i - 3)].min()  # the 40 ms before hop i
        if smooth[i] < floor or smooth[i] - before < 10:
            continue
        peak = smooth[i: i + 20].max()  # the event's peak within 100 ms
        if peak < loudest - 20:
            continue
        j = max(0, i - 2) + int(np.argmax(fine[max(0, i - 2): i + 20] >= fine[i: i + 20].max() - 15))
        if not onsets or j - onsets[-1] >= 30:  # 150 ms
            onsets.append(j)

    n_fft = 512
    freqs = np.fft.rfftfreq(n_fft, 1 / sr)
    band = (freqs >= 80) & (freqs <= 5000)
    window = np.hanning(n_fft)
    padded = np.pad(x, (0, n_fft))  # an onset near the end still gets a spectrum
    events = []
    for e, j in enumerate(onsets):
        end = onsets[e + 1] if e + 1 < len(onsets) else n_hops
        peak = smooth[j: j + 10].max()
        spectra = [np.abs(np.fft.rfft(window * padded[h * hop: h * hop + n_fft]))[band] ** 2
                   for h in range(j, max(j + 1, min(j + 40, end - 6)), 2) if h == j or smooth[h] > peak - 12]
        tonal = np.median([tonal_fraction(p) for p in spectra[:6]])
        centre = np.median([median_frequency(p, freqs[band]) for p in spectra])
        late = min(j + 40, end - 4, len(smooth) - 1)  # 0.2 s on, or as late as the next onset allows
        decay = smooth[late] - peak
        peaks = [freqs[band][np.argmax(p)] for p in spectra]
        glide = np.median(peaks[-3:]) / np.median(peaks[:3])
        if tonal < 0.5 or decay < -26:
            cls = "drum"
        elif decay > -8 or (glide > 1.15 and decay > -12):
            cls = "whistle"
        else:
            cls = "bell"
        events.append((j, cls, "low" if centre < REGISTER_SPLIT_HZ else "high"))

    if not events:
        return {"class": None, "pitch": None, "count": 0, "onsets": []}
    return {
        "class": Counter(c for _, c, _ in events).most_common(1)[0][0],
        "pitch": Counter(p for _, _, p in events).most_common(1)[0][0],
        "count": len(events),
        "onsets": [round(j * hop / sr, 4) for j, _, _ in events],
    }

# -----------------------------------------------------------------------------
# scoring


def match_onsets(predicted, true, tolerance=0.05):
    """Number of one-to-one matches within +-tolerance s, closest pairs first (greedy; optimal
    here since true onsets are >= 0.4 s apart, far more than twice the tolerance)."""
    pairs = sorted((abs(p - t), i, j) for i, p in enumerate(predicted) for j, t in enumerate(true)
                   if abs(p - t) <= tolerance)
    used_p, used_t = set(), set()
    for _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    return len(used_p)


def score(analyses, truths, pitch_key="pitch"):
    """Clip-level accuracies of analyze() outputs against ground-truth dicts (render_clip's meta or
    the dataset's JSON entries), plus onset F1 over all clips (+-50 ms, one-to-one). `pitch_key`
    names the truth field that pitch is scored against, e.g. a flipped register stored under another
    key to measure whether the generated pitch follows a swapped caption."""
    n = len(truths)
    assert n == len(analyses) and n > 0
    hits = sum(match_onsets(a["onsets"], t["onsets"]) for a, t in zip(analyses, truths))
    n_pred = sum(len(a["onsets"]) for a in analyses)
    n_true = sum(len(t["onsets"]) for t in truths)
    return {
        "class_acc": sum(a["class"] == t["class"] for a, t in zip(analyses, truths)) / n,
        "count_acc": sum(a["count"] == t["count"] for a, t in zip(analyses, truths)) / n,
        "onset_f1": 2 * hits / (n_pred + n_true) if n_pred + n_true else 1.0,
        "pitch_acc": sum(a["pitch"] == t[pitch_key] for a, t in zip(analyses, truths)) / n,
    }
