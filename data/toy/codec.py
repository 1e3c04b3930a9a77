"""
ToyCodec: a small deterministic DSP codec with EnCodec's interface, used by the toy preset.

No pretrained neural codec can be downloaded here, so the toy world gets a hand-made one. Like
AudioGen's EnCodec it turns 16 kHz audio into 4 tokens per 20 ms frame (50 Hz) and back, and it
exposes per-level "RVQ" tables (`codebooks`) that VATT Audio uses as frozen input embeddings.
Instead of learned residual levels, each level quantises one parameter of a frame into 64 bins:
    level 0  loudness: RMS in dB, bin 0 = silence (< -70 dBFS), bins 1..63 span [-70, 0] dBFS
    level 1  dominant frequency: log-spaced over 100 Hz .. 6.4 kHz (a tenth of an octave a bin)
    level 2  tonality: the share of power in sinusoidal peaks, 0 .. 1
    level 3  noise spread: width of the noise band in octaves (std of log-frequency), 0 .. 2
The decoder plays the tonal share as one phase-continuous sinusoid at the dominant frequency and
the rest as band-pass noise (a Gaussian band in log-frequency) around it. That is all the toy
sounds need: a bell keeps its pitch and decay (its harmonics are dropped), a whistle its glide,
a drum its noise band, and every strike its onset.

    codec = ToyCodec()
    codes = codec.encode(wav)   # (B, 1, S) float -> (B, 4, ceil(S / 320)) int64 in [0, 64)
    wav2 = codec.decode(codes)  # (B, 4, T) -> (B, 1, T * 320)
    codec.codebooks             # (4, 64, 32) float32 buffer, no trainable parameters
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class ToyCodec(nn.Module):
    sample_rate = 16000
    frame_rate = 50
    hop = 320  # samples per frame
    n_q = 4
    bins = 64
    dim = 32
    n_fft = 640  # analysis/synthesis window: two frames, centred on the frame, 25 Hz resolution
    db_min = -70.0
    f_min, f_max = 100.0, 6400.0
    spread_max = 2.0  # octaves
    chunk = 64  # clips per internal batch

    def __init__(self):
        super().__init__()
        # Each level owns dim / n_q = 8 coordinates holding a smooth embedding of its quantised
        # value v in [0, 1]: (cos, sin)(pi * m * v) for m = 1..4, scaled to unit norm. Neighbouring
        # bins get similar vectors, and the sum over levels is a concatenation of the 4 parameters.
        width = self.dim // self.n_q
        v = torch.arange(self.bins, dtype=torch.float64) / (self.bins - 1)
        m = torch.arange(1, width // 2 + 1, dtype=torch.float64)
        angle = math.pi * v[:, None] * m[None, :]
        emb = torch.cat([angle.cos(), angle.sin()], dim=1) / math.sqrt(len(m))
        books = torch.zeros(self.n_q, self.bins, self.dim, dtype=torch.float64)
        for k in range(self.n_q):
            books[k, :, width * k: width * (k + 1)] = emb
        self.register_buffer("codebooks", books.float())

    # -----------------------------------------------------------------------------
    # analysis

    @classmethod
    def loudness_steps(cls, db):
        """Level 0's position of a loudness in dBFS, unrounded: bin 1 + this, for db >= db_min."""
        return (db - cls.db_min) / -cls.db_min * (cls.bins - 2)

    @classmethod
    def frequency_steps(cls, hz):
        """Level 1's position (its bin, unrounded) of a frequency: log-spaced over [f_min, f_max]."""
        return torch.log2(torch.as_tensor(hz) / cls.f_min) / math.log2(cls.f_max / cls.f_min) * (cls.bins - 1)

    @torch.no_grad()
    def encode(self, wav):
        """(B, 1, S) float audio at 16 kHz -> (B, n_q, T) int64 codes, T = ceil(S / 320)
        (the end is zero-padded to whole frames, as EnCodec does)."""
        if len(wav) > self.chunk:  # bounded memory for big batches
            return torch.cat([self.encode(w) for w in wav.split(self.chunk)])
        B, _, S = wav.shape
        T = -(-S // self.hop)
        x = F.pad(wav[:, 0].float(), (0, T * self.hop - S))

        # loudness over exactly the frame's own 320 samples, so an onset on a frame boundary
        # (every toy strike is: 0.2 s = 10 frames) stays on it after decoding
        power = x.view(B, T, self.hop).pow(2).mean(-1)
        level = 10 * torch.log10(power + 1e-12)
        steps = self.loudness_steps(level).round().clamp(0, self.bins - 2)
        loud = torch.where(level < self.db_min, 0, 1 + steps)

        # power spectrum of a Hann window over the frame and half of each neighbour
        half = (self.n_fft - self.hop) // 2
        windows = F.pad(x, (half, half)).unfold(-1, self.n_fft, self.hop)  # (B, T, n_fft)
        spec = torch.fft.rfft(windows * torch.hann_window(self.n_fft, device=x.device), dim=-1)
        freqs = torch.fft.rfftfreq(self.n_fft, 1 / self.sample_rate).to(x.device)
        band = (freqs >= self.f_min) & (freqs <= self.f_max)
        P, freqs = spec.abs().pow(2)[..., band], freqs[band]
        total = P.sum(-1).clamp_min(1e-20)

        # tonal bins: > 13 dB above the median of their +-6 bin neighbourhood (a tone's main lobe
        # stands ~40 dB above its sidelobes, a bin of band noise rarely that far above its
        # neighbours), widened by a bin each side; the same test as world.tonal_fraction
        background = F.pad(P, (6, 6), mode="replicate").unfold(-1, 13, 1).median(-1).values
        peak = (P > 20 * background).float().view(B * T, 1, -1)
        peak = F.max_pool1d(peak, 3, stride=1, padding=1).view(P.shape) > 0
        tonality = (P * peak).sum(-1) / total

        # dominant frequency: the strongest tonal bin (parabolic interpolation of log power) for a
        # tonal frame, the power median for a noisy one (a noise band's peak bin is random)
        k = (P * peak).argmax(-1, keepdim=True).clamp(1, P.shape[-1] - 2)
        a, b, c = (torch.log(P.gather(-1, k + d) + 1e-20).squeeze(-1) for d in (-1, 0, 1))
        offset = (0.5 * (a - c) / (a - 2 * b + c).clamp_max(-1e-6)).clamp(-0.5, 0.5)
        f_peak = freqs[k.squeeze(-1)] + offset * (freqs[1] - freqs[0])
        cum = P.cumsum(-1)
        f_median = freqs[torch.searchsorted(cum, cum[..., -1:] / 2).clamp_max(len(freqs) - 1)].squeeze(-1)
        f_dom = torch.where(tonality >= 0.5, f_peak, f_median)

        # noise spread: std of log2 frequency of the non-tonal power
        noise = P * ~peak
        octave = torch.log2(freqs)
        w = noise / noise.sum(-1, keepdim=True).clamp_min(1e-20)
        mean = (w * octave).sum(-1, keepdim=True)
        spread = ((w * (octave - mean) ** 2).sum(-1)).sqrt()

        top = self.bins - 1
        codes = torch.stack([
            loud,
            self.frequency_steps(f_dom).round(),
            (tonality * top).round(),
            (spread / self.spread_max * top).round(),
        ], dim=1)
        return codes.clamp(0, top).long()

    # -----------------------------------------------------------------------------
    # synthesis

    def upsample(self, x, ramp):
        """(B, T) per-frame values -> (B, T * hop) per-sample, held within each frame and ramped
        linearly over `ramp` samples around each frame boundary (a moving average by cumsum)."""
        x = F.pad(x.repeat_interleave(self.hop, dim=-1)[:, None], (ramp // 2 + 1, ramp // 2), mode="replicate")
        total = x[:, 0].double().cumsum(-1)
        return ((total[:, ramp + 1:] - total[:, : -ramp - 1]) / (ramp + 1)).to(x.dtype)

    @torch.no_grad()
    def decode(self, codes):
        """(B, n_q, T) codes -> (B, 1, T * 320) float audio. A clip's audio depends only on its
        own codes (not on the rest of the batch)."""
        if len(codes) > self.chunk:
            return torch.cat([self.decode(c) for c in codes.split(self.chunk)])
        codes = codes.long().clamp(0, self.bins - 1)
        B, _, T = codes.shape
        top = self.bins - 1
        loud, fcode, tcode, scode = codes.float().unbind(1)
        level = self.db_min + (loud - 1) * -self.db_min / (self.bins - 2)
        rms = torch.where(loud == 0, 0.0, 10 ** (level / 20))
        octave = math.log2(self.f_min) + fcode / top * math.log2(self.f_max / self.f_min)
        tonality = tcode / top
        spread = (scode / top * self.spread_max).clamp_min(0.05)

        # the tone: amplitude held per frame (5 ms ramps keep onsets sharp), frequency interpolated
        # linearly in octaves between frame centres, phase accumulated (in float64, so it does not
        # drift over long clips) so it never jumps
        amp = self.upsample(torch.sqrt(2 * tonality) * rms, ramp=80)
        octaves = F.interpolate(octave[:, None], scale_factor=self.hop, mode="linear")[:, 0]
        phase = torch.cumsum(2 * math.pi * 2 ** octaves.double() / self.sample_rate, dim=-1)
        tone = amp * torch.sin(phase % (2 * math.pi)).float()

        # the noise: frame t takes row t of a fixed table of complex Gaussian spectra (seeded:
        # decoding is deterministic), shaped into a Gaussian band in log-frequency, normalised to
        # unit RMS and overlap-added with a sine window, whose squares sum to 1 at 50% overlap
        gen = torch.Generator().manual_seed(0)
        table = torch.randn(T, self.n_fft // 2 + 1, generator=gen, dtype=torch.complex64)
        freqs = torch.fft.rfftfreq(self.n_fft, 1 / self.sample_rate)
        distance = torch.log2(freqs.clamp_min(1.0)).to(codes.device) - octave[..., None]
        mask = torch.exp(-0.5 * (distance / spread[..., None]) ** 2) * (freqs > 20).to(codes.device)
        frames = torch.fft.irfft(table.to(codes.device) * mask, n=self.n_fft, dim=-1)
        frames = frames / frames.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
        frames = frames * torch.sin(math.pi * torch.arange(self.n_fft, device=codes.device) / self.n_fft)
        halves = frames.view(B, T, 2, self.hop)
        # frame t covers samples [t * hop - half, t * hop - half + n_fft): add up the halves
        ola = F.pad(halves[:, :, 0], (0, 0, 0, 1)) + F.pad(halves[:, :, 1], (0, 0, 1, 0))
        half = (self.n_fft - self.hop) // 2
        noise = ola.reshape(B, (T + 1) * self.hop)[:, half: half + T * self.hop]
        noise = self.upsample(torch.sqrt(1 - tonality) * rms, ramp=80) * noise

        return (tone + noise)[:, None]
