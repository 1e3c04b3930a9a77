"""
Tests of the masked audio-token modelling of VATT Audio (paper §3.2.1 eq. 2 and §3.2.2):
training masks, the loss, classifier-free guidance and the iterative parallel decoder.

Every test names the paper section it checks (test_3_2_1_* = audio token decoder and eq. 2,
test_3_2_2_* = masking design and iterative parallel decoding). A tiny random VATTAudio (CPU, a
few milliseconds a forward) stands in for a trained one: these are properties that hold for any
weights.
"""
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # so `import sample` works however pytest is started
import sample as S  # noqa: E402
from stage2_audio import ModelConfig, VATTAudio, masked_loss, random_mask, truncnorm_ratios  # noqa: E402

BINS, N_Q, COND_DIM = 16, 4, 8
MASK = BINS


def tiny_model(seed=0):
    """A tiny VATTAudio with random weights and random codebooks, in eval mode."""
    cfg = ModelConfig(cond_dim=COND_DIM, n_q=N_Q, bins=BINS, codebook_dim=8, dim=32, n_multiway=1,
                      n_plain=1, n_head=2, head_dim=16, dropout=0.0, max_len=1000)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VATTAudio(cfg, torch.randn(N_Q, BINS, 8))
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def conditions(B, Lc=6, seed=0, pad=()):
    """Random LLM states (B, Lc, COND_DIM) and a cond_mask; sample b of `pad` has its last 2 rows padded."""
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(B, Lc, COND_DIM, generator=g)
    cond_mask = torch.ones(B, Lc, dtype=torch.long)
    for b in pad:
        cond_mask[b, -2:] = 0
    return cond, cond_mask


def all_mask(B, T):
    return torch.full((B, N_Q, T), MASK, dtype=torch.long)


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def n_masked(codes):
    return (codes == MASK).flatten(1).sum(-1)  # (B,)


# the paper's sampling settings (sample.Config's defaults), which a test may override
PAPER = {k: getattr(S.Config(), k) for k in ("steps", "guidance_scale", "temperature", "top_k", "mask_temperature")}


def decode(model, cond, cond_mask, codes, seeds, negative=None, **kw):
    history = []
    out = S.decode_tokens(model, *S.guidance_batch(cond, cond_mask, negative), codes, gens(seeds), **{**PAPER, **kw},
                          history=history)
    return out, history


# -----------------------------------------------------------------------------
# §3.2.2 masking distribution: r ~ Normal(0.75, 0.25) truncated to [0.5, 1], exact-count masks


