"""
The toy run's report page: see and hear what VATT does. `make demo` writes it at the end, after
data/toy/score.py's table; it opens from disk, no server:

    python tools/report.py                     # out/toy/report.html + out/toy/report_media/, from a finished run
    chromium out/toy/report.html         # or any browser

The page holds
  - the evaluation table (out/toy/eval.json), each row with one line on what it says about the paper's claim;
  - a few test clips, two of each sound source (one per register where the split has them): the
    video with each mode's generated audio muxed in (the video stream copied, extract_features.mux), the
    reference and the Converter's captions, and the spectrograms of the real audio and of each mode
    on the same axes, with the true strike times marked: the strikes line up, the register moves
    with the text;
  - the decoding picture (§3.2.2): one clip's codec-token grid (levels x time) after each step of
    iterative parallel decoding, each token coloured by the step that revealed it, beside the cosine
    schedule's count per step. It needs a mode sampled with `sample.py --save_steps` (make demo's
    gt_caption run is).
"""
import html
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root
from data.toy.world import CLASSES, PITCHES, REGISTER_SPLIT_HZ  # noqa: E402
from eval import read_wav  # noqa: E402
from extract_features import load_audio, mux  # noqa: E402
from sample import reveal_counts  # noqa: E402
from stage1_caption import TEMPLATE  # noqa: E402
from utils import atomic_path, parse_config  # noqa: E402

# -----------------------------------------------------------------------------
# config


@dataclass
class Config:
    preset: str = "toy"
    data_json: str = "data/toy/v2a_instruction.json"  # the toy world's JSON (test clips, captions, truths)
    features_dir: str = "data/toy/features"  # its meta.json gives the clip length and sample rate
    samples_dir: str = "out/toy/samples"  # sample.py outputs, one folder per mode
    split: str = "test"  # the clips the samples were made of
    eval_json: str = "out/toy/eval.json"  # data/toy/score.py's table
    out: str = "out/toy/report.html"  # the page; its media go to <out without .html>_media/ beside it
    n_clips: int = 6  # test clips shown (kept small: every clip costs 5 videos and a figure)


# the generation modes, in the order the page shows them: (samples folder, label)
MODES = (("video_only", "video only"), ("gt_caption", "ground-truth caption"),
         ("swapped_pitch_text", "swapped register"), ("self_caption", "own caption"))
DPI = 80  # small PNGs (see save_png): the page stays light and quick to write

# -----------------------------------------------------------------------------
# the table: one reading per row, what the row says about the paper's claim (§1: the video
# decides when and what sounds, the text adds what the video cannot show, here the register)


def readings(result):
    """{row: one sentence}: what the row should show if the claim holds, and its own numbers."""
    a, c = result["audio"], result["captions"]
    video, true, own, swapped = a["video_only"], a["gt_caption"], a["self_caption"], a["swapped_pitch_text"]
    return {
        "captions": f"Source and strike count are visible, so the Converter can name them (right {c['class_acc']:.0%} "
                    f"and {c['count_acc']:.0%}); the register is not, so its pitch word should be right at chance, "
                    f"about 50 % ({c['pitch_acc']:.0%}).",
        "ground_truth": f"The yardstick: the analyzer on the real test clips (onset F1 {a['ground_truth']['onset_f1']:.2f}); "
                        "every row below is scored the same way.",
        "codec_roundtrip": "The ceiling of any generated row: the real audio through the codec's encode and decode.",
        "video_only": f"No text (the template prompt): the video alone should give the source (right "
                      f"{video['class_acc']:.0%}) and the strikes' timing (onset F1 {video['onset_f1']:.2f}); the register "
                      f"is invisible, so pitch should sit at chance, about 50 % ({video['pitch_acc']:.0%}).",
        "gt_caption": f"With the true caption the register should follow the text: pitch right {true['pitch_acc']:.0%} "
                      f"against {video['pitch_acc']:.0%} from the video alone, the strikes still on the video's beat "
                      f"(onset F1 {true['onset_f1']:.2f}).",
        "self_caption": f"With its own caption (appendix A) the register follows the Converter's guessed pitch word "
                        f"(right {c['pitch_acc']:.0%} of the time), so against the truth it should be chance again "
                        f"({own['pitch_acc']:.0%}).",
        "swapped_pitch_text": f"The caption's pitch words swapped: near 100 % means the text, not the video, sets the "
                              f"register ({swapped['pitch_follows_text']:.0%} of the clips take the register the text "
                              f"says), while the strikes stay where the video puts them (onset F1 "
                              f"{swapped['onset_f1']:.2f}).",
        "negative_pitch": f"No text, but the clip's caption with the wrong register as the negative prompt (guidance "
                          f"n + w (c - n)): near 100 % means guidance steers away from it ("
                          f"{a['negative_pitch']['pitch_avoids_negative']:.0%} take the other register), the strikes "
                          f"still on the video's beat (onset F1 {a['negative_pitch']['onset_f1']:.2f}).",
        **({"edit_swapped": f"The clip's own sound with a range around one strike redone from the swapped caption "
                            f"(sample.py --edit): near 100 % means the range takes the text's register "
                            f"({a['edit_swapped']['pitch_follows_text']:.0%}), its strikes on the video's beat (onset "
                            f"F1 {a['edit_swapped']['onset_f1']:.2f}), and outside it the wav is the clip's own "
                            f"({a['edit_swapped']['outside_untouched']:.0%} of the clips)."} if "edit_swapped" in a else {}),
    }


