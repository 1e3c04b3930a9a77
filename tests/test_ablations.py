"""
The ablations (tools/ablations.py): appendix A's masking-ratio distributions (Table 5) against their
closed forms, Table 4's VATT-V (no LLM states in its condition) and VATT-Cross-Attn (the condition
reaches the audio only through cross-attention), and a micro run of every variant on the tiny toy
world of conftest.py that writes the table.
"""
import json
import math

import pytest
import torch

from tools import ablations, sample_split
import sample
import stage2_audio as s2
from conftest import TINY_STAGE2
from stage1_caption import load_converter
from test_masked_modelling import PAPER, Phi, phi

N = 50_000  # draws per distribution: the mean is checked to 4 standard errors


def truncnorm_mean(mu, sigma, low=0.5, high=1.0):
    a, b = (low - mu) / sigma, (high - mu) / sigma
    return mu + sigma * (phi(a) - phi(b)) / (Phi(b) - Phi(a))


def sine_mean(progress):
    return 0.25 + 0.7 * math.sin(math.pi / 2 * progress)


# -----------------------------------------------------------------------------
# appendix A, Table 5: the masking-ratio distributions


@pytest.mark.parametrize("dist, mean, std, progress, want, support", [
    ("truncnorm", 0.75, 0.25, 0.0, truncnorm_mean(0.75, 0.25), (0.5, 1.0)),  # §3.2.2, the paper's
    ("truncnorm", 1.0, 0.05, 0.0, truncnorm_mean(1.0, 0.05), (0.5, 1.0)),  # the toy preset
    ("truncnorm", 0.55, 0.25, 0.0, truncnorm_mean(0.55, 0.25), (0.5, 1.0)),
    ("truncnorm", 0.95, 0.25, 0.0, truncnorm_mean(0.95, 0.25), (0.5, 1.0)),
    ("uniform", 0.75, 0.25, 0.0, 0.5, (0.0, 1.0)),
    ("arccos", 0.75, 0.25, 0.0, 2 / math.pi, (0.0, 1.0)),  # E cos(pi/2 u) = 2 / pi
    ("sine", 0.75, 0.25, 0.0, truncnorm_mean(sine_mean(0.0), 0.25), (0.5, 1.0)),  # the mean starts at 0.25,
    ("sine", 0.75, 0.25, 0.5, truncnorm_mean(sine_mean(0.5), 0.25), (0.5, 1.0)),
    ("sine", 0.75, 0.25, 1.0, truncnorm_mean(sine_mean(1.0), 0.25), (0.5, 1.0)),  # ends at 0.95
])
def test_appendix_a_mask_ratio_distribution_means(dist, mean, std, progress, want, support):
    r = s2.training_ratios(dist, N, torch.Generator().manual_seed(0), mean, std, progress).double()
    assert r.shape == (N,) and support[0] <= r.min() and r.max() <= support[1]
    se = r.std().item() / math.sqrt(N)
    assert abs(r.mean().item() - want) < 4 * se, (dist, progress, r.mean().item(), want, 4 * se)


def test_appendix_a_sine_mean_moves_with_training():
    draws = [s2.training_ratios("sine", N, torch.Generator().manual_seed(0), 0.75, 0.25, p).mean().item()
             for p in (0.0, 0.5, 1.0)]
    assert draws[0] < draws[1] < draws[2]


def test_appendix_a_arccos_is_cos_of_a_uniform():
    u = torch.rand(1000, generator=torch.Generator().manual_seed(3))
    r = s2.training_ratios("arccos", 1000, torch.Generator().manual_seed(3), 0.75, 0.25)
    assert torch.equal(r, torch.cos(math.pi / 2 * u))