def Phi(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def phi(z):
    return math.exp(-z * z / 2) / math.sqrt(2 * math.pi)


def test_3_2_2_mask_ratio_truncated_normal():
    n, mu, sigma = 50_000, 0.75, 0.25
    r = truncnorm_ratios(n, torch.Generator().manual_seed(0), 0.75, 0.25).double()
    assert r.shape == (n,)
    assert r.min() >= 0.5 and r.max() <= 1.0
    # a normal truncated symmetrically at +-1 sigma (standardised moments of Z | |Z| < 1)
    Z = Phi(1) - Phi(-1)
    m2 = 1 - 2 * phi(1) / Z  # E[Z^2]
    m4 = 3 * m2 - 2 * phi(1) / Z  # E[Z^4] (= 3 m2 - 2 a^3 phi(a) / Z, a = 1)
    sd = sigma * math.sqrt(m2)
    assert abs(sd - 0.1349) < 5e-5  # the std of TN(0.75, 0.25) on [0.5, 1], to 4 places
    se_mean = sd / math.sqrt(n)
    se_sd = sd * math.sqrt((m4 / m2**2 - 1) / (4 * n))  # delta method for the sample sd
    assert abs(r.mean().item() - mu) < 4 * se_mean, (r.mean().item(), 4 * se_mean)
    assert abs(r.std().item() - sd) < 4 * se_sd, (r.std().item(), sd, 4 * se_sd)
    # and the whole shape: Kolmogorov-Smirnov distance to the truncated-normal CDF (1% level: 1.63/sqrt(n))
    x = r.sort().values
    cdf = torch.tensor([(Phi((v - mu) / sigma) - Phi(-1)) / Z for v in x.tolist()], dtype=torch.float64)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    ks = torch.maximum(i / n - cdf, cdf - (i - 1) / n).max().item()
    assert ks < 1.63 / math.sqrt(n), ks


@pytest.mark.parametrize("ratios, shape", [
    ([0.5, 0.63, 0.777, 0.91, 1.0], (5, 4, 25)),  # N = 100
    ([0.5, 0.7, 0.99], (3, 4, 7)),  # N = 28
    ([0.3, 0.4, 0.49], (3, 1, 1)),  # N = 1: round(r N) = 0 -> 1 (never mask nothing)
    ([0.2, 0.6], (2, 2, 1)),  # N = 2: round(0.4) = 0 -> 1; round(1.2) = 1
])
def test_3_2_2_random_mask_exact_count(ratios, shape):
    r = torch.tensor(ratios)
    mask = random_mask(r, shape, torch.Generator().manual_seed(0))
    assert mask.shape == shape and mask.dtype == torch.bool
    N = shape[1] * shape[2]
    want = [max(1, round(float(x) * N)) for x in r]
    assert mask.flatten(1).sum(-1).tolist() == want


def test_3_2_2_random_mask_positions_uniform():
    """Every position is equally likely to be masked (a random permutation, not a prefix)."""
    B, L, T, n = 4000, 4, 5, 7  # N = 20, 7 masked per sample
    mask = random_mask(torch.full((B,), n / (L * T)), (B, L, T), torch.Generator().manual_seed(1))
    freq = mask.double().mean(0)
    p = n / (L * T)
    se = math.sqrt(p * (1 - p) / B)
    assert (freq - p).abs().max() < 4 * se, freq
    assert not torch.equal(mask[0], mask[1])  # each sample its own draw


# -----------------------------------------------------------------------------
# §3.2.2 cosine schedule


def test_3_2_2_reveal_counts_match_released_sampler():
    assert S.reveal_counts(2000, 16) == [10, 29, 48, 66, 84, 101, 116, 132, 146, 157, 169, 177, 185, 190, 194, 196]


def released_masked_after(n0, steps):
    """The released sampler's count of tokens still masked after each step (generate_audio_sample,
    one clip of n0 masked tokens), for a batch of n0 values at once: r = (i + 1) / T made a float32
    tensor, gamma = cos(r pi / 2) clamped to [1e-10, 1], num = floor(gamma N0), then, except on the
    last step, max(1, min(still masked - 1, num)). A token already known is never masked again
    (its confidence is +inf there), so no count exceeds what is still masked."""
    remaining, out = n0.clone(), []
    for i in range(steps):
        r = torch.tensor((i + 1) / steps).repeat(len(n0))
        gamma = (r * torch.pi / 2).cos().clamp(1e-10, 1.0)
        num = torch.floor(gamma * n0).long()
        if i != steps - 1:
            num = torch.minimum(remaining - 1, num).clamp(min=1)
        remaining = torch.minimum(num, remaining)
        out.append(remaining)
    return out


def test_3_2_2_cosine_schedule_is_the_released_arithmetic_everywhere():
    """Every N0 from 0 to 8000 in 4 to 64 steps: the same count after every step as the released
    sampler (float32 in their order, their clamp: one token kept masked until the last step)."""
    n0 = torch.arange(0, 8001)
    for steps in range(4, 65):
        remaining = n0
        for t, want in enumerate(released_masked_after(n0, steps), start=1):
            remaining = S.cosine_n_masked(n0, remaining, t, steps)
            assert torch.equal(remaining, want), (steps, t, (remaining != want).nonzero()[:3].flatten().tolist())


def test_3_2_2_a_lone_masked_token_waits_for_the_last_step():
    """Where float rounding and the clamp matter: 1499 tokens in 16 steps, and fewer tokens than steps."""
    assert S.reveal_counts(3, 8) == [1, 1, 0, 0, 0, 0, 0, 1]
    assert sum(S.reveal_counts(1499, 16)) == 1499


@pytest.mark.parametrize("N, steps", [(2000, 16), (2000, 12), (500, 10), (40, 8), (16, 16), (17, 16), (3, 16),
                                      (1, 4), (1000, 1)])
def test_3_2_2_reveal_counts_sum_to_n(N, steps):
    counts = S.reveal_counts(N, steps)
    assert len(counts) == steps and sum(counts) == N and min(counts) >= 0
    if N >= steps:
        assert min(counts) >= 1  # at least one token revealed per step
    # masked after step t follows floor(N cos(pi/2 t/T)) wherever the >= 1 clamp does not bite
    left = N - torch.tensor(counts).cumsum(0)
    for t in range(1, steps):
        assert left[t - 1] <= max(math.floor(N * math.cos(math.pi / 2 * t / steps) + 1e-6), 1)


# -----------------------------------------------------------------------------
# §3.2.2 iterative parallel decoding: invariants of decode_tokens on a tiny random model


@pytest.mark.parametrize("T, steps", [(10, 8), (2, 12), (25, 16)])
def test_3_2_2_decoding_fills_every_mask_and_keeps_revealed(model, T, steps):
    B = 2
    cond, cond_mask = conditions(B, pad=(1,))
    out, history = decode(model, cond, cond_mask, all_mask(B, T), [1, 2], steps=steps)
    assert len(history) == steps and torch.equal(out, history[-1])
    assert not (out == MASK).any()  # no MASK survives
    assert out.min() >= 0 and out.max() < BINS
    for t in range(steps):  # a revealed token never changes again
        revealed = history[t] != MASK
        for later in history[t + 1:]:
            assert torch.equal(later[revealed], history[t][revealed])


def test_3_2_2_decoding_follows_the_cosine_schedule_per_sample(model):
    B, T, steps = 3, 10, 8
    cond, cond_mask = conditions(B)
    codes = all_mask(B, T)
    codes[0, :, :3] = 5  # sample 0 starts with 12 known tokens: its own N0
    out, history = decode(model, cond, cond_mask, codes, [1, 2, 3], steps=steps)
    n0 = remaining = n_masked(codes)
    for t in range(1, steps + 1):
        want = S.cosine_n_masked(n0, remaining, t, steps)
        assert n_masked(history[t - 1]).tolist() == want.tolist(), t
        remaining = want
    for b in range(B):
        left = [int(n0[b])] + [n_masked(h)[b].item() for h in history]
        assert [x - y for x, y in zip(left, left[1:])] == S.reveal_counts(int(n0[b]), steps)


def test_3_2_2_one_batched_forward_per_step(model, monkeypatch):
    """exactly `steps` forwards; the conditional and null passes share one batch of 2B."""
    B, T, steps = 3, 6, 5
    cond, cond_mask = conditions(B, pad=(2,))
    calls = []
    forward = model.forward

    def counting_forward(codes, c, cm, null_cond=None):
        calls.append((codes.clone(), c.clone(), cm.clone(), null_cond.clone()))
        return forward(codes, c, cm, null_cond)

    monkeypatch.setattr(model, "forward", counting_forward)
    decode(model, cond, cond_mask, all_mask(B, T), [1, 2, 3], steps=steps)
    assert len(calls) == steps
    for codes, c, cm, drop in calls:
        assert codes.shape == (2 * B, N_Q, T) and torch.equal(codes[:B], codes[B:])
        assert torch.equal(c, torch.cat([cond, cond])) and torch.equal(cm, torch.cat([cond_mask, cond_mask]))
        assert drop.tolist() == [False] * B + [True] * B


def test_3_2_2_decoding_independent_of_batch_composition(model):
    """per-sample counts and draws: a batch of 3 == three runs of 1 with the same seeds."""
    B, T, steps, seeds = 3, 10, 8, [11, 22, 33]
    cond, cond_mask = conditions(B, seed=3, pad=(1,))
    codes = all_mask(B, T)
    codes[0, :, :4] = torch.arange(4)  # a different N0 for sample 0 (in-painting)
    out, history = decode(model, cond, cond_mask, codes, seeds, steps=steps)
    for b in range(B):
        out_b, history_b = decode(model, cond[b:b + 1], cond_mask[b:b + 1], codes[b:b + 1], seeds[b:b + 1], steps=steps)
        assert [n_masked(h[b:b + 1]).item() for h in history] == [n_masked(h).item() for h in history_b]
        assert torch.equal(out[b], out_b[0]), b


def test_3_2_2_inpainting_keeps_known_tokens(model):
    """given tokens come back unchanged and the schedule counts only the unknown ones."""
    B, T, steps = 3, 10, 8
    g = torch.Generator().manual_seed(5)
    known = torch.randint(0, BINS, (B, N_Q, T), generator=g)
    given = torch.rand(B, N_Q, T, generator=g) < torch.tensor([0.3, 0.6, 1.0])[:, None, None]  # sample 2: all known
    codes = torch.where(given, known, torch.full_like(known, MASK))
    cond, cond_mask = conditions(B)
    out, history = decode(model, cond, cond_mask, codes, [1, 2, 3], steps=steps)
    assert not (out == MASK).any()
    for h in history:
        assert torch.equal(h[given], known[given])
    assert torch.equal(out[2], known[2])
    n0 = n_masked(codes)
    assert n0[2] == 0 and 0 < n0[0] < N_Q * T
    for b in range(B):
        left = [int(n0[b])] + [n_masked(h)[b].item() for h in history]
        assert [a - c for a, c in zip(left, left[1:])] == S.reveal_counts(int(n0[b]), steps)


def test_3_2_2_gumbel_noise_is_standard_gumbel():
    """G = -log(-log U) ~ Gumbel(0, 1): finite (even at U = 0), mean Euler's gamma, variance pi^2/6."""
    M = 100_000
    G = S.gumbel(S.noise([torch.Generator().manual_seed(0)], (M,), "cpu")[0]).double()
    assert torch.isfinite(G).all() and torch.isfinite(S.gumbel(torch.tensor([0.0, 1.0]))).all()
    sd = math.pi / math.sqrt(6)
    assert abs(G.mean().item() - 0.5772156649) < 4 * sd / math.sqrt(M)
    assert abs(G.var().item() - sd**2) < 4 * sd**2 * math.sqrt((5.4 - 1) / M)  # excess kurtosis 2.4
    # P(G <= 0) = exp(-1)
    q = math.exp(-1)
    assert abs((G <= 0).double().mean().item() - q) < 4 * math.sqrt(q * (1 - q) / M)


def test_3_2_2_gumbel_top_k_is_sampling_without_replacement():
    """Keeping the k most confident of log p_i + G_i draws k items without replacement from p
    (paper §3.2.2, "gumbel-top-k trick")."""
    p = torch.tensor([0.4, 0.25, 0.15, 0.12, 0.08], dtype=torch.float64)
    M, k = 200_000, 2
    g = torch.Generator().manual_seed(0)
    confidence = p.log().float() + S.gumbel(S.noise([g], (M, 5), "cpu")[0])
    remask = S.remask_least_confident(confidence, torch.ones(M, 5, dtype=torch.bool), torch.full((M,), 5 - k))
    kept = ~remask
    assert (kept.sum(-1) == k).all()
    # exact inclusion probability: P(i first) + sum_j P(j first) P(i second | j first)
    exact = torch.tensor([p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(5) if j != i) for i in range(5)])
    freq = kept.double().mean(0)
    se = (exact * (1 - exact) / M).sqrt()
    assert ((freq - exact).abs() < 3 * se).all(), (freq, exact)
    assert (freq - 2 * p).abs().max() > 10 * se.max()  # the test can tell this from "proportional to p"