def table_html(result):
    read = readings(result)
    c = result["captions"]
    rows = [f"<tr><th>Converter captions</th><td>{c['class_acc']:.3f}</td><td>{c['count_acc']:.3f}</td><td></td>"
            f"<td>{c['pitch_acc']:.3f}</td><td class=reading>{html.escape(read['captions'])} BLEU-4 {c['bleu4']:.3f}, "
            f"ROUGE-L {c['rouge_l']:.3f}, CIDEr {c['cider']:.3f}.</td></tr>"]
    for name, r in result["audio"].items():
        if name == "swapped_pitch_text":
            cells = f"<td></td><td></td><td>{r['onset_f1']:.3f}</td><td>{r['pitch_follows_text']:.3f} (follows the text)</td>"
        elif name == "negative_pitch":
            cells = f"<td></td><td></td><td>{r['onset_f1']:.3f}</td><td>{r['pitch_avoids_negative']:.3f} (avoids the negative)</td>"
        elif name == "edit_swapped":
            cells = (f"<td></td><td></td><td>{r['onset_f1']:.3f}</td><td>{r['pitch_follows_text']:.3f} (follows the text; "
                     f"outside untouched {r['outside_untouched']:.3f})</td>")
        else:
            cells = "".join(f"<td>{r[k]:.3f}</td>" for k in ("class_acc", "count_acc", "onset_f1", "pitch_acc"))
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}<td class=reading>{html.escape(read.get(name, ''))}</td></tr>")
    return ("<table><tr><th>row</th><th>class</th><th>count</th><th>onset F1</th><th>pitch</th><th>reading</th></tr>"
            + "".join(rows) + "</table>")


# -----------------------------------------------------------------------------
# the clips


def pick_clips(test, n):
    """n test entries spread over the sources and registers: the first clip of each (class, pitch)
    pair in turn, then the second of each, ... (toy world order: bell, drum, whistle x low, high)."""
    groups = [[e for e in test if (e["class"], e["pitch"]) == (c, p)] for c in CLASSES for p in PITCHES]
    order = [g[i] for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]
    return order[:n]


