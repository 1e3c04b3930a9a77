"""
Tests of the speed benchmark (`tools/bench.py`) and of what makes the sampler fast:
one batched forward per decoding step (the conditional and null passes together, paper §3.2.2
guidance), the Converter once per batch, the analytic FLOP counts (the stages' own, which the
bench and training's MFU use), and (on a GPU only) no host synchronisation inside the step loop.
Timings are measured, never asserted.
"""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools import bench  # noqa: E402
import sample as S  # noqa: E402
import stage2_audio  # noqa: E402
from stage1_caption import TEMPLATE, prefill_flops  # noqa: E402
from test_masked_modelling import BINS, COND_DIM, N_Q, PAPER, all_mask, conditions, gens, tiny_model  # noqa: E402


def counted_flops(fn):
    """FLOPs of fn() as torch's own counter sees them: 2 m n k per matmul, 4 L^2 d per attention head
    (attention forced onto the math kernel, whose matmuls it counts on a CPU), convolutions; no LSTM."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# -----------------------------------------------------------------------------
# the bench end to end on the toy preset: JSON fields and forward counts


def test_bench_toy_json_and_forward_counts(tmp_path, monkeypatch, capsys):
    steps, repeats, sizes = 2, 1, (2, 3)
    calls = []  # every VATT Audio forward of the run (warm-ups included): its number of sequences
    forward = stage2_audio.VATTAudio.forward

    def counting_forward(self, codes, *args):
        calls.append(len(codes))
        return forward(self, codes, *args)

    monkeypatch.setattr(stage2_audio.VATTAudio, "forward", counting_forward)
    assert bench.main(["--preset=toy", f"--steps={steps}", "--batch_sizes=2,3", f"--repeats={repeats}", "--naive",
                       f"--out_dir={tmp_path}", "--device=cpu"]) == 0
    # fast: per batch of B clips, exactly `steps` forwards of 2B sequences (conditional + null), per
    # pass (one warm-up + `repeats` timed); naive: 2 x steps forwards of 1 sequence per clip, over
    # the smallest batch's 2 clips
    want = [2 * B for B in sizes for _ in range((1 + repeats) * steps)] + [1] * ((1 + repeats) * 2 * steps * 2)
    assert calls == want

    r = json.loads((tmp_path / "bench.json").read_text())
    assert r["preset"] == "toy" and r["device"].startswith("cpu") and r["torch"] == torch.__version__
    assert r["peak_bf16_tflops"] is None and r["steps"] == steps and r["clip_seconds"] == 2.0
    assert r["tokens"] == {"condition": 34, "audio": 100}  # 10 video + 24 text tokens; 2 s at 50 Hz
    assert r["params"]["llm_layers"] == r["params"]["llm_layers_full"] == 2
    assert r["params"]["vatt_audio"] == 1_106_304
    # decoder: steps x 2 sequences x one forward of the toy VATT Audio (width 128, 4 layers, 4 heads
    # of 32, 64 bins, 34 + 100 tokens): 2 (134 x 4 (4 x 128 x 128 + 8 x 128^2) + 34 x 128^2
    # + 100 (32 x 128 + 4 x 128 x 64)) + 4 x 4 x 134^2 x 128 = 256,024,576
    assert r["flops_per_clip"]["decoder"] == steps * 2 * 256_024_576
    assert r["flops_per_clip"]["codec"] == 0  # the toy's DSP codec has no conv or LSTM layers
    assert r["flops_per_clip"]["total"] == steps * 2 * 256_024_576 + 34_148_352  # + the prefill (see below)
    assert [(x["mode"], x["batch"], x["clips"]) for x in r["rows"]] == [("fast", 2, 2), ("fast", 3, 3), ("naive", 1, 2)]
    for x in r["rows"]:
        B = x["clips"]
        if x["mode"] == "fast":  # one Converter prefill and `steps` decoder forwards per batch
            assert x["decoder_forwards"] == {"calls": steps, "batch": [2 * B]}
            assert x["llm_forwards"] == {"calls": 1, "batch": [B]}
        else:  # the released code's way: everything per clip, guidance as two forwards
            assert x["decoder_forwards"] == {"calls": 2 * steps * B, "batch": [1]}
            assert x["llm_forwards"] == {"calls": B, "batch": [1]}
            assert x["speedup_vs_naive"] == 1.0
        ms = x["ms_per_clip"]
        assert set(ms) == {"prefill", "decoder", "codec", "total"} and min(ms.values()) > 0
        assert ms["total"] == pytest.approx(ms["prefill"] + ms["decoder"] + ms["codec"])
        assert x["clips_per_s"] == pytest.approx(1000 / ms["total"])
        assert x["tflops"]["total"] == pytest.approx(r["flops_per_clip"]["total"] * x["clips_per_s"] / 1e12)
        assert x["dtype"] == "float32" and x["percent_of_peak"] is None and x["peak_memory_gb"] > 0
    out = capsys.readouterr().out
    assert "| mode | batch |" in out and out.count("\n| fast |") == 2 and out.count("\n| naive |") == 1


def test_count_params_prints_vatt_audio_at_the_preset_size_in_every_option_form(capsys):
    """--count_params: VATT Audio's size at the preset's, for its LLM's width and its codec's tables,
    with no data, checkpoint or download (the toy's: 128-wide states, 4 x 64 tokens of width 32)."""
    for argv in (["--count_params"], ["--count_params=true"], ["--count_params", "true"]):
        assert bench.main(["--preset=toy", *argv]) == 0
        assert capsys.readouterr().out == "toy: 1,106,304 parameters (1.1 M), plus the frozen codebooks\n"


def test_fast_mode_times_vatt_audio_as_sampling_loads_it(monkeypatch):
    """The fast rows' VATT Audio is stage2_audio.frozen's, as load_vatt_audio gives sampling: its
    Linear weights in the dtype a GPU gets (bf16, here forced on the CPU), the rest float32, frozen."""
    monkeypatch.setattr(stage2_audio, "weights_dtype", lambda device: torch.bfloat16)
    audio, _ = bench.random_audio("toy", 128, torch.device("cpu"))
    linears = [m for m in audio.modules() if isinstance(m, nn.Linear)]
    assert linears and {m.weight.dtype for m in linears} == {torch.bfloat16}
    assert {m.weight.dtype for m in audio.modules() if isinstance(m, nn.LayerNorm)} == {torch.float32}
    assert audio.codebooks.dtype == torch.float32 and not audio.training
    assert not any(p.requires_grad for p in audio.parameters())


# -----------------------------------------------------------------------------
# the analytic FLOP counts (stage2_audio.forward_flops, stage1_caption.prefill_flops) against torch's counter


def test_vatt_audio_forward_flops_match_torch_counter():
    model = tiny_model()
    B, Lc, T = 3, 6, 10
    cond, cond_mask = conditions(B, Lc)
    counted = counted_flops(lambda: model(all_mask(B, T), cond, cond_mask))
    assert counted == B * stage2_audio.forward_flops(model.config, Lc, T) == B * 901_120


def test_converter_prefill_flops_match_torch_counter():
    conv = bench.random_converter("toy", 0, torch.float32, torch.device("cpu"))
    feats = torch.randn(2, 10, 256)  # 2 s of 5 fps toy-ViT features
    n_video = conv.n_video_tokens(10)
    n_tokens = n_video + conv.max_text_tokens
    counted = counted_flops(lambda: conv.condition(feats, [TEMPLATE] * 2))
    assert counted == 2 * prefill_flops(conv, n_video, n_tokens) == 2 * 34_148_352


def test_codec_flops_match_torch_counter_and_lstm_closed_form():
    from codec import build_audiogen_codec

    torch.manual_seed(0)
    codec = build_audiogen_codec(n_filters=4, dimension=16, bins=64)
    B, T = 2, 7
    codes = torch.randint(0, 64, (B, 4, T))
    lstm = next(m for m in codec.decoder.modules() if isinstance(m, nn.LSTM))
    H = lstm.hidden_size  # input width = hidden width in SEANet's LSTM
    lstm_flops = 2 * lstm.num_layers * 4 * H * (H + H) * T * B
    assert bench.codec_flops(codec, codes) == counted_flops(lambda: codec.decode(codes)) + lstm_flops


# -----------------------------------------------------------------------------
# the naive baseline: the same draws, two forwards per step


class IndexedStub(nn.Module):
    """Fixed logits per sample (its index is cond[:, 0, 0]): C on a conditional row, U on a null row;
    records every call's null_cond."""

    def __init__(self, C, U):
        super().__init__()
        self.config = SimpleNamespace(bins=BINS)
        self.C, self.U, self.calls = C, U, []

    def forward(self, codes, cond, cond_mask, null_cond=None):
        self.calls.append(null_cond.tolist())
        i = cond[:, 0, 0].long()
        return torch.where(null_cond[:, None, None, None], self.U[i], self.C[i])


def test_naive_guidance_draws_the_same_tokens_with_two_forwards_per_step():
    """bench.SeparateGuidance under the unchanged decode_tokens: per step one forward of the B
    conditional rows, then one of the B null rows, and the batched forward's draws (§3.2.2)."""
    B, T, steps = 3, 6, 4
    g = torch.Generator().manual_seed(0)
    C, U = torch.randn(B, N_Q, T, BINS, generator=g), torch.randn(B, N_Q, T, BINS, generator=g)
    cond = torch.arange(B, dtype=torch.float)[:, None, None].expand(B, 2, COND_DIM).contiguous()
    cond_mask = torch.ones(B, 2, dtype=torch.long)
    outs = []
    for separate in (False, True):
        stub = IndexedStub(C, U)
        model = bench.SeparateGuidance(stub) if separate else stub
        outs.append(S.decode_tokens(model, *S.guidance_batch(cond, cond_mask), all_mask(B, T), gens([1, 2, 3]),
                                    steps=steps, guidance_scale=3.0, temperature=1.0, top_k=BINS, mask_temperature=2.0))
        if separate:
            assert stub.calls == [[False] * B, [True] * B] * steps
        else:
            assert stub.calls == [[False] * B + [True] * B] * steps
    assert torch.equal(outs[0], outs[1])


# -----------------------------------------------------------------------------
# no host synchronisation in the step loop (only a GPU has one to check)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="host synchronisation exists only on a GPU")
def test_decode_tokens_never_waits_for_the_gpu():
    device = torch.device("cuda")
    model = tiny_model().to(device)
    B, T = 2, 10
    cond, cond_mask = conditions(B, pad=(1,))
    codes = all_mask(B, T).to(device)
    generators = [torch.Generator(device).manual_seed(s) for s in (1, 2)]
    cond, cond_mask = cond.to(device), cond_mask.to(device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        with S.autocast(device):
            out = S.decode_tokens(model, *S.guidance_batch(cond, cond_mask), codes, generators, **{**PAPER, "steps": 8})
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert not (out == BINS).any()
