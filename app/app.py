"""
Try VATT in a browser: a Gradio app over sample.py (paper §3.2 and Figure 1, made interactive).
Drop a video (or pick a toy test clip), leave the prompt empty and the Converter suggests what it
could sound like (its audio caption); put that caption into the prompt with one click, edit a word
("high" for "low") and generate again to hear the text steer the audio.

    pip install -r app/requirements.txt -c constraints.txt   # make app does this
    make app                                                  # the toy checkpoints of make demo
    python app/app.py --ckpt_dir out/gemma-2b --preset gemma-2b
    python app/app.py --port 8000 --host 0.0.0.0              # reachable from other machines
    python app/app.py --share                                 # and through a public gradio.live link

It listens on 127.0.0.1 (the address is printed), on --port or else Gradio's usual port
(GRADIO_SERVER_PORT, 7860 or the next free one). Every sample.py option sets the page's starting
value (--prompt, --steps, --guidance_scale, --seed, --video) or the sampler's setting
(--temperature, --overlap, ...); the batch options (--num_samples, --batch_size, ...) do not apply.

Below it, an edit of a range of the video's own sound (sample.py --edit): a start and an end in
seconds, a prompt (empty: the Converter's caption) and a negative prompt; the page shows the
original and the edited sound, their spectrograms one above the other.

From a script (gradio_client, installed with gradio): the endpoint /generate takes (video, prompt,
negative_prompt, steps, guidance_scale, seed) and returns (caption, audio file, video file); /edit
takes (video, start, end, prompt, negative_prompt, steps, guidance_scale, seed) and returns (audio
file, video file):

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    caption, wav, mp4 = client.predict(handle_file("clip.mp4"), "", "", 16, 2.0, 0, api_name="/generate")
    wav, mp4 = client.predict(handle_file("clip.mp4"), 0.5, 0.9, "a low bell", "", 16, 2.0, 0, api_name="/edit")

A bad request (not a video, no frames, a prompt longer than the model takes) gets one message and
the app goes on serving. Requests are answered one at a time, in order (the models are shared).
Every file a request writes, and every upload, lives in this run's temporary folder (printed),
removed when the app stops.
"""
import dataclasses
import json
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace

try:
    import gradio as gr
except ImportError:
    sys.exit("error: the app needs Gradio: pip install -r app/requirements.txt -c constraints.txt (make app does it)")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root
import sample  # noqa: E402
from eval import read_wav  # noqa: E402
from extract_features import VideoFeatures, decode_audio  # noqa: E402
from tools.report import decoding_picture, spectrograms  # noqa: E402
from utils import parse_config, pick_device  # noqa: E402


@dataclass
class Config(sample.Config):
    host: str = "127.0.0.1"  # the address to listen on (0.0.0.0: every interface)
    port: int = 0  # 0 = GRADIO_SERVER_PORT, or else 7860 (or the next free port)
    share: bool = False  # also serve through a public gradio.live link
    # the clips offered as examples: the test split of a V2A-Instruction JSON (none if it is absent)
    examples: str = "data/toy/v2a_instruction.json"
    n_examples: int = 8


# -----------------------------------------------------------------------------
# one request: a video (+ text) -> sample.py's outputs, in the request's own folder