def save_png(fig, path):
    """The figure as a 64-colour PNG: a spectrogram's noise does not compress in full colour
    (300 kB a figure), in a palette it takes a quarter of that and looks the same."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI)
    plt.close(fig)
    Image.open(buffer).convert("RGB").quantize(64).save(path, optimize=True)


def spectrograms(path, rows, sr, onsets=(), span=None):
    """One figure: each (label, wav) of `rows` as a spectrogram, one above the other, on the same
    axes and colour scale (the first row's), the true strike times dashed, the analyzer's register
    split (low | high) dotted, an edited range (start, end) between two solid lines."""
    import matplotlib.pyplot as plt
    from matplotlib import mlab

    spec = dict(NFFT=512, Fs=sr, noverlap=448)
    top = 10 * np.log10(mlab.specgram(rows[0][1], **spec)[0].max())  # dB; the first row sets the scale of all
    fig, axes = plt.subplots(len(rows), 1, figsize=(6.4, 0.95 * len(rows) + 0.5), sharex=True, sharey=True)
    for ax, (label, wav) in zip(axes, rows):
        ax.specgram(wav, cmap="magma", vmin=top - 80, vmax=top, **spec)
        for t in onsets:
            ax.axvline(t, color="white", ls="--", lw=0.8)
        for t in span or ():
            ax.axvline(t, color="lime", lw=1.2)
        ax.axhline(REGISTER_SPLIT_HZ, color="cyan", ls=":", lw=0.8)
        ax.set_ylim(0, 4000)
        ax.set_yticks([0, 2000, 4000], ["0", "2k", "4k"])
        ax.text(0.005, 0.93, label, transform=ax.transAxes, color="white", fontsize=8, va="top")
    axes[-1].set_xlabel("seconds (" + ("dashed: the video's strikes; " if len(onsets) else "")
                        + ("solid: the edited range; " if span else "") + "dotted: low | high register split)")
    fig.supylabel("Hz", fontsize=9)
    fig.tight_layout(h_pad=0.2)
    save_png(fig, path)


def decoding_picture(path, revealed_at, steps, frame_rate):
    """The token grid (levels x time) after each step, each revealed token coloured by its step
    (still masked: grey; given before decoding: black), beside the cosine schedule's count per
    step (bars) and the count read off the grid (dots): they coincide."""
    import matplotlib.pyplot as plt

    grid = np.asarray(revealed_at)  # (L, T)
    n_start = int((grid > 0).sum())
    schedule = reveal_counts(n_start, steps)
    counted = [int((grid == t).sum()) for t in range(1, steps + 1)]
    cmap = plt.get_cmap("viridis", steps).with_extremes(bad="#d9d9d9", under="black")
    fig = plt.figure(figsize=(8.0, 0.34 * steps + 1.0))
    panels = fig.add_gridspec(steps, 2, width_ratios=(5, 1.3), left=0.08, right=0.97, top=0.93, bottom=0.08,
                              hspace=0.15, wspace=0.08)
    seconds = grid.shape[1] / frame_rate
    for t in range(1, steps + 1):
        ax = fig.add_subplot(panels[t - 1, 0])
        ax.imshow(np.ma.masked_where(grid > t, grid), cmap=cmap, vmin=0.5, vmax=steps + 0.5,
                          aspect="auto", interpolation="nearest", extent=(0, seconds, grid.shape[0], 0))
        ax.set_yticks([])
        ax.set_ylabel(str(t), rotation=0, ha="right", va="center", fontsize=8)
        if t < steps:
            ax.set_xticks([])
        else:
            ax.set_xlabel(f"seconds ({grid.shape[1]} frames x {grid.shape[0]} levels)")
        if t == 1:
            ax.set_title("the token grid after each step (rows: levels; colour: the step that revealed the token)",
                         fontsize=9)
    fig.text(0.01, 0.5, "step", rotation=90, va="center")
    bars = fig.add_subplot(panels[:, 1])
    ticks = np.arange(1, steps + 1)
    bars.barh(ticks, schedule, color=cmap(np.arange(steps)), label="cosine schedule")
    bars.plot(counted, ticks, "k.", label="counted on the grid")
    bars.set_ylim(steps + 0.5, 0.5)
    bars.set_yticks([])
    bars.set_xlabel("tokens revealed")
    bars.legend(fontsize=7, loc="upper right")  # the bars' colours are the steps' colours: no colour bar needed
    save_png(fig, path)


# -----------------------------------------------------------------------------
# the page

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
td { font-variant-numeric: tabular-nums; }
td.reading { color: #444; font-size: 0.9em; }
section.clip { border-top: 2px solid #ccc; margin-top: 2em; }
.videos { display: flex; flex-wrap: wrap; gap: 0.8em; }
figure { margin: 0; width: 192px; font-size: 0.82em; }
video { width: 192px; height: 192px; background: #000; }
q { color: #555; }
img { max-width: 100%; }
"""


def clip_html(entry, caption, media, stem, videos, strikes):
    """One clip's section: its videos, each mode's prompt, the captions and the spectrograms. Every
    text is escaped and every link URL-encoded: a clip or folder name may hold any character."""
    def src(name):
        return html.escape(quote(f"{media}/{name}"))

    prompts = {"video_only": TEMPLATE, "gt_caption": entry["output"], "swapped_pitch_text": entry["swapped"],
               "self_caption": "the Converter's caption"}
    figures = [f'<figure><video controls preload="auto" src="{src(videos["real"])}"></video>'
               "<figcaption>the real audio</figcaption></figure>"]
    figures += [f'<figure><video controls preload="auto" src="{src(videos[name])}"></video><figcaption>'
                f"{html.escape(label)}<br><q>{html.escape(prompts[name])}</q></figcaption></figure>" for name, label in MODES]
    return (f'<section class=clip><h3>{html.escape(stem)}: {html.escape(entry["class"])}, '
            f'{html.escape(entry["pitch"])} register, {html.escape(strikes)}</h3>'
            f"<p>reference caption: <q>{html.escape(entry['output'])}</q><br>the Converter's caption: "
            f"<q>{html.escape(caption or '')}</q></p><div class=videos>{''.join(figures)}</div>"
            f'<img src="{src(stem + ".spectrograms.png")}" alt="spectrograms of {html.escape(stem)}"></section>')


def edit_html(data, edits, entry, building, media, sr, seconds):
    """The editing section: one clip's own sound and the same sound with a range redone
    (sample.py --edit, make demo's edit_swapped run), as videos and as spectrograms one above the
    other; empty when the run has no edits."""
    stem, video = Path(entry["video_path"]).stem, data.parent / entry["video_path"]
    if not (edits / "captions.json").is_file() or not (edits / f"{stem}.wav").is_file():
        return ""
    record = json.loads((edits / "captions.json").read_text(encoding="utf-8"))["clips"][stem]
    start, end = record["edit"]
    edited = read_wav(edits / f"{stem}.wav")[0][:, 0]
    spectrograms(building / f"{stem}.edit.png", [("its own sound", load_audio(str(video), sr, seconds)),
                                                 (f"{start:g} to {end:g} s redone", edited[: round(seconds * sr)])],
                 sr, entry["onsets"], (start, end))
    after = Path(mux(video, edits / f"{stem}.wav", str(building / f"{stem}.edited"))).name

    def src(name):
        return html.escape(quote(f"{media}/{name}"))

    return (f"<h2>Editing a range of a video's own sound</h2><p>Clip {html.escape(stem)}: its sound from {start:g} to "
            f"{end:g} s redone with <q>{html.escape(record['prompt'] or '')}</q> (MaskGIT's in-painting: the tokens of "
            "the range masked and decoded from the video and the text, the rest of the sound kept sample for sample)."
            f'</p><div class=videos><figure><video controls preload="auto" src="{src(f"{stem}.real.mp4")}"></video>'
            f'<figcaption>before</figcaption></figure><figure><video controls preload="auto" src="{src(after)}">'
            f'</video><figcaption>after</figcaption></figure></div><img src="{src(f"{stem}.edit.png")}" '
            f'alt="spectrograms of {html.escape(stem)} before and after the edit">')


def write_report(cfg):
    """The page and its media folder from a finished toy run (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display

    data, samples, out = Path(cfg.data_json), Path(cfg.samples_dir), Path(cfg.out)
    result = json.loads(Path(cfg.eval_json).read_text(encoding="utf-8"))
    meta = json.loads((Path(cfg.features_dir) / "meta.json").read_text(encoding="utf-8"))
    sr, seconds = meta["sample_rate"], meta["seconds"]
    test = [e for e in json.loads(data.read_text(encoding="utf-8")) if e["split"] == cfg.split]
    captions = json.loads((samples / "video_only" / "captions.json").read_text(encoding="utf-8"))["clips"]
    chosen = pick_clips(test, cfg.n_clips)

    # the media go to a fresh folder that replaces the old one whole, then the page is written
    media = out.with_name(out.stem + "_media")
    building = out.with_name("." + media.name + ".tmp")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    sections, steps_clip = [], None
    for e in chosen:
        stem, video = Path(e["video_path"]).stem, data.parent / e["video_path"]
        shutil.copyfile(video, building / f"{stem}.real.mp4")
        generated = {name: read_wav(samples / name / f"{stem}.wav")[0][:, 0] for name, _ in MODES}
        videos = {"real": f"{stem}.real.mp4"}  # a video whose codec MP4 cannot hold is muxed into Matroska
        videos.update({name: Path(mux(video, samples / name / f"{stem}.wav", str(building / f"{stem}.{name}"))).name
                       for name in generated})
        rows = [("real audio", load_audio(str(video), sr, seconds))] + [(label, generated[name]) for name, label in MODES]
        spectrograms(building / f"{stem}.spectrograms.png", rows, sr, e["onsets"])
        strikes = f"{e['count']} strike{'s' if e['count'] > 1 else ''} at " + ", ".join(f"{t:g}" for t in e["onsets"]) + " s"
        sections.append(clip_html(e, captions[stem]["caption"], media.name, stem, videos, strikes))
        if steps_clip is None:
            steps_clip = next(((stem, name) for name, _ in MODES if (samples / name / f"{stem}.steps.json").is_file()), None)

    if steps_clip:
        stem, name = steps_clip
        history = json.loads((samples / name / f"{stem}.steps.json").read_text(encoding="utf-8"))
        decoding_picture(building / "decoding.png", history["revealed_at"], history["steps"], meta["frame_rate"])
        decoding = (f"<p>Clip {html.escape(stem)}, mode {dict(MODES)[name]}: VATT Audio starts from all-MASK tokens and at each "
                    "of its steps samples every masked token in parallel, keeps the most confident ones and masks the "
                    "rest again; the cosine schedule sets how many stay masked (few revealed at first, many at the end)."
                    f'</p><img src="{html.escape(quote(media.name + "/decoding.png"))}" alt="decoding order of {html.escape(stem)}">')
    else:
        decoding = ("<p>No step history among these clips: sample a mode with <code>sample.py --save_steps</code> "
                    "(make demo does so for the ground-truth caption).</p>")

    editing = edit_html(data, samples / "edit_swapped", chosen[0], building, media.name, sr, seconds)
    shutil.rmtree(media, ignore_errors=True)
    building.rename(media)
    timing = ", ".join(f"{k} {t['wall_s']} s ({t['cpu_s']} CPU s)" for k, t in result.get("timing", {}).items())
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>VATT toy run</title><style>{CSS}</style>"
            f"</head><body><h1>VATT on the toy world</h1><p>{result['settings']['n_clips']} held-out {html.escape(cfg.split)} clips. The "
            "video decides when and what sounds (source, strikes); only the text says the pitch register. Each audio "
            "row is what the analyzer (data/toy/world.py) hears in the generated audio, scored against the clip.</p>"
            f"<h2>Evaluation</h2>{table_html(result)}<p class=reading>Timing: {html.escape(timing)}.</p>"
            f"<h2>Iterative parallel decoding (§3.2.2)</h2>{decoding}{editing}"
            f"<h2>Test clips</h2><p>Each video plays its clip's picture with the real or a generated sound track; "
            "the spectrograms below share their axes and colour scale.</p>" + "".join(sections) + "</body></html>\n")
    with atomic_path(out) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    print(f"wrote {out} and {media}/ (open it in a browser)")
    return out


def main(argv=None):
    cfg = parse_config(Config, {"toy": {}}, argv)
    try:
        write_report(cfg)
    except FileNotFoundError as e:
        sys.exit(f"error: {e.filename}: no such file (run make demo, or sample.py and data/toy/score.py, first)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
