"""
Loading the authors' released VATT checkpoints (official.py): key coverage, forward parity, the
official sampler schedule, and the stage-1 Converter weights on current transformers + peft.

The fixtures (../shared/fixtures, README sections 3-5) were made by running the official code.
Without that folder the fixture tests skip. Nothing here touches the network: the LLMs are tiny
random models saved to a temporary folder, and the codec is built locally.
"""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # so `import official` works however pytest is started
from tools import official as O  # noqa: E402
from conftest import fixture, make_llm  # noqa: E402
from stage2_audio import VATTAudio, masked_loss, released_order, sincos_table  # noqa: E402

# the tiny LLMs' vocabulary: their prompt templates and the test prompts
WORDS = " ".join(O.TEMPLATES.values()) + " user model a dog barks twice loudly then rain falls " + " ".join(
    f"w{i}" for i in range(40))

pytestmark = pytest.mark.usefixtures("offline")  # no test here may reach the hub
ATOL, RTOL = 1e-5, 1e-4  # float32 on CPU (README §4)


@pytest.fixture(scope="module")
def tiny():
    return torch.load(fixture("vatt_audio_tiny.pt"), weights_only=True)


def expand_patterns(patterns):
    """{'a.layers.{i}.b': n} -> the n concrete keys."""
    return [p.replace("{i}", str(i)) for p, n in patterns.items() for i in (range(n) if "{i}" in p else [0])]


# -----------------------------------------------------------------------------
# VATT Audio: key coverage of the full-size checkpoints


@pytest.mark.parametrize("family", ["gemma", "vicuna"])
def test_official_vatt_audio_keys(family):
    manifest = json.loads(fixture(f"vatt_audio_keys_{family}.json").read_text())
    llm_keys = json.loads(fixture("vatt_converter_keys.json").read_text())["full"]["stage2_lightning_ckpt_non_vt2a_keys"]
    # a zero-filled Lightning state_dict: every VT2AModel key under audio_token_decoder., plus the
    # frozen LLM / LoRA keys the wrappers also save. Zero tensors are expanded views of one scalar,
    # so the 415 M elements cost no memory.
    zeros = lambda shape, dtype="float32": torch.zeros((), dtype=getattr(torch, dtype)).expand(shape)  # noqa: E731
    sd = {O.PREFIX + e["key"]: zeros(e["shape"], e["dtype"]) for e in manifest["keys"]}
    extra = expand_patterns(llm_keys[family]["patterns"])
    assert len(extra) == llm_keys[family]["count"]  # 238 (Gemma) / 452 (Vicuna)
    sd.update({k: zeros((1,)) for k in extra})

    cfg = O.official_config(sd)
    c = manifest["config"]
    assert (cfg.dim, cfg.cond_dim, cfg.n_multiway, cfg.n_plain, cfg.n_head, cfg.head_dim) == \
        (c["dim"], c["encoder_dim"], c["num_layers"], c["dec_num_layers"], c["num_heads"], c["dim_head"])
    assert (cfg.n_q, cfg.bins, cfg.codebook_dim, cfg.max_len) == \
        (c["n_codebooks"], c["num_tokens"], c["latent_dim"], c["audio_seq_len"] + c["visual_seq_len"])

    report = {}
    ours = O.official_to_ours(sd, zeros((cfg.n_q, cfg.bins, cfg.codebook_dim)), report)
    assert sorted(report["ignored"]) == sorted(extra)  # the documented ignored keys, and only those
    n_alias = sum(1 for e in manifest["keys"] if "alias_of" in e)
    assert report["n_aliases"] == n_alias + 4  # + the original (A, B) x (weight, bias)
    with torch.device("meta"):  # full size, no memory, no init time
        model = VATTAudio(cfg)
    res = model.load_state_dict(ours, strict=True, assign=True)  # also raises on any shape mismatch
    assert res.missing_keys == [] and res.unexpected_keys == []
    # the one shared LayerNorm pair becomes 25 pairs of ours (24 pre-norms + the final norm)
    n_ours = sum(p.numel() for p in model.parameters())
    assert n_ours == manifest["num_trainable_parameter_elements"] + 24 * 2 * 2 * cfg.dim
    assert report["pos_embed"].shape == (1, cfg.max_len, cfg.dim)


