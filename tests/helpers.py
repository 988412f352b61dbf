"""Test helpers: tiny random teachers and tokenizers (no download, a few hundred KB of weights),
folders of them, and small corpora.

The teachers are real transformers models of each supported family, so every code path that handles a
real teacher (weight transfer, hooks, generation, export) runs on them unchanged.
"""

from __future__ import annotations

import torch

TINY_VOCAB = 320  # 256 byte tokens + a few specials, rounded up


def tiny_teacher(family: str = "llama", seed: int = 0, **overrides):
    """A 2-layer random causal LM of the given family (llama, mistral, qwen2, qwen3)."""
    import transformers

    shape = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    shape.update(overrides)
    config_cls = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
    }[family]
    if family == "qwen3":
        shape.setdefault("head_dim", 16)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config_cls(**shape))
    # Random biases (Qwen2 q/k/v) default to zero; make them non-zero so transfer tests see them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(std=0.02)
    return model.eval()


def tiny_tokenizer():
    """A byte-level tokenizer without merges: one token per UTF-8 byte, plus <pad> <s> </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for b in range(256):
        vocab[_byte_char(b)] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.decoder = decoders.ByteLevel()
    # ByteLevel maps bytes to printable stand-ins; splitting on "" then makes one token per byte.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False), pre_tokenizers.Split("", "isolated")]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<pad>"
    )


def _byte_char(b: int) -> str:
    # The printable stand-in GPT-2 byte-level tokenizers use for byte b.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    if b in printable:
        return chr(b)
    return chr(256 + sum(1 for x in range(b) if x not in printable))


def write_word_corpus(path, words: list[str], n_docs: int, stride: int, min_words: int, extra_words: int,
                      numbered: bool = False):
    """A small deterministic .jsonl corpus: document i is `min_words + i % extra_words` words of
    `words`, starting at word `i * stride` and wrapping around (prefixed "doc i: " if numbered)."""
    import json
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i in range(n_docs):
            text = " ".join(words[(i * stride + j) % len(words)] for j in range(min_words + i % extra_words))
            f.write(json.dumps({"text": f"doc {i}: {text}" if numbered else text}) + "\n")
    return path


def save_tiny_teacher(folder, family: str = "llama", seed: int = 0, **overrides) -> str:
    """A tiny teacher and the byte tokenizer saved as a Hugging Face folder."""
    tiny_teacher(family, seed=seed, **overrides).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


def save_tiny_student(folder, family: str = "llama", seed: int = 0, arch: str = "rwkv7") -> str:
    """An exported student (attention transfer from a tiny teacher, untrained) with the byte tokenizer."""
    from radlads.export import save_model
    from radlads.transfer import build_student

    return str(save_model(build_student(tiny_teacher(family, seed=seed), arch), tiny_tokenizer(), folder))


def cli_error(capsys, argv: list[str], alone: bool = True) -> str:
    """Run `radlads ARGV`: it must exit 2 with one error line on stderr, which is returned.

    alone=False allows other stderr lines (loading bars) besides the one `error:` line.
    """
    from radlads.cli import main

    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and (len(lines) == 1 or not alone), lines
    return errors[0]