def request(session, run, video, prompt, negative_prompt, steps, guidance_scale, seed, **options):
    """One request through `run` (sample.sample_videos, or sample.edit_videos) on one video with
    this request's settings and `options`, in a folder of its own. Returns the outputs' base path
    and the record. A bad input raises gr.Error: one message, no traceback (Gradio itself refuses
    steps, guidance or seed outside the page's ranges)."""
    if not video:
        raise gr.Error("No video: upload one, or pick an example clip below.")
    prompt, negative_prompt = prompt.strip(), negative_prompt.strip()
    error = sample.too_long(session.models.converter, (prompt or None, negative_prompt or None))
    if error:
        raise gr.Error(error[0].upper() + error[1:] + ".")
    folder = Path(tempfile.mkdtemp(dir=session.requests_dir))
    args = dataclasses.replace(session.args, out_dir=str(folder), prompt=prompt, negative_prompt=negative_prompt,
                               steps=int(steps), guidance_scale=float(guidance_scale), seed=int(seed),
                               self_prompt=False, caption_only=False, num_samples=1, batch_size=1,
                               compile=False, **options)  # compiled once, at the start
    try:
        tally, _, _ = run(args, session.models, session.device, [video], session.encoder)
    except SystemExit as e:  # a setting the model refuses (sample.start_run's one line)
        raise gr.Error(str(e.code).removeprefix("error: "))
    if tally["failed"]:  # the upload's temporary path, said as the file's name
        raise gr.Error(tally["failed"][0].replace(video, Path(video).name))
    base = folder / f"{Path(video).stem}.vatt"
    return base, json.loads(Path(f"{base}.json").read_text(encoding="utf-8"))


def generate(session, video, prompt, negative_prompt, steps, guidance_scale, seed):
    """sample.py on one video. Returns the suggested caption (empty when a prompt was given), the
    wav, the video with that audio muxed in, and the picture of the token grid after each
    decoding step."""
    base, record = request(session, sample.sample_videos, video, prompt, negative_prompt, steps, guidance_scale, seed,
                           save_steps=True, edit="")
    history = json.loads(Path(f"{base}.steps.json").read_text(encoding="utf-8"))
    picture = base.parent / "decoding.png"
    decoding_picture(picture, history["revealed_at"], history["steps"], session.models.codec.frame_rate)
    return record["caption"] or "", f"{base}.wav", record["video_out"], str(picture)


def edit(session, video, start, end, prompt, negative_prompt, steps, guidance_scale, seed):
    """sample.py --edit on one video: its own sound from `start` to `end` seconds redone. Returns
    the edited wav, the video with it muxed in, and the picture of the original and the edited
    sound's spectrograms, one above the other. A bad range, or a video without sound, raises
    gr.Error as any bad input does."""
    if start is None or end is None:
        raise gr.Error("Give the range to edit: a start and an end, in seconds.")
    base, record = request(session, sample.edit_videos, video, prompt, negative_prompt, steps, guidance_scale, seed,
                           save_steps=False, edit=f"{float(start)!r}:{float(end)!r}")
    own, sr = decode_audio(video, "fltp")
    picture = base.parent / "edit.png"
    rows = [("its own sound", own[0]), (f"{start:g} to {end:g} s redone", read_wav(f"{base}.wav")[0][:, 0])]
    spectrograms(picture, rows, sr, span=(start, end))
    return f"{base}.wav", record["video_out"], str(picture)


# -----------------------------------------------------------------------------
# the page


def example_clips(path, n):
    """The first n test clips of a V2A-Instruction JSON, as [[video path]] (none if it is absent)."""
    if not path or not Path(path).is_file():
        return []
    entries = json.loads(Path(path).read_text(encoding="utf-8"))
    return [[str(Path(path).parent / e["video_path"])] for e in entries if e["split"] == "test"][:n]


