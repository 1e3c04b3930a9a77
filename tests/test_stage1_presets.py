"""
The real-scale stage-1 presets (gemma-2b, llama-2-7b) through their real code path: a tiny random
Gemma and LLaMA saved with save_pretrained stand in for the hub's (--llm=<folder>), loaded with
from_pretrained and wrapped with peft's LoRA. Only the LoRA matrices and the projector train and
are saved; the checkpoint, loaded back with load_converter, gives the trained model's condition.
"""
import json

import pytest
import torch

import stage1_caption
from conftest import make_llm
from extract_features import load_features
from stage1_caption import INSTRUCTIONS, TEMPLATE, load_converter

# Gemma-it's chat format (the tokenizer splits words on whitespace); LLaMA gets no template, so
# the Converter falls back to the released code's alpaca_short prompt
GEMMA_CHAT = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
              "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=16)


@pytest.mark.parametrize("preset,family,chat", [("gemma-2b", "gemma", GEMMA_CHAT), ("llama-2-7b", "vicuna", None)])
def test_stage1_preset_with_tiny_llm(world, tmp_path, monkeypatch, preset, family, chat):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    captions = [e["output"] for e in json.loads((world / "v2a_instruction.json").read_text())]
    text = " ".join(INSTRUCTIONS + captions) + " user model ### Instruction : Response :"
    llm = make_llm(tmp_path / "llm", family, TINY, text, chat)
    live = []  # the Converter main() trains, to compare with the one loaded from its checkpoint

    class Recorded(stage1_caption.Converter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            live.append(self)

    monkeypatch.setattr(stage1_caption, "Converter", Recorded)
    out = tmp_path / "out"
    # the preset as it is (LoRA r16 on q/v, 1 video token per second, and for LLaMA-2 gradient
    # checkpointing), with a small batch, two steps and a large enough lr to move LoRA visibly
    stage1_caption.main([f"--preset={preset}", f"--llm={llm}", f"--data_json={world}/v2a_instruction.json",
                         f"--features_dir={world}/features", f"--out_dir={out}", "--batch_size=4", "--micro_batch=2",
                         "--max_steps=2", "--eval_interval=2", "--eval_batches=1", "--warmup_steps=1", "--lr=1e-2"])
    trained = live[0]
    ckpt = torch.load(out / "stage1.pt", weights_only=True)
    assert ckpt["config"]["lora_r"] == 16 and ckpt["config"]["llm"] == str(llm) and "llm_path" not in ckpt

    # trainable = the LoRA matrices and the projector; the checkpoint holds exactly the LoRA ones
    lora = set(ckpt["trainable"])
    assert len(lora) == 2 * 2 * 2 and all(".lora_A." in k or ".lora_B." in k for k in lora)  # layers x (q, v) x (A, B)
    trainable = {n for n, p in trained.named_parameters() if p.requires_grad}
    assert trainable == {f"llm.{k}" for k in lora} | {"proj.weight", "proj.bias"}
    assert any(v.abs().max() > 0 for k, v in ckpt["trainable"].items() if ".lora_B." in k)  # B starts at 0: it trained
    # the base LLM is frozen: every base weight still equals the saved folder's
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(llm).state_dict()
    tuned = {k.replace(".base_layer", ""): v for k, v in trained.llm.get_base_model().state_dict().items()
             if "lora_" not in k}
    assert tuned.keys() == base.keys() and all(torch.equal(tuned[k], base[k]) for k in base)

    # the checkpoint alone rebuilds the trained Converter: the same condition states (stage 2's input)
    loaded = load_converter(out / "stage1.pt", torch.device("cpu"))
    ids = loaded.prompt_ids(TEMPLATE)[0]
    marker = "<start_of_turn>" if chat else "###"  # the chat template, or the alpaca_short fallback
    assert loaded.tokenizer.convert_tokens_to_ids(marker) in ids and loaded.tokenizer.unk_token_id not in ids
    feats = torch.stack([load_features(world / "features", f"test_0000{i}") for i in range(2)])
    prompts = [TEMPLATE, captions[0]]
    cond, mask = loaded.condition(feats, prompts)
    want, want_mask = trained.eval().condition(feats, prompts)
    assert cond.shape == (2, 2 + 108, 32) and torch.equal(mask, want_mask)  # 2 s at 1 token/s + max_text_tokens
    assert torch.allclose(cond, want, atol=1e-6), (cond - want).abs().max()
    # frozen, the LoRA is merged into the base weights (W + (alpha/r) B A, one matmul): no LoRA
    # module is left, and every q and v projection differs from the base model's
    assert not any(hasattr(m, "lora_B") for m in loaded.llm.modules())
    merged = loaded.llm.state_dict()
    projections = [k for k in base if ".q_proj." in k or ".v_proj." in k]
    assert len(projections) == 2 * 2 and not any(torch.equal(merged[k], base[k]) for k in projections)
