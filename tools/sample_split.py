"""
Sampling a whole split of a V2A-Instruction JSON (evaluation runs; Table 3's captioning) with
sample.py's sampler, from the clips' extracted features rather than their videos.

    python tools/sample_split.py --data_json data/toy/v2a_instruction.json --name video_only
    python tools/sample_split.py --data_json data/toy/v2a_instruction.json --prompt_field output --name gt_caption
    python tools/sample_split.py --data_json data/toy/v2a_instruction.json --negative_field swapped \
        --name negative_pitch
    # editing (sample.py --edit): each clip's own sound redone over the range in its entry's field
    python tools/sample_split.py --data_json data/toy/v2a_instruction.json --edit_field edit --prompt_field swapped \
        --name edit_swapped
    # Table 3's captioning protocol: the paper's instruction, captions only
    python tools/sample_split.py --preset gemma-2b --data_json vggsound/v2a_instruction.json --caption_only \
        --caption_prompt "Describe the possible audio for this video:" --name captions

Every option of sample.py (python sample.py --help) applies, but --video; Config below adds the
split's. Prompts come from a field of each entry (--prompt_field; none = the "no text" mode) and
negative prompts from another (--negative_field) or --negative_prompt for all. A prompt longer
than the model takes is cut as training cuts it, and counted.

Outputs, in ckpt_dir/samples/<name>/ (or --out_dir): <stem>.wav per clip (<stem>.<k>.wav with
--num_samples k), <stem>.steps.json with --save_steps, and captions.json: the run's settings, its
counts and one entry per clip (caption, prompts, seed), written after every batch. A rerun with
the same settings keeps the clips already made and samples the rest; other settings (or a
retrained checkpoint) start over. An editing run (--edit_field, or --edit for every clip) reads
each clip's video (its entry's video_path) and writes its own sound with the range redone, at the
video's own rate.
"""
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root
import sample  # noqa: E402
from codec import decode_windows  # noqa: E402
from extract_features import VideoFeatures, load_features, load_split, write_wav  # noqa: E402
from utils import parse_config, pick_device, record_timing, save_json  # noqa: E402


@dataclass
class Config(sample.Config):
    data_json: str = ""  # the V2A-Instruction JSON: its entries' video_path, split and text fields
    split: str = "test"
    prompt_field: str = ""  # each entry's field that holds its prompt (empty = no text)
    negative_field: str = ""  # each entry's field that holds its negative prompt (empty = none)
    edit_field: str = ""  # each entry's field that holds the range to edit, "START:END" in seconds (sample.py --edit)
    name: str = "samples"  # the run's folder, ckpt_dir/samples/<name> (unless --out_dir)
    strict: bool = False  # a clip skipped (an entry without features) is an error, not a warning


def check_options(args):
    if not args.data_json:
        sys.exit("error: give --data_json FILE (see --help)")
    if args.video:
        sys.exit("error: --video is sample.py's (this samples the clips of --data_json)")
    if args.negative_field and args.negative_prompt:
        sys.exit("error: give --negative_prompt or --negative_field, not both")
    if args.edit_field and args.edit:
        sys.exit("error: give --edit or --edit_field, not both")


def split_jobs(args, models):
    """The split's clips that have features -> [(stem, load)], where load() gives a Clip's
    (features, duration, prompt, negative prompt); and the output folder."""
    features_dir = models.converter.features_dir
    items, missing = load_split(args.data_json, features_dir, args.split)
    if missing:
        what = f"{missing} {args.split} clips have no features in {features_dir}"
        if args.strict:
            sys.exit(f"error: --strict: {what}")
        print(f"warning: {what}: skipped", file=sys.stderr)
    entries = {Path(e["video_path"]).stem: e for e in json.loads(Path(args.data_json).read_text(encoding="utf-8"))}

    def entry_text(stem, field):
        """The text in an entry's `field`; a missing or empty one fails this clip alone."""
        text = entries[stem].get(field)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{stem}: its entry in {args.data_json} has no text in the field {field!r}")
        return text

    def texts(stem):
        return (entry_text(stem, args.prompt_field) if args.prompt_field else None,
                entry_text(stem, args.negative_field) if args.negative_field else args.negative_prompt or None)

    def load_entry(stem):
        return (load_features(features_dir, stem), models.meta["seconds"], *texts(stem))

    def load_edit(stem):  # the clip's video, whose sound is edited
        span = sample.parse_span(entry_text(stem, args.edit_field) if args.edit_field else args.edit)
        return sample.Edit(stem, str(Path(args.data_json).parent / entries[stem]["video_path"]), span, *texts(stem))

    load = load_edit if args.edit_field or args.edit else load_entry
    jobs = [(stem, lambda s=stem: load(s)) for stem, _ in items]
    return jobs, Path(args.out_dir or Path(args.ckpt_dir) / "samples" / args.name)


# -----------------------------------------------------------------------------
# captions.json: what a run made, so that an interrupted one goes on where it stopped


def earlier_clips(args, out, run_settings):
    """The captions.json entries of an earlier run into `out` with the same settings whose outputs
    are all there: a rerun keeps them and samples the rest. Another run's file is started over."""
    path = out / "captions.json"
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text(encoding="utf-8"))
    if earlier.get("settings") != run_settings:
        print(f"note: {path} was written with other settings: starting over", file=sys.stderr)
        return {}
    return {key: entry for key, entry in earlier["clips"].items()
            if args.caption_only or (out / f"{key}.wav").is_file()}