def test_3_2_2_default_draw_bit_identical():
    """The default draw is §3.2.2's, unchanged: TN ratios, exact-count masks, then the null conditions."""
    shape = (4, 25)
    mask, null_cond = s2.training_draw(16, shape, torch.Generator().manual_seed(5), 0.75, 0.25, 0.1)
    g = torch.Generator().manual_seed(5)
    ratios = s2.truncnorm_ratios(16, g, 0.75, 0.25)
    want_mask = s2.random_mask(ratios, (16,) + shape, g)
    want_null = torch.rand(16, generator=g) < 0.1
    assert torch.equal(mask, want_mask) and torch.equal(null_cond, want_null)
    again = s2.training_draw(16, shape, torch.Generator().manual_seed(5), 0.75, 0.25, 0.1, "truncnorm", 0.7)
    assert torch.equal(again[0], mask) and torch.equal(again[1], null_cond)
    # every distribution keeps one ratio per sample and an exact masked count
    for dist in s2.CHOICES["mask_dist"]:
        g = torch.Generator().manual_seed(1)
        m, _ = s2.training_draw(16, shape, g, 0.75, 0.25, 0.1, dist, 0.3)
        r = s2.training_ratios(dist, 16, torch.Generator().manual_seed(1), 0.75, 0.25, 0.3)
        assert m.flatten(1).sum(-1).tolist() == (r * 100).round().clamp(min=1).long().tolist()


def test_unknown_ablation_option_is_one_line():
    with pytest.raises(SystemExit, match="--mask_dist=cosine: choose one of truncnorm, uniform, arccos, sine"):
        s2.main(["--mask_dist=cosine"])


# -----------------------------------------------------------------------------
# Table 4: VATT-V and VATT-Cross-Attn


def test_table_4_vatt_v_condition_holds_no_llm_states(world):
    conv = load_converter(world / "out" / "stage1.pt", torch.device("cpu"))
    calls = []
    conv.llm.get_decoder().register_forward_hook(lambda *a: calls.append(1))
    feats = torch.randn(3, 10, conv.proj.in_features)
    cond, mask = s2.audio_condition(conv, feats, ["a low bell", "two drum hits", "x"], "visual")
    assert not calls  # the LLM never ran
    assert torch.equal(cond, conv.video_embeds(feats)) and cond.shape == (3, conv.n_video_tokens(10), conv.hidden_size)
    assert mask.tolist() == [[1] * cond.shape[1]] * 3
    other, _ = s2.audio_condition(conv, feats, ["a high bell", "", "y"], "visual")
    assert torch.equal(cond, other)  # no text input
    s2.audio_condition(conv, feats, ["a low bell"] * 3, "llm")
    assert calls  # the paper's condition runs the LLM


def tiny_config(**kw):
    return s2.ModelConfig(cond_dim=12, n_q=4, bins=16, codebook_dim=8, dim=32, n_multiway=1, n_plain=1, n_head=2,
                          head_dim=16, dropout=0.0, max_len=64, **kw)


def test_table_4_cross_attn_sees_the_condition_only_through_cross_attention():
    torch.manual_seed(0)
    model = s2.CrossAttnAudio(tiny_config(architecture="cross-attn"), torch.randn(4, 16, 8)).eval()
    codes = torch.randint(0, 17, (2, 4, 10))  # some MASK (= 16)
    cond_a, cond_b = torch.randn(2, 6, 12), torch.randn(2, 6, 12)
    cond_mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        a, b = model(codes, cond_a, cond_mask), model(codes, cond_b, cond_mask)
        assert a.shape == (2, 4, 10, 16) and not torch.allclose(a, b)
        hooks = [block.cross_attn.register_forward_hook(lambda m, i, out: torch.zeros_like(out)) for block in model.blocks]
        a0, b0 = model(codes, cond_a, cond_mask), model(codes, cond_b, cond_mask)
        assert torch.equal(a0, b0)  # with the cross-attention silenced, the condition has no effect
        assert not torch.allclose(a0, a)
        for h in hooks:
            h.remove()
        # padded condition tokens are never read, and the null condition ignores the condition
        padded = cond_a.clone()
        padded[1, :2] = 99.0
        assert torch.allclose(model(codes, padded, cond_mask)[1], a[1], atol=1e-6)
        drop = torch.ones(2, dtype=torch.bool)
        assert torch.equal(model(codes, cond_a, cond_mask, drop), model(codes, cond_b, cond_mask, drop))


