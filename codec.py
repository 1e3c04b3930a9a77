"""
codec.py -- the audio tokenizer: AudioGen's 16 kHz EnCodec (audio <-> 4 x 2048 tokens at 50 Hz).

VATT never sees raw audio inside its transformer. Audio is turned into discrete tokens by the
compression model of facebook/audiogen-medium (an EnCodec: SEANet conv encoder -> 4-level residual
vector quantizer -> SEANet conv decoder), and VATT Audio predicts those tokens. 10 s of audio =
500 frames x 4 codebooks = 2000 tokens, stored on disk as int16 .npy of shape (4, 500).

Usage:
    from codec import load_codec
    codec = load_codec("facebook/audiogen-medium")   # hub id, or a compression_state_dict.bin / its folder
    codes = codec.encode(wav)     # wav (B, 1, S) float in [-1, 1] at 16 kHz -> (B, 4, ceil(S/320)) int64
    wav2 = codec.decode(codes)    # (B, 4, T) -> (B, 1, T*320)
    np.save("x.npy", codes[0].numpy().astype(np.int16))   # (4, T) token file
    codec.codebooks               # (4, 2048, 128) frozen RVQ tables, VATT Audio's input embedding

    python codec.py               # builds the full-size codec with random weights and prints its size

How the official network is rebuilt (checked on parity fixtures: tests/test_official_codec.py)
-----------------------------------------------------------------------------------
The official code uses audiocraft's EnCodec classes. audiocraft's modules descend from Meta's
`encodec` pip package (2022): the classes were renamed (SConv1d -> StreamableConv1d, SLSTM ->
StreamableLSTM, ...) but the attribute names were kept, so the package's modules produce exactly
audiocraft's state_dict keys (`encoder.model.0.conv.conv.weight_g`, `decoder.model.3.convtr.convtr.*`,
`quantizer.vq.layers.0._codebook.embed`, ...). No key mapping is needed; the checkpoint's
`best_state` loads with strict=True (tests/test_official_codec.py checks all 116 keys and shapes).
What does differ is only configuration, bridged in AudioGenCodec.__init__:
  * pad_mode: the package defaults to 'reflect'; AudioGen uses 'constant' (zero) padding.
  * true_skip: the package defaults to False (a 1x1 conv shortcut, extra keys); AudioGen uses an
    identity shortcut in the residual blocks.
  * non-causal padding split is the same in both: total = effective kernel - stride, right gets
    total // 2, left the rest, plus extra right padding so the last window is full; transposed
    convs trim the same split. (One tiny difference: the package computes the "extra" padding with
    the raw kernel, audiocraft with the dilated one. They only disagree when dilation > 1 AND
    stride > 1, which SEANet never builds: dilations live in stride-1 residual blocks.)
  * weight norm: both apply the LEGACY hook torch.nn.utils.weight_norm(dim=0), which stores
    `weight_g` / `weight_v` and recomputes weight = g * v / ||v|| (norm over all dims but 0) before
    every call. For ConvTranspose1d dim 0 is the *input* channel, hence weight_g (in, 1, 1). torch
    >= 2.1 deprecates the hook (FutureWarning, silenced below) in favour of parametrizations, whose
    keys (parametrizations.weight.original0/1) would NOT match the checkpoint -- so we keep the hook.
  * LSTM: both add a skip (lstm(x) + x). RVQ: same buffers (inited, cluster_size, embed, embed_avg)
    and the same nearest-neighbour distance. Only `embed` matters for encode/decode; the other three
    are training-time EMA state that we load (strict) and ignore. The package lays codes out as
    (n_q, B, T); audiocraft and this file use (B, n_q, T), hence the transposes.
"""
import importlib
import math
import re
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn as nn

from utils import load_error

CKPT_NAME = "compression_state_dict.bin"
DEFAULT_REPO = "facebook/audiogen-medium"
DOWNLOAD_HINT = (f"download https://huggingface.co/{DEFAULT_REPO}/resolve/main/{CKPT_NAME} and pass the "
                 f"file or its folder, e.g. put it at checkpoints/audiogen-medium/{CKPT_NAME} and use "
                 f"load_codec('checkpoints/audiogen-medium')")


