"""
Sampling speed of VATT (docs/sampling-speed.md): what sampling one clip costs, with random weights
at the preset's full size, so no checkpoint, data or download is needed. Per clip (one window:
10 s at paper size, 2 s for the toy) it times the sampler's own functions on random video
features and the template prompt, at batch 1, 8, 32 on a GPU (1, 4 on a CPU):

    prefill  Converter.condition: the LLM over [video tokens ; prompt padded to max_text_tokens],
             Lc tokens; its last-layer states are the condition (the no-text mode's optional
             caption, greedy generation of up to max_text_tokens + 1 tokens, is not timed)
    decoder  sample.decode_tokens: `steps` forwards of VATT Audio over Lc + T tokens (T = 50 Hz x
             seconds), each with 2 sequences per clip (conditional and null guidance, §3.2.2)
    codec    codec.decode of the 4 x T tokens to audio

and prints a Markdown table (ms per clip, clips/s, achieved TFLOP/s, % of the GPU's bf16 peak,
peak memory) and writes <out_dir>/bench.json:

    python tools/bench.py --preset=gemma-2b --naive             # + the baseline: a clip at a time, 2 forwards a step, fp32
    python tools/bench.py --preset=gemma-2b --naive --compile   # torch.compile VATT Audio (GPU-oriented)
    python tools/bench.py --preset=toy --naive                  # seconds on a CPU
    python tools/bench.py --preset=gemma-2b --steps=2 --batch_sizes=1 --repeats=1 --naive   # a CPU
    python tools/bench.py --preset=gemma-2b --count_params   # VATT Audio's size alone

Two modes, same models. fast is what sample.generate() does: the whole batch at once, one
Converter prefill per batch, one VATT Audio forward per step for both guidance conditions, bf16
autocast on a GPU with VATT Audio's Linear weights cast to bf16 once (stage2_audio.frozen, as
sampling loads it). naive (--naive) is the baseline: one clip at a time, guidance as two forwards
per step, float32, no compile.
"""
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM, GemmaConfig, LlamaConfig

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root
import sample  # noqa: E402
import stage1_caption as s1  # noqa: E402
import stage2_audio as s2  # noqa: E402
from codec import build_audiogen_codec, load_codec  # noqa: E402
from data.toy.llm import Config as ToyLLMConfig, toy_llm_config, toy_tokenizer  # noqa: E402
from extract_features import Config as FeatureConfig  # noqa: E402  (the features' frame rate: 5 fps for every preset)
from utils import TrainingLog, autocast, parse_config, pick_device, save_json, weights_dtype  # noqa: E402

# -----------------------------------------------------------------------------
# config


@dataclass
class Config:
    preset: str = "toy"  # the models' sizes and window (MODELS below), sample.py's sampling settings for it
    batch_sizes: str = ""  # comma-separated; empty = 1,8,32 on a GPU, 1,4 on a CPU
    repeats: int = 3  # timed passes per batch size, after one warm-up pass; the median is reported
    llm_layers: int = 0  # build the LLM with only this many layers (0 = all), to save memory
    naive: bool = False  # also time the baseline: one clip at a time, two forwards per step, float32
    compile: bool = False  # torch.compile VATT Audio in fast mode: GPU-oriented, pays off over many batches
    count_params: bool = False  # only print VATT Audio's parameter count at the preset's size, and exit
    device: str = "auto"
    # the sampling settings, sample.py's for the preset unless given (the decoder's cost depends
    # on steps and top_k only; the rest keep the timed work the sampler's own)
    steps: int = sample.Config.steps
    guidance_scale: float = sample.Config.guidance_scale
    temperature: float = sample.Config.temperature
    top_k: int = sample.Config.top_k
    mask_temperature: float = sample.Config.mask_temperature
    seed: int = sample.Config.seed
    out_dir: str = sample.Config.ckpt_dir  # bench.json goes here; default: the preset's checkpoint folder


SAMPLING = ("steps", "guidance_scale", "temperature", "top_k", "mask_temperature", "seed")


def _from_sample_preset(name):
    """A bench preset from sample.py's: its sampling settings, bench.json beside its checkpoints."""
    args = sample.Config(**sample.PRESETS[name])
    return dict(out_dir=args.ckpt_dir, **{k: getattr(args, k) for k in SAMPLING})


PRESETS = {name: _from_sample_preset(name) for name in sample.PRESETS}

# -----------------------------------------------------------------------------
# the models at each preset's full size, random weights

# the LLM each preset's Converter wraps, as Hugging Face config fields (google/gemma-2b,
# meta-llama/Llama-2-7b-hf; the toy's is data/toy/llm.py's toy_llm_config), the width of the 5 fps
# video features (EVA02-CLIP-L, the toy ViT) and the window in seconds
GEMMA_2B = dict(hidden_size=2048, intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8,
                num_key_value_heads=1, head_dim=256, vocab_size=256000)