def test_official_vatt_audio_mapping_errors(tiny):
    sd = dict(tiny["state_dict"])
    sd["encoder.attn_layers.layers.2.0.0.A.weight"] = sd["encoder.attn_layers.layers.2.0.0.A.weight"] + 1
    with pytest.raises(ValueError, match="shares ONE LayerNorm"):
        O.official_to_ours(sd)
    sd = dict(tiny["state_dict"])
    sd["pos_embed"] = torch.zeros_like(sd["pos_embed"])
    with pytest.raises(ValueError, match="pos_embed"):
        O.build_official_vatt_audio(sd, tiny["frozen_codebooks"])
    with pytest.raises(ValueError, match="codebooks"):
        O.build_official_vatt_audio(tiny["state_dict"], tiny["frozen_codebooks"][:, :32])
    with pytest.raises(ValueError, match="codebooks are not in the checkpoint"):
        O.build_official_vatt_audio(tiny["state_dict"], None)


# -----------------------------------------------------------------------------
# VATT Audio: forward parity with the official VT2AModel


def test_official_vatt_audio_parity(tiny):
    fx = tiny
    assert torch.equal(fx["tokens"], fx["tokens_clean"].masked_fill(fx["mask"].bool(), fx["config"]["mask_token"]))
    # their table and ours are the same sin-cos positions up to float32 rounding (official.py quirk 3)
    pos_diff = (fx["state_dict"]["pos_embed"][0] - sincos_table(1000, 64)).abs().max().item()
    assert pos_diff < 1e-4

    natural = O.build_official_vatt_audio(fx["state_dict"], fx["frozen_codebooks"], head_order="natural")
    model = O.build_official_vatt_audio(fx["state_dict"], fx["frozen_codebooks"])  # their order, the default
    assert natural.config.head_order == "natural" and model.config.head_order == "released"
    assert not natural.training and not model.training and model.config.bins == 64
    # their exact position table is the model's (persistent) `pos` buffer
    assert torch.equal(model.pos, fx["state_dict"]["pos_embed"][0]) and torch.equal(model.state_dict()["pos"], model.pos)
    null = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        by_head = natural(fx["tokens"], fx["cond"], fx["cond_mask"])  # natural order: head k at position t
        true_order = model(fx["tokens"], fx["cond"], fx["cond_mask"])  # what their sampler reads
        null_by_head = natural(fx["tokens"], fx["cond"], fx["cond_mask"], null)
    diffs = {"logits": (O.official_flat_logits(by_head) - fx["logits"]).abs().max().item(),
             "logits_by_head": (by_head - fx["logits_by_head"]).abs().max().item(),
             "logits_true_order": (true_order - fx["logits_true_order"]).abs().max().item(),
             "logits_null_cond": (O.official_flat_logits(null_by_head) - fx["logits_null_cond"]).abs().max().item()}
    print("max abs diff vs the official VT2AModel:", diffs, "pos_embed vs our table:", pos_diff)
    assert torch.allclose(O.official_flat_logits(by_head), fx["logits"], atol=ATOL, rtol=RTOL)
    assert torch.allclose(by_head, fx["logits_by_head"], atol=ATOL, rtol=RTOL)
    assert torch.allclose(true_order, fx["logits_true_order"], atol=ATOL, rtol=RTOL)
    assert torch.allclose(O.official_flat_logits(null_by_head), fx["logits_null_cond"], atol=ATOL, rtol=RTOL)
    assert not torch.allclose(null_by_head, by_head, atol=1e-3)  # the null path is a different path

    # the ordering quirk itself, on the fixture's own tensors (a pure permutation)
    assert torch.equal(released_order(fx["logits_by_head"]), fx["logits_true_order"])
    # targets and loss: theirs (flat logits, "b (t c)" targets, ignore -1, smoothing 0.1) ==
    # our masked loss on the re-ordered logits
    t_masked = O.official_targets(fx["tokens_clean"], fx["mask"])
    assert torch.equal(t_masked, fx["t_masked"])
    loss = F.cross_entropy(O.official_flat_logits(by_head), t_masked, ignore_index=-1, label_smoothing=0.1)
    ours = masked_loss(true_order, fx["tokens_clean"], fx["mask"].bool(), label_smoothing=0.1)
    print(f"loss: official {fx['loss'].item():.6f}, theirs recomputed {loss.item():.6f}, ours {ours.item():.6f}")
    assert torch.allclose(loss, fx["loss"], atol=ATOL, rtol=RTOL)
    assert torch.allclose(ours, fx["loss"], atol=ATOL, rtol=RTOL)
    # without the permutation our loss would score the wrong heads
    by_head_loss = masked_loss(by_head, fx["tokens_clean"], fx["mask"].bool(), label_smoothing=0.1)
    assert not torch.allclose(by_head_loss, fx["loss"], atol=1e-3)