# -----------------------------------------------------------------------------
# eq. 2: the loss on masked tokens only; logits[b, l, t] predicts codes[b, l, t]


def test_3_2_1_loss_ignores_unmasked_positions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, N_Q, 5, BINS, generator=g)
    codes = torch.randint(0, BINS, (2, N_Q, 5), generator=g)
    mask = torch.rand(2, N_Q, 5, generator=g) < 0.5
    base = masked_loss(logits, codes, mask, label_smoothing=0.1)
    changed = logits.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), BINS, generator=g) * 10
    assert torch.equal(masked_loss(changed, codes, mask, label_smoothing=0.1), base)
    b, l, t = mask.nonzero()[0].tolist()
    changed[b, l, t, codes[b, l, t]] += 3.0
    assert not torch.allclose(masked_loss(changed, codes, mask, label_smoothing=0.1), base)


def test_3_2_1_loss_is_label_smoothed_cross_entropy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, N_Q, 3, BINS, generator=g, dtype=torch.float64)
    codes = torch.randint(0, BINS, (2, N_Q, 3), generator=g)
    mask = torch.zeros(2, N_Q, 3, dtype=torch.bool)
    mask[0, 1, 2] = mask[1, 3, 0] = mask[1, 0, 1] = True
    eps, terms = 0.1, []
    for b, l, t in mask.nonzero().tolist():
        logp = logits[b, l, t].log_softmax(-1)
        terms.append(-(1 - eps) * logp[codes[b, l, t]] - eps / BINS * logp.sum())
    want = torch.stack(terms).mean()
    assert torch.allclose(masked_loss(logits, codes, mask, label_smoothing=eps), want, rtol=1e-12, atol=0)