def build_page(session, examples):
    args = session.args
    # analytics off: Gradio would otherwise report usage and check its version online at the start
    with gr.Blocks(title="VATT: video to audio through text", analytics_enabled=False) as page:
        gr.Markdown("## VATT: tell what you hear from what you see\nA silent video, and optionally a text, "
                    "in; audio out. With no prompt the model suggests an audio caption: use it as the prompt, "
                    "edit it, and generate again.")
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="video", sources=["upload"], elem_id="video", value=args.video or None)
                prompt = gr.Textbox(label="prompt (empty: the model captions the video)", elem_id="prompt",
                                    value=args.prompt)
                negative = gr.Textbox(label="negative prompt (a sound to steer away from)", elem_id="negative",
                                      value=args.negative_prompt)
                steps = gr.Slider(1, 64, value=args.steps, step=1, label="decoding steps")
                guidance = gr.Slider(0.0, 10.0, value=args.guidance_scale, step=0.1, label="guidance scale")
                seed = gr.Number(value=args.seed, precision=0, minimum=0, label="seed")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                caption = gr.Textbox(label="suggested audio caption (when no prompt is given)", interactive=False,
                                     elem_id="caption")
                use_caption = gr.Button("Use this caption as the prompt", elem_id="use-caption")
                audio = gr.Audio(label="audio", type="filepath", interactive=False, elem_id="audio")
                video_out = gr.Video(label="video with the audio", interactive=False, elem_id="video-out")
                # the picture's own title says what it shows (§3.2.2): no label over it
                grid = gr.Image(label="decoding", show_label=False, type="filepath", interactive=False, elem_id="grid")
        if examples:
            gr.Examples(examples, inputs=[video], label="test clips")
        gr.Markdown("### Edit a range of the video's own sound\nThe sound between the start and the end is redone "
                    "from the video and the text (empty: the model's caption); the rest stays as it is.")
        with gr.Row():
            with gr.Column():
                with gr.Row():
                    start = gr.Number(label="start (s)", minimum=0, elem_id="edit-start")
                    end = gr.Number(label="end (s)", minimum=0, elem_id="edit-end")
                edit_prompt = gr.Textbox(label="prompt for the range (empty: the model's caption)", elem_id="edit-prompt")
                edit_negative = gr.Textbox(label="negative prompt for the range", elem_id="edit-negative")
                run_edit = gr.Button("Edit the range", variant="primary", elem_id="edit")
            with gr.Column():
                edited_audio = gr.Audio(label="edited audio", type="filepath", interactive=False, elem_id="edited-audio")
                edited_video = gr.Video(label="video with the edited audio", interactive=False, elem_id="edited-video")
                edit_picture = gr.Image(label="before and after", show_label=False, type="filepath", interactive=False,
                                        elem_id="edit-picture")
        # the APIs return (caption, audio, video) and (audio, video): the pictures reach the page through States
        picture, before_after = gr.State(), gr.State()
        run.click(partial(generate, session), [video, prompt, negative, steps, guidance, seed],
                  [caption, audio, video_out, picture], api_name="generate").then(
            lambda path: path, picture, grid, api_visibility="private")
        use_caption.click(lambda text: text, caption, prompt, api_visibility="private")
        run_edit.click(partial(edit, session), [video, start, end, edit_prompt, edit_negative, steps, guidance, seed],
                       [edited_audio, edited_video, before_after], api_name="edit").then(
            lambda path: path, before_after, edit_picture, api_visibility="private")
    return page


def main(argv=None):
    args = parse_config(Config, sample.PRESETS, argv)
    device = pick_device(args.device)
    models = sample.load_models(args.ckpt_dir, device)  # loaded once, shared by every request
    sample.start_run(args, models, models.files["audio"])  # the settings checked (and --compile) once
    examples = example_clips(args.examples, args.n_examples)
    for stop in (signal.SIGINT, signal.SIGTERM):  # either stop cleans up, as Ctrl-C does (also where a
        signal.signal(stop, signal.default_int_handler)  # shell started the app in the background, SIGINT ignored)
    with tempfile.TemporaryDirectory(prefix="vatt-app-") as run_dir:
        print(f"this run's files (requests and uploads): {run_dir}, removed when the app stops", flush=True)
        os.environ["GRADIO_TEMP_DIR"] = os.path.join(run_dir, "uploads")  # where Gradio keeps uploads and outputs
        session = SimpleNamespace(args=args, models=models, device=device, encoder=VideoFeatures(models.meta, device),
                                  requests_dir=os.path.join(run_dir, "requests"))
        os.makedirs(session.requests_dir)
        page = build_page(session, examples)
        page.queue(default_concurrency_limit=1)  # one generation at a time; the others wait in line
        try:
            page.launch(server_name=args.host, server_port=args.port or None, share=args.share,
                        allowed_paths=[str(Path(e[0]).parent) for e in examples[:1]])
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