def test_official_vatt_audio_padding(tiny):
    """Changing the padded condition rows (cond_mask == 0: sample 1 is left-padded by 2) changes
    no logit, on the conditional and on the null path."""
    fx = tiny
    model = O.build_official_vatt_audio(fx["state_dict"], fx["frozen_codebooks"])
    pad = fx["cond_mask"] == 0
    assert pad.sum() == 2
    cond = fx["cond"].clone()
    cond[pad] = torch.randn(int(pad.sum()), cond.shape[-1]) * 100
    for drop in (None, torch.ones(2, dtype=torch.bool)):
        with torch.no_grad():
            a = model(fx["tokens"], fx["cond"], fx["cond_mask"], drop)
            b = model(fx["tokens"], cond, fx["cond_mask"], drop)
        assert (a - b).abs().max().item() <= 1e-6
        assert torch.equal(a, b)


def _payload(marker):
    """What a pickled object in a checkpoint may run when loaded fully: here, it leaves a file."""
    Path(marker).write_text("ran")


class RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return _payload, (self.marker,)


def test_official_vatt_audio_lightning_file(tiny, tmp_path):
    """A Lightning-style .ckpt: the `audio_token_decoder.` prefix, LLM keys to ignore, pickled
    objects that the safe loader refuses (one line naming them; the payload never runs) unless
    trust_pickle loads the file fully, codebooks as a file."""
    fx = tiny
    sd = {O.PREFIX + k: v for k, v in fx["state_dict"].items()}
    sd["encoder.base_model.model.model.norm.weight"] = torch.ones(8)
    path, marker = tmp_path / "vatt.ckpt", tmp_path / "payload-ran"
    torch.save({"state_dict": sd, "epoch": 3, "hyper_parameters": argparse.Namespace(lr=2e-4),
                "callbacks": RunsCode(marker)}, path)
    torch.save(fx["frozen_codebooks"], tmp_path / "codebooks.pt")
    for load in (lambda: O.load_checkpoint(path), lambda: O.load_official_vatt_audio(path, tmp_path / "codebooks.pt")):
        with pytest.raises(SystemExit) as e:
            load()
        msg = str(e.value)
        assert msg.startswith(f"error: {path}: refused (its pickle would run code: ") and "\n" not in msg, msg
        assert "argparse.Namespace" in msg and "_payload" in msg and msg.endswith(
            "; if you trust this file, --trust_pickle loads it fully, running that code"), msg
        assert not marker.exists()  # refused before anything in the pickle ran
    model = O.load_official_vatt_audio(path, tmp_path / "codebooks.pt", trust_pickle=True)
    assert marker.exists()  # loaded fully: its pickled code ran, as --trust_pickle says
    assert isinstance(model, VATTAudio) and model.config.head_order == "released"
    assert model.official_report["ignored"] == ["encoder.base_model.model.model.norm.weight"]
    with torch.no_grad():
        out = model(fx["tokens"], fx["cond"], fx["cond_mask"])
    assert torch.allclose(out, fx["logits_true_order"], atol=ATOL, rtol=RTOL)
    # codebooks in the other accepted forms
    tables = fx["frozen_codebooks"]
    assert torch.equal(O.load_codebooks(list(tables)), tables)
    q = {f"quantizer.vq.layers.{i}._codebook.embed": t for i, t in enumerate(tables)}
    assert torch.equal(O.load_codebooks(q), tables)


# -----------------------------------------------------------------------------
# the official sampler schedule


def test_official_sampler_schedule(tiny):
    import sample

    fx = tiny
    revealed = sample.reveal_counts(2000, 16)
    assert revealed == fx["sampler_newly_revealed_per_step"]
    masked = [2000 - sum(revealed[: i + 1]) for i in range(16)]
    assert masked == fx["sampler_num_to_mask_per_step"]
    assert [2000] + masked[:-1] == fx["sampler_masked_before_step"]


# -----------------------------------------------------------------------------
# the Converter: their stage-1 keys on current transformers + peft