def test_table_4_cross_attn_budget_and_interface():
    """The same blocks' parameter count as VATT Audio at the toy's width and depth, and sample.py's
    decoder runs it as it runs VATT Audio."""
    toy = s2.ModelConfig(cond_dim=128, n_q=4, bins=64, codebook_dim=32, dim=128, n_multiway=2, n_plain=2, n_head=4,
                         head_dim=32, dropout=0.0, max_len=1000)
    vatt, cross = s2.audio_model(toy), s2.audio_model(s2.ModelConfig(**{**toy.__dict__, "architecture": "cross-attn"}))
    assert isinstance(vatt, s2.VATTAudio) and isinstance(cross, s2.CrossAttnAudio)

    def n_linear(modules):
        return sum(m.weight.numel() for m in modules.modules() if isinstance(m, torch.nn.Linear))

    assert n_linear(cross.blocks) == n_linear(vatt.multiway_layers) + n_linear(vatt.plain_layers)
    model = s2.CrossAttnAudio(tiny_config(architecture="cross-attn"), torch.randn(4, 16, 8)).eval()
    codes = torch.full((2, 4, 10), 16)
    guidance = sample.guidance_batch(torch.randn(2, 6, 12), torch.ones(2, 6, dtype=torch.long))
    out = sample.decode_tokens(model, *guidance, codes,
                               [torch.Generator().manual_seed(i) for i in range(2)], **{**PAPER, "steps": 4})
    assert out.shape == codes.shape and (out < 16).all()


# -----------------------------------------------------------------------------
# the micro ablation run: every variant, a few steps each, on the tiny world


@pytest.fixture(scope="module")
def micro_run(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("ablations")
    args = [f"--data_json={world}/v2a_instruction.json", f"--features_dir={world}/features",
            f"--stage1={world}/out/stage1.pt", f"--out_dir={out}/runs", "--jobs=1",
            f"--stage2_args={' '.join(TINY_STAGE2)}", "--sample_args=--steps=2"]
    return ablations.main(args + [f"--table={out}/ablations.json"]), out, args


def test_ablations_micro_run_writes_the_table(micro_run):
    rc, out, args = micro_run
    assert rc == 0
    table = json.loads((out / "ablations.json").read_text())
    assert [r["variant"] for r in table["rows"]] == list(ablations.VARIANTS) and not table["failed"]
    for row in table["rows"]:
        assert all(row[k] is not None for k in ("class_acc", "onset_f1", "count_acc", "val_loss")), row
        text = row["variant"] != "vatt-v"
        assert (row["register_true_caption"] is not None) == text and (row["register_follows_swapped"] is not None) == text
    seeds = {r["variant"]: r["seed"] for r in table["rows"]}
    assert seeds["default"] == 0 and seeds["default-seed1"] == 1
    md = (out / "ablations.md").read_text()
    assert all(f"| {name}: " in md for name in ablations.VARIANTS)
    # resuming redoes nothing: the same table from the same files
    before = (out / "runs" / "uniform" / "stage2.pt").stat().st_mtime_ns
    assert ablations.main(args + ["--variants=uniform", f"--table={out}/again.json"]) == 0
    assert (out / "runs" / "uniform" / "stage2.pt").stat().st_mtime_ns == before
    again = json.loads((out / "again.json").read_text())["rows"]
    assert again == [r for r in table["rows"] if r["variant"] == "uniform"]


def test_ablations_checkpoints_say_what_they_are(micro_run, world):
    _, out, _ = micro_run
    runs = out / "runs"
    cross, ckpt = s2.load_vatt_audio(runs / "cross-attn" / "stage2.pt", torch.device("cpu"))
    assert isinstance(cross, s2.CrossAttnAudio) and ckpt["model_config"]["architecture"] == "cross-attn"
    visual, ckpt = s2.load_vatt_audio(runs / "vatt-v" / "stage2.pt", torch.device("cpu"))
    assert isinstance(visual, s2.VATTAudio) and ckpt["model_config"]["condition"] == "visual"
    assert ckpt["config"]["mask_dist"] == "truncnorm"
    assert torch.load(runs / "sine" / "stage2.pt", weights_only=True)["config"]["mask_dist"] == "sine"
    assert not (runs / "vatt-v" / "samples" / "gt_caption").exists()
    with pytest.raises(SystemExit, match="VATT-V"):
        sample_split.main([f"--ckpt_dir={runs / 'vatt-v'}", f"--data_json={world}/v2a_instruction.json",
                           "--prompt_field=output", "--steps=1"])