@dataclass
class AudioGenCodecConfig:
    # defaults = audiocraft solver=compression/encodec_audiogen_16khz, model encodec_large_nq4_s320
    # SEANet (shared by encoder and decoder)
    channels: int = 1
    dimension: int = 128          # latent width = codebook vector width
    n_filters: int = 64
    n_residual_layers: int = 1
    ratios: tuple = (8, 5, 4, 2)  # hop 320 samples -> 16000 / 320 = 50 frames per second
    activation: str = "ELU"
    activation_params: dict = field(default_factory=lambda: {"alpha": 1.0})
    norm: str = "weight_norm"
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_base: int = 2
    causal: bool = False
    pad_mode: str = "constant"
    true_skip: bool = True
    compress: int = 2
    lstm: int = 2
    # decoder only
    trim_right_ratio: float = 1.0
    final_activation: str = None
    # residual vector quantizer
    n_q: int = 4
    bins: int = 2048
    sample_rate: int = 16000


class AudioGenCodec(nn.Module):
    """EnCodec built from the `encodec` package's modules, with audiocraft's state_dict layout."""

    def __init__(self, cfg: AudioGenCodecConfig):
        super().__init__()
        from encodec.modules import SEANetDecoder, SEANetEncoder
        from encodec.quantization import ResidualVectorQuantizer
        self.cfg = cfg
        seanet = dict(channels=cfg.channels, dimension=cfg.dimension, n_filters=cfg.n_filters,
                      n_residual_layers=cfg.n_residual_layers, ratios=list(cfg.ratios),
                      activation=cfg.activation, activation_params=dict(cfg.activation_params),
                      norm=cfg.norm, kernel_size=cfg.kernel_size, last_kernel_size=cfg.last_kernel_size,
                      residual_kernel_size=cfg.residual_kernel_size, dilation_base=cfg.dilation_base,
                      causal=cfg.causal, pad_mode=cfg.pad_mode, true_skip=cfg.true_skip,
                      compress=cfg.compress, lstm=cfg.lstm)
        with warnings.catch_warnings():  # the legacy weight_norm hook is deprecated but is what we need
            warnings.filterwarnings("ignore", message=".*weight_norm.*deprecated", category=FutureWarning)
            self.encoder = SEANetEncoder(**seanet)
            self.decoder = SEANetDecoder(**seanet, trim_right_ratio=cfg.trim_right_ratio,
                                         final_activation=cfg.final_activation)
        # kmeans_init=False only changes the *initial* buffers (random codebooks, inited=1, so nothing
        # ever runs k-means on a batch); a loaded checkpoint overwrites all of them anyway.
        self.quantizer = ResidualVectorQuantizer(dimension=cfg.dimension, n_q=cfg.n_q, bins=cfg.bins,
                                                 kmeans_init=False)
        self.sample_rate, self.n_q, self.bins, self.dim = cfg.sample_rate, cfg.n_q, cfg.bins, cfg.dimension
        self.channels = cfg.channels
        self.hop_length = math.prod(cfg.ratios)  # 320
        assert cfg.sample_rate % self.hop_length == 0, "frame rate must be an integer"
        self.frame_rate = cfg.sample_rate // self.hop_length  # 50
        self.eval().requires_grad_(False)  # a frozen tokenizer: never trained here

    @property
    def device(self):
        return next(self.parameters()).device

    @property
    def codebooks(self) -> torch.Tensor:
        """(n_q, bins, dim) RVQ tables; a detached copy (not a parameter, not in the state_dict)."""
        return torch.stack([layer._codebook.embed for layer in self.quantizer.vq.layers]).detach().clone()

    @torch.no_grad()
    def encode_latent(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, channels, S) -> continuous latent (B, dim, ceil(S / 320))."""
        assert wav.dim() == 3 and wav.shape[1] == self.channels, f"expected (B, {self.channels}, S), got {tuple(wav.shape)}"
        return self.encoder(wav.to(self.device, torch.float32))

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, 1, S) float -> codes (B, n_q, T) int64. No renormalisation (AudioGen has it off)."""
        latent = self.encode_latent(wav)
        codes = self.quantizer.encode(latent, self.frame_rate)  # (n_q, B, T); bandwidth None = all n_q levels
        return codes.transpose(0, 1).contiguous()

    @torch.no_grad()
    def decode_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, n_q, T), any integer dtype (e.g. int16 from .npy) -> summed codebook vectors (B, dim, T)."""
        assert codes.dim() == 3 and codes.shape[1] == self.n_q, f"expected (B, {self.n_q}, T), got {tuple(codes.shape)}"
        return self.quantizer.decode(codes.to(self.device, torch.long).transpose(0, 1))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, n_q, T) -> wav (B, 1, T * 320). Not trimmed: the caller knows the true length."""
        return self.decoder(self.decode_latent(codes))