LLAMA_2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32000)
MODELS = {"toy": dict(llm=("toy", None), feature_dim=256, seconds=2.0),
          "gemma-2b": dict(llm=("gemma", GEMMA_2B), feature_dim=768, seconds=10.0),
          "llama-2-7b": dict(llm=("llama", LLAMA_2_7B), feature_dim=768, seconds=10.0)}


def llm_config(preset, tokenizer):
    """The preset's LLM as a Hugging Face config, at full depth."""
    family, fields = MODELS[preset]["llm"]
    if family == "toy":
        return toy_llm_config(ToyLLMConfig(), tokenizer)
    return (GemmaConfig if family == "gemma" else LlamaConfig)(
        **fields, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id)


def random_converter(preset, n_layers, dtype, device):
    """The preset's Converter around a random LLM (all its layers, or the first n_layers) in
    `dtype`. The toy's word-level tokenizer stands in for Gemma's or LLaMA's: token ids only index
    the embedding table, and the prompt is padded to max_text_tokens either way."""
    tokenizer = toy_tokenizer(s1.INSTRUCTIONS)
    config = llm_config(preset, tokenizer)
    config.num_hidden_layers = n_layers or config.num_hidden_layers
    stage1 = parse_config(s1.Config, s1.PRESETS, [f"--preset={preset}"])
    torch.manual_seed(0)
    with torch.device(device):  # built in place: on a GPU the LLM never passes through host memory
        llm = AutoModelForCausalLM.from_config(config).to(dtype)
    conv = s1.Converter(llm, tokenizer, MODELS[preset]["feature_dim"], stage1.video_tokens_per_second,
                        stage1.max_text_tokens, FeatureConfig.fps)
    return conv.to(device).eval().requires_grad_(False)


def random_audio(preset, cond_dim, device):
    """VATT Audio at the preset's size as sampling runs it (stage2_audio.frozen: its Linear weights
    bf16 on CUDA, float32 elsewhere) and the codec whose tokens it models, random weights: AudioGen's
    EnCodec (codec.py) at paper size, the toy's DSP codec."""
    torch.manual_seed(0)
    codec = load_codec(FeatureConfig.codec) if preset == "toy" else build_audiogen_codec()  # data.toy.codec:ToyCodec
    stage2 = parse_config(s2.Config, s2.PRESETS, [f"--preset={preset}"])
    audio = s2.VATTAudio(s2.model_config(stage2, cond_dim, codec), codec.codebooks.float())
    return s2.frozen(audio, device), codec.to(device)


def print_size(preset):
    """--count_params: VATT Audio's parameters at the preset's size, for its LLM's width and its
    codec's token tables (random weights)."""
    audio, _ = random_audio(preset, llm_config(preset, toy_tokenizer(s1.INSTRUCTIONS)).hidden_size, torch.device("cpu"))
    n = sum(p.numel() for p in audio.parameters())
    print(f"{preset}: {n:,} parameters ({n / 1e6:.1f} M), plus the frozen codebooks")
    return 0


class SeparateGuidance(nn.Module):
    """The naive baseline's VATT Audio: decode_tokens hands it the doubled batch of guidance (the B
    conditional sequences, then the B null or negative ones) and it runs the two halves as two
    forwards of B, conditional first, as a sampler without batched guidance does. The logits, and
    so the draws, are the batched forward's."""

    def __init__(self, audio):
        super().__init__()
        self.audio, self.config = audio, audio.config

    def forward(self, codes, cond, cond_mask, null_cond):  # each (2B, ...): conditional half, null half
        halves = zip(codes.chunk(2), cond.chunk(2), cond_mask.chunk(2), null_cond.chunk(2))
        return torch.cat([self.audio(*half) for half in halves])  # (2B, L, T, V)


# -----------------------------------------------------------------------------
# FLOPs, counted analytically, 2 per multiply-add; norms, activations, softmax and the sampling
# arithmetic are left out (as in nanoGPT's MFU estimate). The Converter's prefill
# (stage1_caption.prefill_flops) and VATT Audio's forward (stage2_audio.forward_flops) are the stages'
# own counts, which training's MFU uses too; the codec's is read off its layers here:
#   conv       2 * weights * output positions (input positions for a transposed conv)
#   LSTM       2 * weights * frames, per layer
# Guidance makes every decoder step 2 sequences (conditional and null): steps * 2 forwards per clip.


