"""
The app's bar on the toy world, through its API as a script calls it (gradio_client): for each
test clip, /generate without a prompt (does the suggested caption name the clip's source?) and with
the clip's caption, its pitch words swapped (does the analyzer hear the swapped register, as
§3.2's text steering promises?); then two calls at once (are both answered?).

    make demo                    # the toy checkpoints
    make app &                   # serving on http://127.0.0.1:7860
    .venv/bin/python tools/toy/app_check.py --n_clips=40 --out=out/toy/app_check.json

Results: docs/measurements.md ("The app through its API").
"""
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from gradio_client import Client, handle_file  # the app's requirements (app/requirements.txt)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repo root
import sample  # noqa: E402
from data.toy.world import analyze, parse_caption, swap_pitch  # noqa: E402
from eval import read_wav  # noqa: E402
from utils import parse_config, save_json  # noqa: E402


@dataclass
class Config:
    url: str = "http://127.0.0.1:7860/"  # the running app
    data_json: str = "data/toy/v2a_instruction.json"  # the toy world's JSON: its test clips and captions
    n_clips: int = 40  # the first n test clips
    seed: int = 0
    out: str = ""  # also write the per-clip results here (JSON)


def main(argv=None):
    args = parse_config(Config, {"toy": {}}, argv)
    data = Path(args.data_json)
    test = [e for e in json.loads(data.read_text(encoding="utf-8")) if e["split"] == "test"][: args.n_clips]
    client = Client(args.url, verbose=False)
    toy = sample.Config(**sample.TOY_SAMPLING)  # the app's own defaults under `make app`

    def generate(entry, prompt=""):
        video = handle_file(str(data.parent / entry["video_path"]))
        return client.predict(video, prompt, "", toy.steps, toy.guidance_scale, args.seed, api_name="/generate")

    rows, t0 = [], time.time()
    for i, entry in enumerate(test):
        caption, _, _ = generate(entry)
        swapped = swap_pitch(entry["output"])
        _, wav, _ = generate(entry, swapped)
        heard = analyze(*read_wav(wav))
        rows.append({"clip": entry["video_path"], "class": entry["class"], "caption": caption,
                     "caption_class": parse_caption(caption)["class"], "swapped_prompt": swapped,
                     "wanted_pitch": parse_caption(swapped)["pitch"], "heard_pitch": heard["pitch"]})
        print(f"{i + 1}/{len(test)} {entry['video_path']}: caption {caption!r}; "
              f"asked {rows[-1]['wanted_pitch']}, heard {heard['pitch']}", flush=True)
    with ThreadPoolExecutor(2) as pool:  # two calls at once: both must come back
        t1 = time.time()
        both = list(pool.map(generate, test[:2]))
    result = {
        "n_clips": len(test),
        "caption_names_the_source": sum(r["caption_class"] == r["class"] for r in rows) / len(rows),
        "swapped_register_heard": sum(r["heard_pitch"] == r["wanted_pitch"] for r in rows) / len(rows),
        "two_calls_at_once_answered": sum(Path(b[1]).is_file() for b in both),
        "two_calls_at_once_s": round(time.time() - t1, 1), "seconds": round(t1 - t0, 1), "clips": rows}
    print(f"captions naming the source: {result['caption_names_the_source']:.3f}; swapped register heard: "
          f"{result['swapped_register_heard']:.3f} ({len(rows)} clips, {result['seconds']} s); two calls at once: "
          f"{result['two_calls_at_once_answered']} of 2 answered in {result['two_calls_at_once_s']} s")
    if args.out:
        save_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