def official_stage1_file(manifest, family):
    """A state dict in exactly the key names (and shapes) of their Trainer's pytorch_model.bin:
    random trained keys (LoRA B nonzero, unlike an untrained LoRA) + some frozen base keys."""
    stage1 = manifest["stage1_llama" if family == "vicuna" else "stage1_gemma"]
    g = torch.Generator().manual_seed(1)
    sd = {k: torch.randn(shape, generator=g) * 0.5 for k, (shape, _) in
          stage1["trained_keys(lora_ or video in name)"].items()}
    frozen = [k for k in expand_patterns(stage1["trainer_pytorch_model_bin_key_patterns"])
              if "lora_" not in k and "video" not in k]
    assert len(sd) + len(frozen) == stage1["trainer_pytorch_model_bin_all_keys_count"]
    sd.update({k: torch.zeros(3) for k in frozen})
    return sd, frozen


@pytest.fixture(scope="module")
def converter_manifest():
    return json.loads(fixture("vatt_converter_keys.json").read_text())


@pytest.mark.parametrize("family", ["vicuna", "gemma"])
def test_official_converter_keys(family, converter_manifest, tmp_path):
    m = converter_manifest
    cfg = m["source"]["tiny_configs"]["llama" if family == "vicuna" else "gemma"]
    base = make_llm(tmp_path / "llm", family, cfg, WORDS)
    sd, frozen = official_stage1_file(m["tiny"], family)
    assert len(sd) - len(frozen) == 10  # 2 layers x (q, v) x (A, B) + video_proj weight and bias
    path = tmp_path / "checkpoint-1" / "pytorch_model.bin"
    path.parent.mkdir()
    torch.save(sd, path)

    conv = O.load_official_converter(path, base, "cpu")
    assert conv.family == family and not conv.training
    assert torch.equal(conv.proj.weight, sd["base_model.model.model.video_proj.weight"])
    assert torch.equal(conv.proj.bias, sd["base_model.model.model.video_proj.bias"])
    llm_sd = conv.llm.state_dict()
    lora_keys = [k for k in sd if "lora_" in k]
    assert len(lora_keys) == 8
    for k in lora_keys:  # current peft names its LoRA matrices exactly as theirs did
        assert torch.equal(llm_sd[k], sd[k]), k
    assert sorted(conv.ignored) == sorted(set(frozen))

    # LoRA is live, with their scale alpha / r = 32 / 16 = 2
    q = conv.llm.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(3, cfg["hidden_size"])
    a, b = (sd[f"base_model.model.model.layers.0.self_attn.q_proj.lora_{n}.default.weight"] for n in "AB")
    assert torch.allclose(q(x), q.base_layer(x) + 2 * x @ a.T @ b.T, atol=1e-5)

    # the official condition layout: [10 video tokens ; left-padded prompt (BOS ... EOS)]
    feats = torch.randn(2, O.VIDEO_FRAMES, 768)
    prompts = ["a dog barks", "a dog barks twice loudly then rain falls"]
    cond, mask = conv.condition(feats, prompts)
    ids = [conv.prompt_ids(p)[0] + [conv.tokenizer.eos_token_id] for p in prompts]
    assert ids[0][0] == conv.tokenizer.bos_token_id and (family == "vicuna" or ids[0][1] == conv.tokenizer.bos_token_id)
    n0, n1 = len(ids[0]), len(ids[1])
    assert cond.shape == (2, 10 + n1, cfg["hidden_size"]) and cond.dtype == torch.float32
    assert mask[0].tolist() == [1] * 10 + [0] * (n1 - n0) + [1] * n0 and mask[1].tolist() == [1] * (10 + n1)
    alone, _ = conv.condition(feats[1:], prompts[1:])  # the unpadded sample is unaffected by its batch
    assert torch.allclose(alone[0], cond[1], atol=1e-5)
    # ...but the padded one is: their position ids run 0..L-1 through the padding (after the video),
    # so its prompt tokens sit p positions further from the video than when alone
    alone0, _ = conv.condition(feats[:1], prompts[:1])
    assert not torch.allclose(alone0[0], cond[0][mask[0].bool()], atol=1e-4)

    # the official formula, written out: LLM(last layer, final norm) over [proj(pool50->10) ; E[ids]]
    # with positions 0..L-1; Gemma scales the WHOLE input by sqrt(hidden) (their copy of Gemma)
    raw = conv.llm.get_input_embeddings().weight
    vid = conv.proj(F.adaptive_avg_pool1d(feats[1:].transpose(1, 2), 10).transpose(1, 2))
    x = torch.cat([vid, F.embedding(torch.tensor([ids[1]]), raw)], 1)
    if family == "gemma":
        assert torch.allclose(conv.video_embeds(feats[1:]), vid * cfg["hidden_size"] ** 0.5, atol=1e-5)
        x = x * cfg["hidden_size"] ** 0.5
        inner = conv.llm.base_model.model.model
        h = x
        pos = torch.arange(x.shape[1])[None]
        emb = inner.rotary_emb(h, pos)
        for layer in inner.layers:
            h = layer(h, attention_mask=None, position_ids=pos, position_embeddings=emb)
            h = h[0] if isinstance(h, tuple) else h
        ref = inner.norm(h)
    else:
        ref = conv.llm.get_decoder()(inputs_embeds=x, position_ids=torch.arange(x.shape[1])[None]).last_hidden_state
    assert torch.allclose(alone, ref, atol=1e-4), (alone - ref).abs().max()

    # a nonzero LoRA B changes the condition; zeroing it gives the base LLM's
    for mod in conv.llm.modules():
        if hasattr(mod, "lora_B"):
            mod.lora_B["default"].weight.data.zero_()
    base_only, _ = conv.condition(feats, prompts)
    assert not torch.allclose(base_only, cond, atol=1e-3)

    # long prompts: refused when sampling, cut (to 64 tokens, EOS not appended) when asked
    long = " ".join(f"w{i % 40}" for i in range(80))
    with pytest.raises(ValueError, match="longer than"):
        conv.condition(feats[:1], [long])
    c, mk = conv.condition(feats[:1], [long], cut=True)
    assert c.shape[1] == 10 + O.MAX_TEXT_TOKENS


