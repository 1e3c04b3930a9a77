"""
Parity and loading tests for codec.py (AudioGen's 16 kHz EnCodec).

The fixtures (../shared/fixtures, see its README sections 1-2) were made by running audiocraft's
official EnCodec classes. When the folder is absent the fixture tests skip; nothing here ever
touches the network (the hub download is replaced by a stub that raises).
"""
import json
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # so `import codec` works however pytest is started
import codec as C  # noqa: E402
from conftest import fixture  # noqa: E402

N_PARAMS = 56_819_138  # parameter elements of the AudioGen codec, buffers excluded (README section 1)


@pytest.fixture
def no_network(monkeypatch):
    """Any hub download attempt raises (and is recorded) instead of reaching for the network."""
    calls = []

    def hf_hub_download(repo_id, filename, **kw):
        calls.append((repo_id, filename))
        raise OSError("offline (test stub)")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=hf_hub_download))
    return calls


def test_official_codec_keys():
    manifest = json.loads(fixture("audiogen_codec_keys.json").read_text())
    want = {e["key"]: tuple(e["shape"]) for e in manifest["keys"]}
    torch.manual_seed(0)
    codec = C.build_audiogen_codec()  # full AudioGen config, random weights
    sd = codec.state_dict()
    got = {k: tuple(v.shape) for k, v in sd.items()}
    assert sorted(set(got) - set(want)) == [], "keys the official checkpoint does not have"
    assert sorted(set(want) - set(got)) == [], "official keys we do not have"
    assert got == want  # same shapes, e.g. ConvTranspose1d weight_g is (in, 1, 1)
    assert list(got) == list(want)  # even the same order (same module tree)
    params = {e["key"] for e in manifest["keys"] if e["kind"] == "parameter"}
    assert {k for k, _ in codec.named_parameters()} == params  # weight_g/weight_v are parameters, vq tables buffers
    assert sum(p.numel() for p in codec.parameters()) == manifest["num_parameter_elements"] == N_PARAMS
    # a zero-filled state dict built purely from the manifest loads strictly: nothing missing/unexpected
    zeros = {e["key"]: torch.zeros(e["shape"], dtype=getattr(torch, e["dtype"])) for e in manifest["keys"]}
    res = codec.load_state_dict(zeros, strict=True)
    assert res.missing_keys == [] and res.unexpected_keys == []
    assert codec.codebooks.shape == (4, 2048, 128) and codec.codebooks.abs().sum() == 0
    assert (codec.sample_rate, codec.frame_rate, codec.n_q, codec.bins, codec.dim) == (16000, 50, 4, 2048, 128)


def test_official_codec_parity():
    fx = torch.load(fixture("audiogen_codec_tiny.pt"), weights_only=True)
    c = fx["config"]
    # the fixture's config goes through the same parser as a checkpoint's xp.cfg
    tree = {**c, "seanet": {**c["seanet"], "decoder": c["decoder_extra"]}}
    cfg = C.config_from_tree(tree)
    assert (cfg["n_filters"], cfg["dimension"], cfg["bins"], cfg["n_q"]) == (4, 16, 64, 4)
    codec = C.build_audiogen_codec(**cfg)
    codec.load_state_dict(fx["state_dict"], strict=True)

    latent = codec.encode_latent(fx["wav"])
    codes = codec.encode(fx["wav"])
    qlat = codec.decode_latent(fx["codes"])
    decoded = codec.decode(fx["codes"])
    diffs = {name: (a - b).abs().max().item() for name, a, b in
             [("latent", latent, fx["latent"]), ("quantized_latent", qlat, fx["quantized_latent"]),
              ("decoded", decoded, fx["decoded"])]}
    print("max abs diff vs audiocraft:", diffs)
    assert codes.dtype == torch.int64 and codes.shape == (1, 4, 50)
    assert torch.equal(codes, fx["codes"]), f"{(codes != fx['codes']).sum().item()} codes differ"
    assert torch.allclose(latent, fx["latent"], atol=1e-5, rtol=0)
    assert torch.allclose(qlat, fx["quantized_latent"], atol=1e-5, rtol=0)
    assert decoded.shape == (1, 1, 16000)
    assert torch.allclose(decoded, fx["decoded"], atol=1e-5, rtol=0)
    # int16 token files decode identically; codebooks are the state_dict's RVQ tables
    assert torch.equal(codec.decode(fx["codes"].to(torch.int16)), decoded)
    tables = torch.stack([fx["state_dict"][f"quantizer.vq.layers.{i}._codebook.embed"] for i in range(4)])
    assert torch.equal(codec.codebooks, tables)


