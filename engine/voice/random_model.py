"""VibeVoice folders with random weights, built from a config, laid out as a pulled model.

The neural back end's tests and ``bench/voice_gpu.sh`` need a model where no weights can
be downloaded: this writes one (config, safetensors, tokenizer, processor, generation
config) that :class:`engine.voice.neural.VibeVoiceModel` opens exactly as it opens a pulled
``vibevoice/VibeVoice-1.5B-hf``. It speaks noise. ``tiny`` runs in seconds on a CPU;
``full`` has the published 1.5B model's sizes (written down here, since its config cannot
be fetched), for measuring speed.

The language model head's rows of the four tokens generation chooses between are zeroed,
so the random model keeps choosing "another audio frame" (the lowest id) until the
length cap, as a trained model does until the text is read: a random head would stop at
a random step and make timings meaningless.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from engine.model_loading import loading_models

Size = Literal["tiny", "full"]
# The four special tokens, audio frame first (the id ties are broken towards).
SPECIAL_TOKENS = ["<|vision_pad|>", "<|endoftext|>", "<|vision_start|>", "<|vision_end|>"]
# Qwen2.5-1.5B, VibeVoice-1.5B's language model (its published config.json).
FULL_TEXT = {
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "max_position_embeddings": 65536,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
# The acoustic (64-d latents) and semantic (128-d) tokenizers and the diffusion head of
# VibeVoice-1.5B: 32 filters, ratios 2-2-4-5-5-8 (3200 samples a frame), depths 3x6 + 8;
# a 4-layer head with a 3x feed-forward. These are transformers' defaults for the classes.
FULL_AUDIO: dict[str, Any] = {"model_type": "vibevoice_acoustic_tokenizer", "hidden_size": 64}
FULL_SEMANTIC: dict[str, Any] = {
    "model_type": "vibevoice_acoustic_tokenizer_encoder",
    "hidden_size": 128,
}
FULL_HEAD: dict[str, Any] = {"num_hidden_layers": 4, "intermediate_size": 4608}
TINY_TEXT = {
    "model_type": "qwen2",
    "vocab_size": 320,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}
_TINY_CODEC = {"num_filters": 2, "depths": [1, 1, 1, 1, 1, 1, 1], "ffn_expansion": 1}
TINY_AUDIO = {"model_type": "vibevoice_acoustic_tokenizer", "hidden_size": 8, **_TINY_CODEC}
TINY_SEMANTIC = {
    "model_type": "vibevoice_acoustic_tokenizer_encoder",
    "hidden_size": 16,
    **_TINY_CODEC,
}
TINY_HEAD = {"num_hidden_layers": 1, "intermediate_size": 64, "frequency_embedding_size": 32}
_CORPUS = [
    "Speaker Voice input Text input Speech output the a and of to in is it that was",
    "hello world this is a test of the voice the quick brown fox jumps over the lazy dog",
]


def build_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE tokenizer with VibeVoice's special tokens (Qwen2's classes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, 320),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS, trainer)
    return Qwen2Tokenizer(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def build_random_model(
    folder: Path, size: Size = "tiny", *, device: str = "cpu", dtype: str = "float32"
) -> Path:
    """Write a random-weight VibeVoice of ``size`` into ``folder`` (created); return it."""
    import torch
    from transformers import (
        VibeVoiceConfig,
        VibeVoiceForConditionalGeneration,
        VibeVoiceProcessor,
    )
    from transformers.models.vibevoice_acoustic_tokenizer import (
        VibeVoiceAcousticTokenizerFeatureExtractor,
    )

    from engine.voice.neural import CHAT_TEMPLATE, SAMPLE_RATE

    full = size == "full"
    text = FULL_TEXT if full else TINY_TEXT
    tokenizer = build_tokenizer(int(text["vocab_size"]))  # type: ignore[call-overload]
    ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS}
    config = VibeVoiceConfig(
        text_config=dict(text),
        audio_config=dict(FULL_AUDIO if full else TINY_AUDIO),
        semantic_model_config=dict(FULL_SEMANTIC if full else TINY_SEMANTIC),
        diffusion_head_config=dict(FULL_HEAD if full else TINY_HEAD),
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        audio_token_id=ids["<|vision_pad|>"],
        audio_bos_token_id=ids["<|vision_start|>"],
        audio_eos_token_id=ids["<|vision_end|>"],
    )
    # Seeded from the process's RNG and built from modules: under the process-wide lock.
    with loading_models(), torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        model = VibeVoiceForConditionalGeneration(config).to(getattr(torch, dtype))
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        for token_id in ids.values():
            head[token_id].zero_()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor = VibeVoiceProcessor(
        feature_extractor=VibeVoiceAcousticTokenizerFeatureExtractor(sampling_rate=SAMPLE_RATE),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
    return folder
