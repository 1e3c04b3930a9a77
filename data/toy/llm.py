"""
The toy world's LLM: a tiny random Gemma over a word-level tokenizer whose words are those of the
train split's captions and the instructions, built and saved with save_pretrained into a folder,
which stage 1 then loads like any --llm (stage1_caption.load_llm, the same from_pretrained path as
Gemma-2B). A random LM has nothing to preserve, so the toy trains all of its weights but the frozen
input embeddings instead of LoRA (stage1_caption.build_converter).

    python data/toy/llm.py --seed=0 --out=out/toy/base_llm     # make demo's, before stage 1 (--seed=SEED)
    python data/toy/llm.py --out=out/tiny_llm --toy_width=32 --toy_layers=1 --toy_heads=2   # one of another size
"""
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import GemmaConfig, GemmaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from stage1_caption import INSTRUCTIONS  # noqa: E402
from utils import atomic_path, parse_config  # noqa: E402


@dataclass
class Config:
    preset: str = "toy"
    data_json: str = "data/toy/v2a_instruction.json"  # the words of its train captions make the vocabulary
    out: str = "out/toy/base_llm"  # the folder written: stage 1's --llm
    toy_layers: int = 2
    toy_width: int = 128
    toy_heads: int = 4
    seed: int = 1337  # the weights' seed, and the stream stage 1's initial weights go on from (make demo: one SEED)


def toy_tokenizer(texts):
    """A word-level tokenizer over the words of `texts` (lower-cased), with Gemma's special tokens
    and its chat format. The toy LLM's tokenizer; the speed benchmark (tools/bench.py) reuses it."""
    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    words = sorted({w for text in texts + ["user model"]
                    for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text.lower())})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(special + words)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(special)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", unk_token="<unk>")
    # Gemma's chat format, word-level
    tokenizer.chat_template = ("{{ bos_token }}{% for m in messages %}<start_of_turn> {{ m['role'] }} "
                               "{{ m['content'] }} <end_of_turn> {% endfor %}"
                               "{% if add_generation_prompt %}<start_of_turn> model {% endif %}")
    return tokenizer


def toy_llm_config(cfg, tokenizer):
    """The toy LLM: a tiny Gemma of cfg's toy width, layers and heads over the toy tokenizer (the
    speed benchmark, tools/bench.py, builds the same)."""
    return GemmaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.toy_width, intermediate_size=4 * cfg.toy_width,
        num_hidden_layers=cfg.toy_layers, num_attention_heads=cfg.toy_heads, num_key_value_heads=1,
        head_dim=cfg.toy_width // cfg.toy_heads, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)  # see the freeze in stage1_caption.build_converter


def build_toy_llm(cfg, texts, folder):
    """The toy tokenizer over the words of `texts` (the captions and instructions) plus a random
    GemmaForCausalLM, saved with save_pretrained so every later load goes through the same
    from_pretrained path as Gemma-2B. Beside it, rng_state.pt: the seeded random stream as the
    LLM's init leaves it, which stage 1 continues for the Converter's initial weights
    (stage1_caption.build_converter), as one process drawing both would: the toy's results rest on
    that draw of the projector's init (docs/toy-tuning.md, "One draw of the projector's init")."""
    tokenizer = toy_tokenizer(texts)
    torch.manual_seed(cfg.seed)
    llm = GemmaForCausalLM(toy_llm_config(cfg, tokenizer))
    # The input embeddings stay frozen (stage1_caption.build_converter), so they are drawn at the scale of the
    # hidden states (unit RMS after Gemma's sqrt(width) scaling) rather than Gemma's 0.02, so that
    # a word's identity is not drowned by the layers' outputs in the last layer, whose states
    # stage 2 reads (docs/toy-tuning.md).
    nn.init.normal_(llm.get_input_embeddings().weight, std=cfg.toy_width ** -0.5)
    with atomic_path(Path(folder) / "rng_state.pt") as tmp:
        torch.save(torch.get_rng_state(), tmp)  # the stream after the last draw
    llm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def main(argv=None):
    cfg = parse_config(Config, {"toy": {}}, argv)
    out = Path(cfg.out)
    if (out / "config.json").exists():
        print(f"{out}: a base LLM is already there, kept")
        return
    captions = [e["output"] for e in json.loads(Path(cfg.data_json).read_text(encoding="utf-8")) if e["split"] == "train"]
    build_toy_llm(cfg, captions + INSTRUCTIONS, out)
    print(f"{out}: a random {cfg.toy_layers}-layer Gemma of width {cfg.toy_width} (seed {cfg.seed})")


if __name__ == "__main__":
    main()