def test_official_converter_other_files(converter_manifest, tmp_path):
    """The same weights under the stage-2 Lightning names (Gemma drops one `.model`), and peft's
    adapter_model.bin (no `.default`, no video_proj: refused with a pointer to the right file)."""
    m = converter_manifest
    cfg = m["source"]["tiny_configs"]["gemma"]
    base = make_llm(tmp_path / "llm", "gemma", cfg, WORDS)
    sd, _ = official_stage1_file(m["tiny"], "gemma")
    trained = {k: v for k, v in sd.items() if "lora_" in k or "video" in k}
    lightning = {"encoder." + k.replace("base_model.model.model.", "base_model.model."): v for k, v in trained.items()}
    lightning["audio_token_decoder.img_linear.weight"] = torch.zeros(3)
    lightning["embed_tokens.weight"] = torch.zeros(3)
    conv = O.load_official_converter(lightning, base, "cpu")
    for k, v in trained.items():
        target = conv.proj.weight if k.endswith("video_proj.weight") else conv.proj.bias if "video_proj" in k \
            else conv.llm.state_dict()[k]
        assert torch.equal(target, v), k
    assert sorted(conv.ignored) == ["audio_token_decoder.img_linear.weight", "embed_tokens.weight"]
    adapter = {k.replace(".default", ""): v for k, v in trained.items() if "lora_" in k}
    with pytest.raises(ValueError, match="video_proj"):
        O.load_official_converter(adapter, base, "cpu")
    with pytest.raises(ValueError, match="LoRA layers"):
        O.load_official_converter({k: v for k, v in trained.items() if "layers.1." not in k}, base, "cpu")


# -----------------------------------------------------------------------------
# end to end: the download folder -> sample.py's generation loop


def released_download(fx, tmp_path):
    """A tiny copy of the authors' download: one Lightning file holding VATT Audio and the
    Converter's LoRA + video_proj (as their stage-2 checkpoints do) besides a frozen LLM weight,
    their codebooks file, a tiny Vicuna-style LLM and a codec. Returns (llm folder, codec)."""
    from codec import build_audiogen_codec

    hidden = fx["config"]["encoder_dim"]  # the tiny VT2AModel takes 32-d LLM states
    llm = make_llm(tmp_path / "vicuna", "vicuna", dict(vocab_size=100, hidden_size=hidden, intermediate_size=64,
                                                         num_hidden_layers=2, num_attention_heads=2), WORDS)
    g = torch.Generator().manual_seed(2)
    sd = {O.PREFIX + k: v for k, v in fx["state_dict"].items()}
    for i in range(2):
        for p in "qv":
            sd[f"encoder.base_model.model.model.layers.{i}.self_attn.{p}_proj.lora_A.default.weight"] = torch.randn(16, hidden, generator=g) * 0.1
            sd[f"encoder.base_model.model.model.layers.{i}.self_attn.{p}_proj.lora_B.default.weight"] = torch.randn(hidden, 16, generator=g) * 0.1
    sd["encoder.base_model.model.model.video_proj.weight"] = torch.randn(hidden, 768, generator=g) * 0.05
    sd["encoder.base_model.model.model.video_proj.bias"] = torch.zeros(hidden)
    sd["encoder.base_model.model.model.norm.weight"] = torch.ones(hidden)  # the frozen LLM's: not converted
    (tmp_path / "vatt_models").mkdir()
    torch.save({"state_dict": sd, "epoch": 1}, tmp_path / "vatt_models" / "tiny.ckpt")
    torch.save(fx["frozen_codebooks"], tmp_path / O.CODEBOOKS)
    torch.manual_seed(0)
    return llm, build_audiogen_codec(n_filters=4, dimension=16, bins=64)  # same table shape as the fixture