def caption_counts(clips):
    """Over captions.json's entries: the texts cut to the model's length, the captions that reached the limit."""
    return {name: sum(bool(e.get(key)) for e in clips.values()) for name, key in
            (("prompts_cut", "prompt_cut"), ("negative_prompts_cut", "negative_prompt_cut"),
             ("captions_at_limit", "caption_at_limit"))}


def write_captions(out, run_settings, clips):
    """captions.json: the run's settings, its counts and one entry per clip sampled so far
    (written after every batch)."""
    save_json({"settings": run_settings, "counts": caption_counts(clips), "clips": clips}, out / "captions.json")


# -----------------------------------------------------------------------------
# the run


def run(args, models, device):
    """A sampling run over the split of args.data_json with these models (sample.py's own
    checkpoints, or tools/official.py's, the authors'; captions.json names models.files). Prints
    what it was given, did, kept and skipped. Returns the exit status."""
    t0 = time.time()
    conv, checkpoints = models.converter, models.files
    settings = sample.start_run(args, models, checkpoints.get("audio", "the model"),
                                sample.TEXT_OPTIONS + ("prompt_field", "negative_field"))
    jobs, out = split_jobs(args, models)
    editing = bool(args.edit_field or args.edit)
    run_settings = {"data_json": args.data_json, "split": args.split, "prompt_field": args.prompt_field,
                    "negative_field": args.negative_field, "negative_prompt": args.negative_prompt,
                    **({"edit_field": args.edit_field, "edit": args.edit} if editing else {}), "seed": args.seed,
                    "num_samples": args.num_samples, "caption_only": args.caption_only, **settings,
                    "checkpoints": checkpoints,  # and when they were written: a retrained model starts over
                    "checkpoint_times": {k: os.stat(p).st_mtime_ns for k, p in checkpoints.items()
                                         if os.path.isfile(p)}}
    clips = earlier_clips(args, out, run_settings)
    suffixes = [""] if args.num_samples == 1 else [f".{k}" for k in range(args.num_samples)]
    given = len(jobs)  # a clip whose every sample an earlier run made is kept, not redone
    jobs = [job for job in jobs if not all(job[0] + x in clips for x in suffixes)]

    def write(clip, result, k, info):
        suffix = f".{k}" if args.num_samples > 1 else ""
        clips[clip.key + suffix] = {
            "caption": info["caption"], "prompt": clip.prompt, "negative_prompt": clip.negative,
            "caption_at_limit": info["caption_at_limit"], "seed": info["seed"], "seed_from": info["seed_from"],
            "prompt_cut": clip.prompt is not None and conv.prompt_ids(clip.prompt)[1],
            "negative_prompt_cut": clip.negative is not None and conv.prompt_ids(clip.negative)[1]}
        if not args.caption_only:
            write_wav(out / f"{clip.key}{suffix}.wav", decode_windows(models.codec, result["codes"]),
                      models.codec.sample_rate)
            if args.save_steps:
                sample.save_steps(out / f"{clip.key}{suffix}.steps.json", result, args.steps)

    def write_edit(edit, result, k, info):
        suffix = f".{k}" if args.num_samples > 1 else ""
        clips[edit.key + suffix] = {"edit": list(edit.span), "caption": result["caption"], "prompt": edit.prompt,
                                    "negative_prompt": edit.negative, "seed": info["seed"], "seed_from": info["seed_from"]}
        write_wav(out / f"{edit.key}{suffix}.wav", result["audio"], result["rate"])

    # captions.json after every batch: an interrupted run keeps what it made
    after_batch = lambda: write_captions(out, run_settings, clips)  # noqa: E731
    if editing:
        if args.caption_only or args.self_prompt:
            sys.exit("error: --caption_only and --self_prompt do not go with an edit")
        tally = sample.edit_clips(args, models, device, VideoFeatures(models.meta, device), jobs, write_edit,
                                  after_batch)
    else:
        tally = sample.sample_clips(args, models, device, jobs, write, cut_prompts=True, after_batch=after_batch)
    counts = caption_counts(clips)
    for name, field in (("prompts_cut", args.prompt_field), ("negative_prompts_cut", args.negative_field)):
        if counts[name]:
            print(f"note: {counts[name]} texts of the field {field!r} are longer than the {conv.max_text_tokens} "
                  "tokens this model takes: cut as training cuts them", file=sys.stderr)
    record_timing(args.ckpt_dir, f"sample_{args.name}", t0)
    status = sample.report(tally, len(jobs), settings["caption_max_tokens"])
    print(f"{args.name}: {given} clips, {given - len(jobs)} kept from an earlier run, {tally['done']} samples "
          f"made, {len(tally['failed'])} failed -> {out}", file=sys.stderr)
    return status


def main(argv=None):
    args = parse_config(Config, sample.PRESETS, argv)
    check_options(args)
    device = pick_device(args.device)
    return run(args, sample.load_models(args.ckpt_dir, device), device)


if __name__ == "__main__":
    sys.exit(main())