def build_audiogen_codec(**overrides) -> AudioGenCodec:
    """Full AudioGen codec by default; e.g. build_audiogen_codec(n_filters=4, dimension=16, bins=64) for tests."""
    return AudioGenCodec(AudioGenCodecConfig(**overrides))


# ----------------------------------------------------------------------------------------------
# reading audiocraft's checkpoint container

def _scalar(v):
    if v[:1] in "'\"":
        return v[1:-1]
    if v.startswith("[") and v.endswith("]"):
        return [_scalar(x.strip()) for x in v[1:-1].split(",") if x.strip()]
    if v == "{}":
        return {}
    if v.lower() in ("null", "~"):
        return None
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def _mini_yaml(text: str) -> dict:
    """Fallback when PyYAML is absent: the block-style subset OmegaConf.to_yaml writes (nested
    'key: value' maps, '- scalar' lists, which PyYAML emits at the parent key's indent, [] and {})."""
    root, last = {}, None
    stack = [(-1, root)]  # open maps as (indent, dict)
    for raw in text.splitlines():
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        if s == "-" or s.startswith("- "):  # list item: belongs to the latest 'key:' with a block value
            d, k = last
            d[k] = d[k] if isinstance(d[k], list) else []
            d[k].append(_scalar(s[1:].strip()))
            continue
        indent = len(raw) - len(raw.lstrip())
        while stack[-1][0] >= indent:
            stack.pop()
        key, _, val = s.partition(":")
        key, val, parent = key.strip().strip("'\""), val.strip(), stack[-1][1]
        if val:
            parent[key] = _scalar(val)
        else:
            parent[key] = {}
            stack.append((indent, parent[key]))
            last = (parent, key)
    return root


def config_from_tree(root: dict) -> dict:
    """Pick AudioGenCodecConfig fields out of audiocraft's (parsed) Hydra config; absent -> default.
    Resolves the simple '${a.b}' interpolations the unresolved YAML keeps (e.g. channels: ${channels})."""
    def get(path, seen=0):
        node = root
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        if isinstance(node, str) and node.startswith("${") and node.endswith("}") and seen < 8:
            return get(node[2:-1], seen + 1)
        return node

    if get("compression_model") not in (None, "encodec") or get("encodec.renormalize"):
        raise ValueError("only audiocraft's EnCodec with renormalize off (AudioGen's codec) is supported")
    if get("seanet.disable_norm_outer_blocks"):
        raise ValueError("seanet.disable_norm_outer_blocks > 0 is not supported by the encodec package modules")
    enc, dec = get("seanet.encoder") or {}, get("seanet.decoder") or {}
    out = {}
    for f in fields(AudioGenCodecConfig):
        if f.name in ("trim_right_ratio", "final_activation"):
            v = dec.get(f.name)
        elif f.name in ("n_q", "bins"):
            v = get(f"rvq.{f.name}")
        elif f.name == "sample_rate":
            v = get("sample_rate") or get("encodec.sample_rate")
        else:
            if enc.get(f.name, dec.get(f.name)) is not None:  # audiocraft allows separate encoder/decoder
                raise ValueError(f"encoder/decoder-specific seanet.{f.name} is not supported")  # settings
            v = get(f"seanet.{f.name}")
        if v is not None and not (isinstance(v, str) and v.startswith("${")):
            out[f.name] = tuple(v) if f.name == "ratios" else v
    return out


def config_from_xp_cfg(text) -> dict:
    """The 'xp.cfg' YAML string of the container -> config overrides (needs neither omegaconf nor yaml)."""
    if not text:
        return {}
    try:
        import yaml
        root = yaml.safe_load(text)
    except ImportError:
        root = _mini_yaml(text)
    return config_from_tree(root or {})


def _resolve_checkpoint(path_or_repo, revision=None) -> Path:
    p = Path(path_or_repo).expanduser()
    if p.is_dir():
        p = p / CKPT_NAME
    if p.is_file():
        return p
    if p.suffix == ".bin" or not re.fullmatch(r"[\w.-]+/[\w.-]+", str(path_or_repo)):  # a local path, not a hub id
        raise FileNotFoundError(f"AudioGen codec checkpoint not found at {p}: {DOWNLOAD_HINT}")
    try:  # only reached when nothing local matches
        from huggingface_hub import hf_hub_download
        return Path(hf_hub_download(str(path_or_repo), CKPT_NAME, revision=revision))
    except Exception as e:  # offline, unknown repo, no huggingface_hub, ...: one clear line
        raise FileNotFoundError(f"could not get {CKPT_NAME} from the Hugging Face repo '{path_or_repo}' "
                                f"({type(e).__name__}); {DOWNLOAD_HINT}") from None