# an xp.cfg as OmegaConf.to_yaml writes it: unresolved interpolations, block lists at the key's indent
TINY_XP_CFG = """\
sample_rate: 16000
channels: 1
compression_model: encodec
encodec:
  autoencoder: seanet
  quantizer: rvq
  sample_rate: ${sample_rate}
  channels: ${channels}
  causal: false
  renormalize: false
seanet:
  dimension: 16
  channels: ${channels}
  causal: ${encodec.causal}
  n_filters: 4
  n_residual_layers: 1
  ratios:
  - 8
  - 5
  - 4
  - 2
  activation: ELU
  activation_params:
    alpha: 1.0
  norm: weight_norm
  norm_params: {}
  kernel_size: 7
  residual_kernel_size: 3
  last_kernel_size: 7
  dilation_base: 2
  pad_mode: constant
  true_skip: true
  compress: 2
  lstm: 2
  disable_norm_outer_blocks: 0
  decoder:
    trim_right_ratio: 1.0
    final_activation: null
    final_activation_params: null
  encoder: {}
rvq:
  n_q: 4
  q_dropout: false
  bins: 64
  decay: 0.99
  kmeans_init: true
  kmeans_iters: 50
  threshold_ema_dead_code: 2
  orthogonal_reg_weight: 0.0
  orthogonal_reg_active_codes_only: false
"""


def test_codec_container_roundtrip(tmp_path, no_network):
    torch.manual_seed(0)
    tiny = dict(n_filters=4, dimension=16, bins=64, n_q=4)
    ref = C.build_audiogen_codec(**tiny)
    parsed = C.config_from_xp_cfg(TINY_XP_CFG)
    assert parsed["ratios"] == (8, 5, 4, 2) and parsed["channels"] == 1 and parsed["causal"] is False  # ${...}
    assert C.AudioGenCodecConfig(**parsed) == C.AudioGenCodecConfig(**tiny)
    try:  # the no-PyYAML fallback parser reads the same tree as PyYAML
        import yaml
        assert C._mini_yaml(TINY_XP_CFG) == yaml.safe_load(TINY_XP_CFG)
    except ImportError:
        assert C.config_from_tree(C._mini_yaml(TINY_XP_CFG))["n_filters"] == 4
    pkg = {"best_state": ref.state_dict(), "xp.cfg": TINY_XP_CFG, "version": "1.0.0", "exported": True}
    torch.save(pkg, tmp_path / C.CKPT_NAME)
    wav = 0.3 * torch.randn(2, 1, 8000)
    for where in (tmp_path, tmp_path / C.CKPT_NAME):  # the folder or the file
        codec = C.load_codec(str(where))  # tiny shapes only load if xp.cfg was really parsed
        assert isinstance(codec, C.AudioGenCodec) and codec.codebooks.shape == (4, 64, 16)
        codes = codec.encode(wav)
        assert codes.shape == (2, 4, 25) and torch.equal(codes, ref.encode(wav))
        assert torch.equal(codec.decode(codes), ref.decode(codes))
    assert no_network == []  # local files never consult the hub


def test_codec_missing_file_clear_error(tmp_path, no_network):
    with pytest.raises(FileNotFoundError) as e:  # a local path that is not there: no hub attempt
        C.load_audiogen_codec(tmp_path / "nowhere" / C.CKPT_NAME)
    msg = str(e.value)
    assert "\n" not in msg and C.CKPT_NAME in msg and "huggingface.co/facebook/audiogen-medium" in msg
    assert no_network == []
    with pytest.raises(FileNotFoundError) as e:  # a hub id while offline: one clear line, no traceback chain
        C.load_audiogen_codec("facebook/audiogen-medium")
    msg = str(e.value)
    assert no_network == [("facebook/audiogen-medium", C.CKPT_NAME)]
    assert "\n" not in msg and "facebook/audiogen-medium" in msg and "download" in msg
    assert e.value.__cause__ is None and e.value.__suppress_context__
    # audiocraft's 'pretrained' pointer form holds no weights
    torch.save({"pretrained": "facebook/encodec_32khz"}, tmp_path / C.CKPT_NAME)
    with pytest.raises(ValueError, match="pretrained"):
        C.load_audiogen_codec(tmp_path)


def test_decoding_window_by_window_is_the_one_call_decode():
    """codec.decode_windows: 25 s of codes decoded 10 s at a time with 1 s of context on each side
    give the one-call decode of AudioGen's decoder architecture (random weights) to float
    rounding; without the context the seams show, so the context is what makes it exact."""
    import numpy as np

    torch.manual_seed(0)
    codec = C.build_audiogen_codec(n_filters=4, dimension=16, bins=64).eval()
    codes = torch.randint(0, 64, (4, 1250))
    with torch.no_grad():
        whole = codec.decode(codes[None])[0, 0].numpy()
    pieces = list(C.decode_windows(codec, codes))
    assert [len(p) for p in pieces] == [160000, 160000, 80000]
    assert np.abs(np.concatenate(pieces) - whole).max() < 1e-5 * np.abs(whole).max()
    seams = np.concatenate(list(C.decode_windows(codec, codes, context_s=0)))
    assert np.abs(seams - whole).max() > 0.1 * np.abs(whole).max()
    short = list(C.decode_windows(codec, codes[:, :100]))  # no longer than a window: one plain decode
    with torch.no_grad():
        assert len(short) == 1 and np.array_equal(short[0], codec.decode(codes[None, :, :100])[0, 0].numpy())