def test_official_end_to_end(tiny, tmp_path):
    import sample

    fx = tiny
    llm, codec = released_download(fx, tmp_path)
    models = O.load_official_models(tmp_path, "cpu", vatt="tiny.ckpt", llm=llm, codec=codec)
    assert isinstance(models.audio, VATTAudio) and models.audio.config.head_order == "released"
    assert models.meta["fps"] == 5 and models.meta["seconds"] == 10 and models.meta["feature_dim"] == 768
    assert models.files["converter"].endswith("(encoder.*)")
    assert torch.equal(models.converter.proj.bias, torch.zeros(fx["config"]["encoder_dim"]))
    args = dataclasses.replace(sample.Config(), steps=4)
    feats = torch.randn(50, 768)
    out = sample.generate(models, [feats], [10.0], ["a dog barks"], [0], args, torch.device("cpu"))
    codes = out[0]["codes"]
    assert codes.shape == (4, 500) and codes.min() >= 0 and codes.max() < 64
    again = sample.generate(models, [feats], [10.0], ["a dog barks"], [0], args, torch.device("cpu"))
    assert torch.equal(again[0]["codes"], codes)  # seeded
    wav = models.codec.decode(codes[None, :, :50])  # the first second is enough to see it decodes
    assert wav.shape == (1, 1, 50 * 320)


def test_converted_checkpoint_samples_the_same_audio_bit_for_bit(tiny, tmp_path, capsys):
    """`official.py convert`: their .ckpt read once, then files without pickle (safetensors and
    JSON) that sample the same codes and the same waveform, bit for bit, as the .ckpt itself."""
    import sample
    from safetensors import safe_open

    llm, codec = released_download(tiny, tmp_path)
    ckpt = tmp_path / "vatt_models" / "tiny.ckpt"
    assert O.main(["convert", str(ckpt), str(tmp_path / "released"), f"--codebooks={tmp_path / O.CODEBOOKS}"]) == 0
    printed = capsys.readouterr().out
    meta = json.loads((tmp_path / "released" / "stage2.json").read_text())
    assert meta["kind"] == "vatt-audio" and meta["model_config"]["head_order"] == "released"
    assert set(meta["config"]["converted_from"]) == {str(ckpt), str(tmp_path / O.CODEBOOKS)}
    for path, digest in meta["config"]["converted_from"].items():
        assert digest == O.sha256(path) and f"sha256 {digest}  {path}" in printed
    with safe_open(tmp_path / "released" / O.CONVERTED_CONVERTER, "pt") as f:
        assert len(list(f.keys())) == 2 * 2 * 2 + 2 and not any("norm" in k for k in f.keys())  # LoRA + video_proj

    args = dataclasses.replace(sample.Config(), steps=4)
    feats, device = torch.randn(50, 768), torch.device("cpu")
    results = []
    for vatt in ("tiny.ckpt", str(tmp_path / "released" / "stage2.safetensors")):
        models = O.load_official_models(tmp_path, "cpu", vatt=vatt, llm=llm, codec=codec)
        out = sample.generate(models, [feats], [10.0], ["a dog barks"], [0], args, device)
        results.append((out[0]["codes"], models.codec.decode(out[0]["codes"][None, :, :100])))
    assert models.files["converter"].endswith(O.CONVERTED_CONVERTER)
    (codes, wav), (codes2, wav2) = results
    assert torch.equal(codes, codes2) and torch.equal(wav, wav2)