def codec_flops(codec, codes):
    """FLOPs of codec.decode(codes), read off the shapes its layers see in one decode (forward hooks)."""
    flops = []

    def count(m, inputs, output):
        x = inputs[0]
        if isinstance(m, nn.LSTM):  # x (frames, B, C); 4 gates x (input + hidden) weights per layer
            weights = sum(w.numel() for n, w in m.named_parameters() if n.startswith("weight"))
            flops.append(2 * weights * x.shape[0] * x.shape[1])
        else:  # x (B, C, positions)
            weights = m.in_channels * m.out_channels // m.groups * m.kernel_size[0]
            flops.append(2 * weights * len(x) * (x if isinstance(m, nn.ConvTranspose1d) else output).shape[-1])

    layers = (nn.Conv1d, nn.ConvTranspose1d, nn.LSTM)
    hooks = [m.register_forward_hook(count) for m in codec.modules() if isinstance(m, layers)]
    codec.decode(codes)
    for h in hooks:
        h.remove()
    return sum(flops)


# -----------------------------------------------------------------------------
# the benchmark


def main(argv=None):
    """Builds the preset's models with random weights, times the sampler on random clips at each
    batch size (and, with --naive, the baseline), prints the table and writes bench.json."""
    args = parse_config(Config, PRESETS, argv)
    if args.count_params:
        return print_size(args.preset)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    spec = MODELS[args.preset]
    sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else [1, 8, 32] if cuda else [1, 4]
    fast_dtype = weights_dtype(device)  # the LLM as load_llm loads it
    full_llm = llm_config(args.preset, toy_tokenizer(s1.INSTRUCTIONS))
    audio, codec = random_audio(args.preset, full_llm.hidden_size, device)  # as sampling runs it (fast mode)
    fast_audio = torch.compile(audio) if args.compile else audio  # --naive never compiles
    naive_audio = SeparateGuidance(audio)
    forwards = {"decoder": [], "llm": []}  # the batch size of every forward, counted as they happen
    audio.register_forward_pre_hook(lambda m, a: forwards["decoder"].append(len(a[0])))

    def run(conv, feats, naive):
        """One pass over the clips feats (N, frames, D): seconds spent per part. Fast: all N at once,
        the Converter once, one forward per step, bf16 autocast on a GPU. Naive: one clip at a time,
        two forwards per step (conditional, then null), float32."""
        seconds = dict.fromkeys(("prefill", "decoder", "codec"), 0.0)

        def timed(part, fn):  # the GPU runs ahead of the host: wait for it on both sides
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            out = fn()
            if cuda:
                torch.cuda.synchronize(device)
            seconds[part] += time.perf_counter() - t0
            return out

        gens = [torch.Generator(device).manual_seed(args.seed + i) for i in range(len(feats))]
        chunk = 1 if naive else len(feats)
        for i in range(0, len(feats), chunk):
            x, g = feats[i: i + chunk], gens[i: i + chunk]
            codes = torch.full((len(x), audio.config.n_q, n_audio), audio.config.bins, dtype=torch.long,
                               device=device)
            with nullcontext() if naive else autocast(device):
                cond, cond_mask = timed("prefill", lambda: conv.condition(x, [s1.TEMPLATE] * len(x)))
                codes = timed("decoder", lambda: sample.decode_tokens(
                    naive_audio if naive else fast_audio, *sample.guidance_batch(cond, cond_mask), codes, g, args.steps,
                    args.guidance_scale, args.temperature, args.top_k, args.mask_temperature))
            timed("codec", lambda: codec.decode(codes))
        return seconds

    rows, conv = [], None
    for mode in ("fast", "naive") if args.naive else ("fast",):
        dtype = torch.float32 if mode == "naive" else fast_dtype
        if mode == "naive":  # float32 throughout (on a GPU the weights are the bf16-rounded ones: the same timing)
            audio.float()
        if conv is None or conv.llm.dtype != dtype:
            conv = None  # the other precision's copy goes first
            conv = random_converter(args.preset, args.llm_layers, dtype, device)
            conv.llm.get_decoder().register_forward_pre_hook(
                lambda m, a, kw: forwards["llm"].append(len(kw["inputs_embeds"])), with_kwargs=True)
        if not rows:  # sizes and FLOPs, from the first models built
            n_frames = round(spec["seconds"] * FeatureConfig.fps)
            n_video = conv.n_video_tokens(n_frames)
            n_cond, n_audio = n_video + conv.max_text_tokens, round(spec["seconds"] * codec.frame_rate)
            silence = torch.zeros(1, codec.n_q, n_audio, dtype=torch.long, device=device)
            flops = dict(prefill=s1.prefill_flops(conv, n_video, n_cond),
                         decoder=args.steps * 2 * s2.forward_flops(audio.config, n_cond, n_audio),
                         codec=codec_flops(codec, silence))
            flops["total"] = sum(flops.values())
            params = dict(llm=sum(p.numel() for p in conv.llm.parameters()),
                          llm_layers=conv.llm.config.num_hidden_layers,
                          llm_layers_full=full_llm.num_hidden_layers,
                          vatt_audio=sum(p.numel() for p in audio.parameters()),
                          codec=sum(p.numel() for p in codec.parameters()))
        for B in sizes if mode == "fast" else [min(sizes)]:
            feats = torch.randn(B, n_frames, spec["feature_dim"], generator=torch.Generator().manual_seed(0))
            feats = feats.to(device)
            run(conv, feats, mode == "naive")  # warm-up: kernels chosen, --compile compiled, memory pooled
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            for calls in forwards.values():
                calls.clear()
            passes = sorted((run(conv, feats, mode == "naive") for _ in range(args.repeats)),
                            key=lambda s: sum(s.values()))
            seconds = passes[len(passes) // 2]  # the median pass
            seconds["total"] = sum(seconds.values())
            rows.append(dict(
                mode=mode, batch=1 if mode == "naive" else B, clips=B,
                dtype="float32" if mode == "naive" or not cuda else "bfloat16 autocast",
                ms_per_clip={k: 1000 * v / B for k, v in seconds.items()},
                clips_per_s=B / seconds["total"],
                tflops={k: flops[k] * B / v / 1e12 for k, v in seconds.items()},
                # on a CPU the process's high-water mark so far (it cannot be reset), model weights included
                peak_memory_gb=TrainingLog.peak_memory_gb(device),
                # the forwards of one timed pass: how many, and with how many sequences each
                **{f"{part}_forwards": dict(calls=len(b) // args.repeats, batch=sorted(set(b)))
                   for part, b in forwards.items()}))
    name = torch.cuda.get_device_name(device) if cuda else f"{device.type} ({torch.get_num_threads()} threads)"
    peak = TrainingLog.peak_tflops(device)
    naive = next((r for r in rows if r["mode"] == "naive"), None)
    for r in rows:
        r["percent_of_peak"] = 100 * r["tflops"]["total"] / peak if peak and r["dtype"] != "float32" else None
        r["speedup_vs_naive"] = naive["ms_per_clip"]["total"] / r["ms_per_clip"]["total"] if naive else None
    result = dict(preset=args.preset, device=name, torch=torch.__version__, peak_bf16_tflops=peak,
                  compile=args.compile, steps=args.steps, repeats=args.repeats, clip_seconds=spec["seconds"],
                  tokens=dict(condition=n_cond, audio=n_audio), params=params, flops_per_clip=flops, rows=rows)
    print_table(result)
    out = Path(args.out_dir) / "bench.json"
    save_json(result, out)
    print(f"wrote {out}")
    return 0


def print_table(r):
    """The benchmark's header lines and its table (Markdown, as docs/sampling-speed.md shows it)."""
    p, f = r["params"], r["flops_per_clip"]
    print(f"VATT sampling speed, preset {r['preset']}: {r['clip_seconds']:g} s clips ({r['tokens']['condition']} "
          f"condition + {r['tokens']['audio']} audio tokens), {r['steps']} steps; {r['device']}, torch {r['torch']}, "
          f"compile {r['compile']}")
    print(f"random weights: LLM {p['llm'] / 1e6:,.1f} M ({p['llm_layers']} of {p['llm_layers_full']} layers), "
          f"VATT Audio {p['vatt_audio'] / 1e6:,.1f} M, codec {p['codec'] / 1e6:,.1f} M; GFLOP per clip: prefill "
          f"{f['prefill'] / 1e9:,.1f}, decoder {f['decoder'] / 1e9:,.1f}, codec {f['codec'] / 1e9:,.1f}")
    print("| mode | batch | dtype | prefill ms | decoder ms | codec ms | total ms/clip | clips/s | TFLOP/s "
          "| % bf16 peak | peak mem GB | vs naive |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for x in r["rows"]:
        ms, peak, ratio = x["ms_per_clip"], x["percent_of_peak"], x["speedup_vs_naive"]
        print(f"| {x['mode']} | {x['batch']} | {x['dtype']} | {ms['prefill']:.1f} | {ms['decoder']:.1f} "
              f"| {ms['codec']:.1f} | {ms['total']:.1f} | {x['clips_per_s']:.3g} | {x['tflops']['total']:.3g} "
              f"| {'' if peak is None else f'{peak:.1f}'} | {x['peak_memory_gb']:.2f} "
              f"| {'' if ratio is None else f'{ratio:.2f}x'} |")


if __name__ == "__main__":
    sys.exit(main())