def test_3_2_1_head_l_predicts_level_l():
    """Structural: head l's output appears at logits[:, l, t] for every t, and the loss pairs it with codes[:, l, :]."""
    model = tiny_model()
    target = torch.tensor([3, 7, 11, 14])  # one class per level
    with torch.no_grad():
        model.final_norm.weight.zero_()
        model.final_norm.bias.fill_(1.0)  # every audio position -> the all-ones vector
        for l, head in enumerate(model.heads):
            head.weight.zero_()
            head.weight[target[l]] = 1.0
        cond, cond_mask = conditions(2)
        logits = model(all_mask(2, 6), cond, cond_mask)
    assert logits.shape == (2, N_Q, 6, BINS)
    assert (logits.argmax(-1) == target[None, :, None]).all()
    codes = target[None, :, None].expand(2, N_Q, 6)
    full = torch.ones(2, N_Q, 6, dtype=torch.bool)
    assert masked_loss(logits, codes, full, label_smoothing=0.0) < 1e-6
    assert masked_loss(logits, codes.flip(1), full, label_smoothing=0.0) > 10  # levels swapped


def test_3_2_1_overfit_one_example_level_time_order():
    """End to end: a tiny model trained on one all-MASK example learns codes[l, t] at logits[l, t]
    (the released code flattens heads and targets in different orders; a mismatch would train the
    model to put the targets at permuted positions)."""
    model = tiny_model(seed=1).train()
    T = 6
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, BINS, (1, N_Q, T), generator=g)
    assert not torch.equal(codes, codes.flatten(1).view(1, T, N_Q).transpose(1, 2))  # order matters
    cond, cond_mask = conditions(1)
    full = torch.ones_like(codes, dtype=torch.bool)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):  # about 30 steps suffice; stop as soon as every (l, t) is right
        logits = model(all_mask(1, T), cond, cond_mask)
        if torch.equal(logits.argmax(-1), codes):
            break
        loss = masked_loss(logits, codes, full, label_smoothing=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(all_mask(1, T), cond, cond_mask).argmax(-1)
    assert torch.equal(pred, codes), (pred, codes)


# -----------------------------------------------------------------------------
# classifier-free guidance: u + w (c - u), one batch for both conditions


class StubModel(nn.Module):
    """Returns fixed logits: C for the conditional rows (null_cond False), U for the null rows."""

    def __init__(self, C, U):
        super().__init__()
        self.config = SimpleNamespace(bins=C.shape[-1])
        self.C, self.U = C, U

    def forward(self, codes, cond, cond_mask, null_cond=None):
        B = codes.shape[0] // 2
        assert null_cond.tolist() == [False] * B + [True] * B
        return torch.cat([self.C, self.U])


def test_3_2_2_guidance_scale_one_is_conditional_and_five_is_guided():
    B, T, V = 2, 8, BINS
    g = torch.Generator().manual_seed(0)
    C = torch.randn(B, N_Q, T, V, generator=g)
    U = -4 * C + torch.randn(B, N_Q, T, V, generator=g)  # a null condition that disagrees with C
    cond, cond_mask = conditions(B)
    stub = StubModel(C, U)
    common = dict(steps=4, temperature=1.0, top_k=1)
    out1, _ = decode(stub, cond, cond_mask, all_mask(B, T), [1, 2], guidance_scale=1.0, **common)
    assert torch.equal(out1, C.argmax(-1))  # top_k = 1: the argmax of the guided logits, everywhere
    out5, _ = decode(stub, cond, cond_mask, all_mask(B, T), [1, 2], guidance_scale=5.0, **common)
    assert torch.equal(out5, (U + 5 * (C - U)).argmax(-1))
    assert not torch.equal(out5, out1)  # the guided argmax differs from the conditional one somewhere
    out0, _ = decode(stub, cond, cond_mask, all_mask(B, T), [1, 2], guidance_scale=0.0, **common)
    assert torch.equal(out0, U.argmax(-1))
    # with full sampling, w = 1 ignores the null logits altogether
    U2 = torch.randn(B, N_Q, T, V, generator=g) * 5
    full = dict(steps=4, guidance_scale=1.0, temperature=1.0, top_k=V)
    a, _ = decode(StubModel(C, U), cond, cond_mask, all_mask(B, T), [7, 8], **full)
    b, _ = decode(StubModel(C, U2), cond, cond_mask, all_mask(B, T), [7, 8], **full)
    assert torch.equal(a, b)


def test_3_2_2_negative_prompt_guidance_is_n_plus_w_c_minus_n(model, monkeypatch):
    """A negative prompt's condition takes the null condition's place: n + w (c - n), in the same
    single forward of 2B sequences; a sample without one in the batch keeps u + w (c - u)."""
    B, T, w = 3, 8, 3.0
    cond, cond_mask = conditions(B, seed=1)
    neg, neg_mask = conditions(B, seed=2, pad=(0,))
    has = torch.tensor([True, False, True])
    codes = all_mask(B, T)
    with torch.no_grad():  # the three conditions' logits, each in its own forward
        C = model(codes, cond, cond_mask).float()
        N = model(codes, neg, neg_mask).float()
        U = model(codes, cond, cond_mask, torch.ones(B, dtype=torch.bool)).float()
    calls = []
    forward = model.forward

    def counting_forward(codes, c, cm, null_cond=None):
        calls.append((c.clone(), cm.clone(), null_cond.clone()))
        return forward(codes, c, cm, null_cond)

    monkeypatch.setattr(model, "forward", counting_forward)
    # one step, top_k = 1: every token is the argmax of the guided logits
    out, _ = decode(model, cond, cond_mask, codes, [1, 2, 3], steps=1, guidance_scale=w, temperature=1.0, top_k=1,
                    negative=(neg, neg_mask, has))
    negative_guided, null_guided = (N + w * (C - N)).argmax(-1), (U + w * (C - U)).argmax(-1)
    assert torch.equal(out[has], negative_guided[has]) and torch.equal(out[~has], null_guided[~has])
    assert not torch.equal(out[has], null_guided[has])  # the negative prompt did change the tokens
    assert len(calls) == 1
    c, cm, drop = calls[0]
    assert drop.tolist() == [False] * B + [False, True, False]  # sample 1 has no negative: the null condition
    assert torch.equal(c[:B], cond) and torch.equal(c[B:][has], neg[has]) and torch.equal(cm[B:][has], neg_mask[has])


def test_3_2_2_sampler_keeps_level_time_layout():
    """the sampler's flatten/unflatten round-trip: with top_k = 1 the token at (l, t)
    comes from logits[:, l, t], whatever order the positions are revealed in."""
    B, T = 2, 7
    target = torch.randint(0, BINS, (B, N_Q, T), generator=torch.Generator().manual_seed(2))
    C = F.one_hot(target, BINS).float() * 5
    cond, cond_mask = conditions(B)
    out, _ = decode(StubModel(C, C), cond, cond_mask, all_mask(B, T), [1, 2], steps=5, top_k=1)
    assert torch.equal(out, target)


@pytest.mark.parametrize("mask_temperature, kept", [(0.0, 0), (1.5, 1), (3.0, 2), (4.5, 3)])
def test_3_2_2_confidence_is_log_p_plus_linearly_decayed_gumbel(monkeypatch, mask_temperature, kept):
    """c_i = log p_i + tau G_i with tau = tau0 (1 - t/T): at step 1 of 3, tau = 2/3 tau0. Four
    positions (levels 0..3, one frame) with log p = a and Gumbel noise G chosen so that the most
    confident one is level 0, 1, 2, 3 for tau = 0, 1, 2, 3: the one token revealed at step 1
    (cosine_n_masked = floor(4 cos(pi/6)) = 3) tells which tau was used."""
    a = torch.tensor([0.0, -0.25, -1.0, -2.25])  # the max of the lines a_i + tau G_i switches at tau = 0.5, 1.5, 2.5
    G = torch.tensor([0.0, 0.5, 1.0, 1.5])
    V = BINS
    # logits whose max has log-probability a_i: [0, x, ..., x] with x = log((e^-a - 1) / (V - 1))
    x = torch.log((torch.exp(-a) - 1).clamp(min=1e-30) / (V - 1))
    logits = torch.where(torch.arange(V) == 0, torch.zeros(N_Q, V), x[:, None].expand(N_Q, V))
    logits[0, 1:] = -100.0  # a_0 = 0: p = 1
    logits = logits.view(1, N_Q, 1, V)
    assert torch.allclose(logits.log_softmax(-1)[0, :, 0, 0], a, atol=1e-5) and (logits.argmax(-1) == 0).all()
    # token draws: plain argmax (no noise); confidence noise: G
    monkeypatch.setattr(S, "gumbel", lambda u: torch.zeros_like(u) if u.dim() == 4 else G.view(1, N_Q, 1).expand_as(u))
    cond, cond_mask = conditions(1)
    out, history = decode(StubModel(logits, logits), cond, cond_mask, all_mask(1, 1), [0], steps=3,
                          top_k=V, temperature=1.0, mask_temperature=mask_temperature)
    assert (history[0] != MASK).view(-1).tolist() == [i == kept for i in range(N_Q)]
    assert (out == 0).all()


# -----------------------------------------------------------------------------
# the condition: null condition (null_cond) and padded rows


def test_3_2_1_null_condition_ignores_cond(model):
    B, T = 2, 5
    cond_a, cond_mask = conditions(B, seed=0, pad=(1,))
    cond_b, _ = conditions(B, seed=1)
    codes = torch.randint(0, BINS + 1, (B, N_Q, T), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        drop = torch.ones(B, dtype=torch.bool)
        assert torch.equal(model(codes, cond_a, cond_mask, drop), model(codes, cond_b, cond_mask, drop))
        mixed = torch.tensor([True, False])
        la, lb = model(codes, cond_a, cond_mask, mixed), model(codes, cond_b, cond_mask, mixed)
        assert torch.equal(la[0], lb[0]) and not torch.allclose(la[1], lb[1])
        keep = model(codes, cond_a, cond_mask, torch.zeros(B, dtype=torch.bool))
        assert torch.equal(keep, model(codes, cond_a, cond_mask))  # null_cond all False == None


def test_3_2_1_padded_condition_rows_change_nothing(model):
    B, T = 2, 5
    cond, cond_mask = conditions(B, pad=(0,))
    codes = torch.randint(0, BINS + 1, (B, N_Q, T), generator=torch.Generator().manual_seed(0))
    other = cond.clone()
    other[0, -2:] = torch.randn(2, COND_DIM) * 100  # the padded rows of sample 0 only
    with torch.no_grad():
        for drop in (None, torch.tensor([False, True])):
            base, changed = model(codes, cond, cond_mask, drop), model(codes, other, cond_mask, drop)
            assert torch.equal(base, changed), (base - changed).abs().max()  # exp(-huge) is exactly 0
        real = cond.clone()
        real[0, 0] += 1.0  # a real row does matter
        assert not torch.allclose(model(codes, real, cond_mask), model(codes, cond, cond_mask), atol=1e-5)


# -----------------------------------------------------------------------------
# determinism


def test_3_2_2_same_seeds_bit_identical(model):
    B, T = 2, 10
    cond, cond_mask = conditions(B)
    torch.manual_seed(123)  # the global RNG must play no part
    a, ha = decode(model, cond, cond_mask, all_mask(B, T), [4, 5], steps=8)
    torch.manual_seed(456)
    b, hb = decode(model, cond, cond_mask, all_mask(B, T), [4, 5], steps=8)
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(ha, hb))
    c, _ = decode(model, cond, cond_mask, all_mask(B, T), [6, 7], steps=8)
    assert not torch.equal(a, c)
    # the training-side draws too
    r1, r2 = (truncnorm_ratios(8, torch.Generator().manual_seed(9), 0.75, 0.25) for _ in range(2))
    assert torch.equal(r1, r2)
    m1, m2 = (random_mask(r1, (8, N_Q, 10), torch.Generator().manual_seed(9)) for _ in range(2))
    assert torch.equal(m1, m2)


class ClipFiles:
    """Stand-in feature files: clip c's frame f holds the value 100 c + f, its tokens at frame f
    the same value, so a test reads off every frame and token where it came from."""

    def __init__(self, n_frames=10, per_frame=10):
        self.n_frames, self.per_frame = n_frames, per_frame

    def load_video(self, stem):
        c = int(stem)
        return (100 * c + torch.arange(self.n_frames, dtype=torch.float32))[:, None].expand(-1, 3).clone()

    def load_tokens(self, stem):
        frames = 100 * int(stem) + torch.arange(self.n_frames)
        return frames.repeat_interleave(self.per_frame)[None].expand(N_Q, -1).clone()

    def load_clip(self, stem, tokens=False):
        return (self.load_video(stem), self.load_tokens(stem)) if tokens else self.load_video(stem)


def test_3_2_released_prompt_schedule_and_augmentation():
    """stage2_audio.draw_batch with the released training choices: "templates" prompts every
    sample with one of the ten instructions, "captions" with its caption (an instruction where a
    clip has none); the splice (instruction-prompted samples only) and the roll move the video and
    the tokens at the same instant, and the splice's cut lies at 1/10 .. 8/10 of the clip."""
    import numpy as np

    from stage1_caption import INSTRUCTIONS
    from stage2_audio import Config, draw_batch

    files, items = ClipFiles(), [(str(c), f"caption {c}" if c % 4 else "") for c in range(1, 9)]
    for prompts, splice, roll in (("templates", 1.0, 0.0), ("captions", 1.0, 0.0), ("mix", 0.5, 0.5), ("mix", 0.0, 1.0)):
        cfg = Config(prompts=prompts, splice_prob=splice, roll_prob=roll, batch_size=64)
        names, (feats, texts, codes, _, _) = draw_batch(files, items, np.random.default_rng(0), cfg, 0, 1, augment=True)
        frame_of_token = feats[:, :, 0].repeat_interleave(10, dim=1)  # (B, T): the frame each token time shows
        assert torch.equal(codes[:, 0].float(), frame_of_token) and (codes == codes[:, :1]).all()  # in step
        kinds = []
        for name, f, text in zip(names, feats[:, :, 0], texts):
            own = dict(items)[name]
            if prompts == "templates" or not own:
                assert text in INSTRUCTIONS
            elif prompts == "captions":
                assert text == own
            clips, where = (f // 100).long(), (f % 100).long()
            if (clips != int(name)).any():  # spliced: its own start up to the cut, another clip's rest
                cut = int((clips != int(name)).float().argmax())
                assert text in INSTRUCTIONS and 1 <= cut <= 8 and (clips[cut:] == clips[-1]).all()
                assert torch.equal(where, torch.arange(10))  # each part at its own times
                kinds.append("splice")
            elif not torch.equal(where, torch.arange(10)):  # rolled: a circular shift of its own frames
                assert torch.equal((where - where[0]) % 10, torch.arange(10))
                kinds.append("roll")
            else:
                kinds.append("plain")
        assert ("splice" in kinds) == (splice > 0) and ("roll" in kinds) == (roll > 0)
        if splice == 1.0:  # every instruction-prompted sample is spliced, unless with itself (1 in 8)
            instructed = [k for k, t in zip(kinds, texts) if t in INSTRUCTIONS]
            assert instructed.count("splice") >= 0.75 * len(instructed)
    cfg = Config(prompts="mix", batch_size=64, splice_prob=0.0, roll_prob=0.0)
    plain = draw_batch(files, items, np.random.default_rng(0), cfg, 0, 1)
    same = draw_batch(files, items, np.random.default_rng(0), cfg, 0, 1, augment=True)  # both probabilities 0
    assert plain[0] == same[0] and torch.equal(plain[1][0], same[1][0]) and plain[1][1] == same[1][1]