def load_audiogen_codec(path_or_repo=DEFAULT_REPO, revision=None, device="cpu", **overrides) -> AudioGenCodec:
    """Load audiocraft's `compression_state_dict.bin`: {'best_state': state_dict, 'xp.cfg': YAML str,
    'version': str, 'exported': True}. The config comes from xp.cfg (defaults where absent), then overrides."""
    path = _resolve_checkpoint(path_or_repo, revision)
    try:  # tensors and plain values only: a file whose pickle would run code is refused
        pkg = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (pickled objects, not a torch file, truncated)
        raise ValueError(f"{path}: refused as a codec checkpoint ({load_error(path, e)})") from None
    if "pretrained" in pkg:  # audiocraft's pointer form (MusicGen -> facebook/encodec_32khz)
        raise ValueError(f"{path} only points to the pretrained codec {pkg['pretrained']!r}, it holds no "
                         f"weights; AudioGen's 16 kHz codec needs the full form ('best_state'): {DOWNLOAD_HINT}")
    if "best_state" not in pkg:
        raise KeyError(f"{path} has no 'best_state' (keys: {sorted(pkg)}); not an audiocraft compression checkpoint")
    codec = build_audiogen_codec(**{**config_from_xp_cfg(pkg.get("xp.cfg")), **overrides})
    codec.load_state_dict(pkg["best_state"], strict=True)  # every key incl. the 4 quantizer buffers per level
    return codec.to(device)


def resolve(name):
    """"module:attribute" -> that attribute, imported by its name: what a config names to be built
    (the toy's codec, codec.load_codec), so that no stage imports it."""
    module, _, attribute = name.partition(":")
    return getattr(importlib.import_module(module), attribute)


def load_codec(name: str):
    """The codec that meta.json names: "module:Class" -> that class, built with no arguments (any
    module with EnCodec's interface: encode, decode, codebooks, n_q, bins, dim, sample_rate,
    frame_rate; the toy world's is data.toy.codec:ToyCodec); anything else -> AudioGen's codec
    from a hub id or a local file (load_audiogen_codec)."""
    return resolve(name)() if ":" in name else load_audiogen_codec(name)


@torch.no_grad()
def decode_windows(codec, codes, window_s=10.0, context_s=1.0):
    """One clip's codes (n_q, T) -> its audio as float32 numpy pieces of window_s seconds, yielded
    one at a time, so memory holds one window whatever the clip's length (one decode call over an
    hour would hold about 15 GB of activations). Each window is decoded with context_s seconds of
    its neighbours' codes on both sides, which are then cut off: the decoder's convolutions and
    LSTM see across the window's edges, and with 1 s the pieces join into the one-call decode to
    float rounding (tests/test_official_codec.py). A clip no longer than a window is one plain
    decode. The toy codec restarts its tone's phase and its noise table at every call, so its
    clips longer than a window have a seam every window_s."""
    hop = round(codec.sample_rate / codec.frame_rate)  # samples per token (320)
    n, window, context = codes.shape[-1], round(window_s * codec.frame_rate), round(context_s * codec.frame_rate)
    for start in range(0, n, window):
        lo, hi = max(0, start - context), min(n, start + window + context)
        wav = codec.decode(codes[None, :, lo:hi])[0, 0]
        yield wav[(start - lo) * hop: (min(n, start + window) - lo) * hop].float().cpu().numpy()


if __name__ == "__main__":
    torch.manual_seed(0)
    codec = build_audiogen_codec()
    n_params = sum(p.numel() for p in codec.parameters())
    print(f"AudioGen codec (random weights): {n_params:,} parameter elements "
          f"(manifest: 56,819,138), {len(codec.state_dict())} state_dict entries")
    wav = torch.randn(1, 1, 16000) * 0.1
    codes = codec.encode(wav)
    print(f"1 s of audio -> codes {tuple(codes.shape)} -> audio {tuple(codec.decode(codes).shape)}; "
          f"codebooks {tuple(codec.codebooks.shape)}")
