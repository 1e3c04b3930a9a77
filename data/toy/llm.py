"""
The toy world's LLM: a tiny random Gemma over a word-level tokenizer, built and saved with
save_pretrained, so stage 1 loads it through the same from_pretrained path as Gemma-2B
(stage1_caption.load_llm). A random LM has nothing to preserve, so the toy trains all of its
weights but the frozen input embeddings instead of LoRA (stage1_caption.main).
"""
import torch
import torch.nn as nn
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import GemmaConfig, GemmaForCausalLM, PreTrainedTokenizerFast


def toy_tokenizer(texts):
    """A word-level tokenizer over the words of `texts` (lower-cased), with Gemma's special tokens
    and its chat format. The toy LLM's tokenizer; the speed benchmark (bench.py) reuses it."""
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
    speed benchmark, bench.py, builds the same)."""
    return GemmaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.toy_width, intermediate_size=4 * cfg.toy_width,
        num_hidden_layers=cfg.toy_layers, num_attention_heads=cfg.toy_heads, num_key_value_heads=1,
        head_dim=cfg.toy_width // cfg.toy_heads, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)  # see the freeze in stage1_caption.main


def build_toy_llm(cfg, texts, folder):
    """The toy tokenizer over the words of `texts` (the captions and instructions) plus a random
    GemmaForCausalLM, saved with save_pretrained so every later load goes through the same
    from_pretrained path as Gemma-2B."""
    tokenizer = toy_tokenizer(texts)
    torch.manual_seed(cfg.seed)
    llm = GemmaForCausalLM(toy_llm_config(cfg, tokenizer))
    # The input embeddings stay frozen (stage1_caption.main), so they are drawn at the scale of the
    # hidden states (unit RMS after Gemma's sqrt(width) scaling) rather than Gemma's 0.02, so that
    # a word's identity is not drowned by the layers' outputs in the last layer, whose states
    # stage 2 reads (docs/toy-tuning.md).
    nn.init.normal_(llm.get_input_embeddings().weight, std=cfg.toy_width ** -0.5)
    llm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
