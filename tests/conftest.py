"""
Shared fixture: a tiny toy world and tiny trained checkpoints, built once per test session
(prepare -> extract -> stage 1 -> stage 2 on 6 train + 2 validation + 2 test clips, a few seconds on a CPU);
make_llm, a tiny random LLaMA or Gemma saved the way the hub's models are; the authors' parity
fixtures (`fixture`, skipped where absent) and `offline` (no hub access).
"""
from pathlib import Path

import pytest
import torch

import extract_features
import stage1_caption
import stage2_audio
from data.toy import llm as toy_llm, prepare

# the parity fixtures made by running the authors' code: the shared folder next to the repository
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def fixture(name):
    """A parity fixture's path; the test skips cleanly where the shared folder is absent."""
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"fixture {name} not found in {FIXTURES} (the shared fixtures folder next to the repo is absent)")
    return path


@pytest.fixture
def offline(monkeypatch):
    """No hub access: a test that reaches for the network fails instead of downloading."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


TINY_LLM = ["--toy_layers=1", "--toy_width=32", "--toy_heads=2"]
TINY_STAGE1 = ["--max_steps=2", "--eval_interval=1", "--eval_batches=1", "--batch_size=4", "--warmup_steps=1"]
TINY_STAGE2 = ["--max_steps=2", "--eval_interval=1", "--eval_batches=1", "--batch_size=4",
               "--dim=32", "--n_multiway=1", "--n_plain=1", "--n_head=2", "--head_dim=16", "--warmup_steps=1"]


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    prepare.main([f"--out_dir={d}", "--n_train=6", "--n_test=2", "--n_val=2", "--workers=1"])
    data = f"--data_json={d}/v2a_instruction.json"
    assert extract_features.main([f"--input={d}/v2a_instruction.json", f"--out_dir={d}/features", "--num_workers=0"]) == 0
    toy_llm.main([data, f"--out={d}/out/toy_llm"] + TINY_LLM)
    stage1_caption.main([data, f"--features_dir={d}/features", f"--out_dir={d}/out", f"--llm={d}/out/toy_llm"]
                        + TINY_STAGE1)
    stage2_audio.main([data, f"--features_dir={d}/features", f"--converter={d}/out/stage1.pt",
                       f"--out_dir={d}/out"] + TINY_STAGE2)
    return d


def make_llm(folder, family, cfg, text, chat_template=None):
    """A tiny random LLaMA ("vicuna") or Gemma with a word-level tokenizer over the words of
    `text` (BOS added like the authors'), saved with save_pretrained, so it loads through the
    same from_pretrained path as Vicuna / LLaMA-2 / Gemma-2B. `chat_template` (a Jinja string)
    makes it an instruction-tuned model's tokenizer. `cfg`: the model config's sizes."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import GemmaConfig, GemmaForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if family == "vicuna":  # LLaMA's ids: unk 0 (= pad, as the official), bos 1, eos 2
        special, bos, eos, unk, pad = ["<unk>", "<s>", "</s>"], "<s>", "</s>", "<unk>", None
    else:
        special, bos, eos, unk, pad = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"], \
            "<bos>", "<eos>", "<unk>", "<pad>"
    words = sorted({w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)} - set(special))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(special + words)}, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(special)
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, special.index(bos))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk, pad_token=pad)
    tokenizer.chat_template = chat_template
    assert len(tokenizer) <= cfg["vocab_size"]
    torch.manual_seed(0)
    if family == "vicuna":
        llm = LlamaForCausalLM(LlamaConfig(**cfg))
    else:
        llm = GemmaForCausalLM(GemmaConfig(**cfg, pad_token_id=0, eos_token_id=1, bos_token_id=2))
    llm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
