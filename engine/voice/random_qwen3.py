"""Qwen3-TTS folders with random weights, built from a config, laid out as a pulled model.

The qwen3 back end's tests and ``bench/voice_gpu_qwen3.sh`` need a model where no weights
can be downloaded: this writes one (config, generation config, safetensors, tokenizer, and
the ``speech_tokenizer/`` codec folder) that :class:`engine.voice.qwen3.Qwen3Model` opens
exactly as it opens a pulled ``Qwen/Qwen3-TTS-12Hz-1.7B-Base``. It speaks noise. ``tiny``
runs in seconds on a CPU; ``full`` has the sizes of the published 1.7B Base model as far as
they are written down here (its config cannot be fetched on these machines: the talker and
the code predictor below follow the model card's 1.7B / 16-codebook / 12.5 Hz description and
qwen-tts's defaults), for measuring speed and memory.

The codec head's row of the end-of-speech token is zeroed, so the random model keeps
speaking until the length cap, as a trained model does until the text is read: a random
head would stop at a random step and make timings meaningless.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from engine.model_loading import loading_models

Size = Literal["tiny", "full"]
# Chat tokens the prompt uses (qwen-tts builds "<|im_start|>assistant\n{text}<|im_end|>\n...")
# and the three text-side TTS tokens; in the real vocabulary they sit at 151644.. and 151671..
TEXT_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|tts_pad|>", "<|tts_bos|>", "<|tts_eos|>"]
# Codec-side control tokens: the top 1024 ids of the talker's vocabulary are reserved
# (generation suppresses them, except end-of-speech), the codebook's entries come first.
_CODEC_CONTROL = {
    "codec_pad_id": 4,
    "codec_bos_id": 5,
    "codec_eos_token_id": 6,
    "codec_think_id": 7,
    "codec_nothink_id": 8,
    "codec_think_bos_id": 9,
    "codec_think_eos_id": 10,
}
# The ten languages Qwen3-TTS speaks (its model card), as its config names them.
LANGUAGES = (
    "chinese",
    "english",
    "japanese",
    "korean",
    "german",
    "french",
    "russian",
    "portuguese",
    "spanish",
    "italian",
)
_CORPUS = [
    "assistant user system the a and of to in is it that was hello world",
    "this is a test of the voice the quick brown fox jumps over the lazy dog",
]

FULL: dict[str, Any] = {
    "codebook": 2048,
    "quantizers": 16,
    "text_vocab": 151936,
    "text_hidden": 2048,
    "talker": {
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "mrope_section": [24, 20, 20],
    },
    "predictor": {
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 5,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
    },
    "speaker": {"enc_dim": 2048},
    # The 12 Hz codec: Mimi's encoder at its defaults, qwen-tts's decoder at its defaults.
    "encoder": {},
    "decoder": {"codebook_dim": 512},
}
TINY: dict[str, Any] = {
    "codebook": 32,
    "quantizers": 4,
    "text_vocab": 320,
    "text_hidden": 32,
    "talker": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "mrope_section": [4, 2, 2],
    },
    "predictor": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
    },
    "speaker": {
        "enc_dim": 32,
        "enc_channels": [16, 16, 16, 16, 48],
        "enc_attention_channels": 8,
        "enc_se_channels": 8,
    },
    "encoder": {
        "hidden_size": 16,
        "num_filters": 4,
        "num_residual_layers": 1,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "intermediate_size": 32,
        "codebook_dim": 8,
        "vector_quantization_hidden_dimension": 8,
        "upsample_groups": 16,
    },
    "decoder": {
        "hidden_size": 16,
        "latent_dim": 16,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "decoder_dim": 16,
        "codebook_dim": 16,
    },
}


def build_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE tokenizer with the chat and TTS special tokens (Qwen2's classes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, 320),
        special_tokens=TEXT_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS, trainer)
    return Qwen2Tokenizer(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>")


def build_random_model(
    folder: Path, size: Size = "tiny", *, device: str = "cpu", dtype: str = "float32"
) -> Path:
    """Write a random-weight Qwen3-TTS 12 Hz Base of ``size`` into ``folder``; return it."""
    import torch
    from transformers import EncodecFeatureExtractor

    from engine.voice.qwen3 import SAMPLE_RATE, qwen_tts_modules

    qt = qwen_tts_modules()
    spec = FULL if size == "full" else TINY
    tokenizer = build_tokenizer(int(spec["text_vocab"]))
    ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in TEXT_SPECIALS}
    codebook = int(spec["codebook"])
    talker_vocab = codebook + 1024
    control = {k: codebook + v for k, v in _CODEC_CONTROL.items()}
    languages = {name: codebook + 32 + i for i, name in enumerate(LANGUAGES)}
    config = qt.Qwen3TTSConfig(
        talker_config={
            **{k: v for k, v in spec["talker"].items() if k != "mrope_section"},
            "vocab_size": talker_vocab,
            "text_vocab_size": int(spec["text_vocab"]),
            "text_hidden_size": int(spec["text_hidden"]),
            "num_code_groups": int(spec["quantizers"]),
            "rope_scaling": {
                "rope_type": "default",
                "mrope_section": spec["talker"]["mrope_section"],
                "interleaved": True,
            },
            "code_predictor_config": {
                **spec["predictor"],
                "vocab_size": codebook,
                "num_code_groups": int(spec["quantizers"]),
            },
            "spk_id": {},
            "spk_is_dialect": {},
            "codec_language_id": languages,
            **control,
        },
        speaker_encoder_config={**spec["speaker"], "sample_rate": SAMPLE_RATE},
        tokenizer_type="qwen3_tts_tokenizer_12hz",
        tts_model_size="1b7" if size == "full" else "tiny",
        tts_model_type="base",
        im_start_token_id=ids["<|im_start|>"],
        im_end_token_id=ids["<|im_end|>"],
        tts_pad_token_id=ids["<|tts_pad|>"],
        tts_bos_token_id=ids["<|tts_bos|>"],
        tts_eos_token_id=ids["<|tts_eos|>"],
    )
    codec_config = qt.Qwen3TTSTokenizerV2Config(
        encoder_config={
            **spec["encoder"],
            "codebook_size": codebook,
            "num_quantizers": int(spec["quantizers"]),
            "sampling_rate": SAMPLE_RATE,
        },
        decoder_config={
            **spec["decoder"],
            "codebook_size": codebook,
            "num_quantizers": int(spec["quantizers"]),
        },
        encoder_valid_num_quantizers=int(spec["quantizers"]),
    )
    # Seeded from the process's RNG and built from modules: under the process-wide lock.
    with loading_models(), torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        model = qt.Qwen3TTSForConditionalGeneration(config).to(getattr(torch, dtype))
        codec = qt.Qwen3TTSTokenizerV2Model(codec_config).to(getattr(torch, dtype))
    with torch.no_grad():
        model.talker.codec_head.weight[control["codec_eos_token_id"]].zero_()
        # transformers' initialisation leaves biases and the codec's Snake parameters at
        # zero, and the decoder then speaks silence: small noise, so the audio is audible.
        generator = torch.Generator(device="cpu").manual_seed(1)
        for parameter in codec.decoder.parameters():
            if parameter.is_floating_point() and not bool(parameter.any()):
                noise = torch.randn(parameter.shape, generator=generator) * 0.02
                parameter.copy_(noise.to(parameter.dtype))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    # transformers 5 writes the speaker encoder's sub-config with a "model_type" its class
    # does not take, and the talker's RoPE as "rope_parameters"; the published config.json
    # (transformers 4) has no such model_type and a "rope_scaling" with the mrope sections,
    # which qwen-tts reads: written as published.
    config_file = folder / "config.json"
    saved = json.loads(config_file.read_text())
    saved["speaker_encoder_config"].pop("model_type", None)
    talker = saved["talker_config"]
    rope = talker.pop("rope_parameters", None) or {}
    talker["rope_theta"] = rope.get("rope_theta", 10000)
    talker["rope_scaling"] = {
        "rope_type": "default",
        "type": "default",
        "mrope_section": spec["talker"]["mrope_section"],
        "interleaved": True,
    }
    config_file.write_text(json.dumps(saved, indent=2))
    tokenizer.save_pretrained(folder)
    (folder / "generation_config.json").write_text(
        json.dumps(
            {
                "do_sample": True,
                "top_k": 50,
                "top_p": 1.0,
                "temperature": 0.9,
                "repetition_penalty": 1.05,
                "subtalker_dosample": True,
                "subtalker_top_k": 50,
                "subtalker_top_p": 1.0,
                "subtalker_temperature": 0.9,
                "max_new_tokens": 8192,
            }
        )
    )
    qt.Qwen3TTSProcessor(tokenizer=tokenizer).save_pretrained(folder)
    codec_folder = folder / "speech_tokenizer"
    codec.save_pretrained(codec_folder)
    EncodecFeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE).save_pretrained(codec_folder)
    return folder
