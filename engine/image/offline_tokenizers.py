"""Tokenizers built in code, with no download: byte-level CLIP and character-level T5.

The tiny random models use them, and so does the full-size GPU bench (its ids fall inside
the real vocabularies, and the sequence lengths are the real ones). Real checkpoints bring
their own tokenizers.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import CLIPTokenizer, T5Tokenizer

# T5 tokens per prompt of the tiny FLUX (the real FLUX.1 dev reads 512).
TINY_T5_TOKENS = 32


def _byte_level_alphabet() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def offline_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with no merges, built without any download."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    alphabet = _byte_level_alphabet()
    for suffix in ("", "</w>"):
        for ch in alphabet:
            vocab[ch + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def offline_t5_tokenizer(max_length: int = 512) -> T5Tokenizer:
    """A character-level T5 tokenizer (unigram over printable ASCII), built without a download."""
    chars = [chr(c) for c in range(32, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    vocab += [(c, -2.0) for c in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    # transformers 5's T5Tokenizer is the tokenizers-backed ("fast") one.
    return T5Tokenizer(
        tokenizer_object=tok,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=max_length,
    )
