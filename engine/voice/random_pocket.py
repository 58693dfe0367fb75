"""Pocket TTS models with random weights, laid out as ``tada-engine models pull`` lays them out.

The pocket back end's tests and ``bench/voice.py`` need a model where nothing can be
downloaded: this writes the two pulled folders (``kyutai--pocket-tts`` with the language's
``model.safetensors``, ``kyutai--pocket-tts-without-voice-cloning`` with its
``tokenizer.json``) that :class:`engine.voice.pocket.PocketModel` opens exactly as it opens
pulled ones. It speaks noise. ``tiny`` runs in milliseconds a frame; ``full`` is built from
the language config packaged in pocket-tts (the released model's sizes, about 118 M
parameters with the codec), for measuring speed.

The tokenizer is a byte-level BPE learnt from a few English sentences, with exactly the
vocabulary size the config names: everyday words are one token, as in the released one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from engine.model_store import RECORD, local_name

Size = Literal["tiny", "full"]
MODEL_REPO = "kyutai/pocket-tts"
TOKENIZER_REPO = "kyutai/pocket-tts-without-voice-cloning"
# What the random tokenizer learns its merges from: everyday English sentences.
CORPUS = (
    "The morning train was late again, so Maria walked the long way to the office. "
    "She passed the bakery on the corner, where the smell of fresh bread drifted into "
    "the street. A delivery van stopped beside her, and the driver asked for directions "
    "to the old library. When the sunlight strikes raindrops in the air, they act as a "
    "prism and form a rainbow. Please call Stella. Ask her to bring these things with her "
    "from the store. Hello world, this is a test. Hi there, how are you today? I hope you "
    "will like me. The old lighthouse keeper climbed the stairs every evening to light "
    "the lamp. Ships far out at sea counted on him. Nobody seemed to mind."
)
TINY_LANGUAGE = "tiny"
TINY_REVISION = "0" * 40
# A pocket-tts config with the released model's structure and tiny widths.
TINY_CONFIG: dict[str, Any] = {
    "weights_path": f"hf://{MODEL_REPO}/languages/tiny/model.safetensors@{TINY_REVISION}",
    "default_temperature": 0.3,
    "flow_lm": {
        "insert_bos_before_voice": True,
        "dtype": "float32",
        "flow": {"depth": 1, "dim": 16},
        "transformer": {
            "d_model": 32,
            "hidden_scale": 2,
            "max_period": 10000,
            "num_heads": 2,
            "num_layers": 1,
        },
        "lookup_table": {
            "dim": 32,
            "n_bins": 320,
            "tokenizer": "tokenizers",
            "tokenizer_path": (
                f"hf://{TOKENIZER_REPO}/languages/tiny/tokenizer.json@{TINY_REVISION}"
            ),
        },
    },
    "mimi": {
        "dtype": "float32",
        "sample_rate": 24000,
        "inner_dim": 8,
        "outer_dim": 16,
        "channels": 1,
        "frame_rate": 12.5,
        "seanet": {
            "dimension": 16,
            "channels": 1,
            "n_filters": 2,
            "n_residual_layers": 1,
            "ratios": [6, 5, 4],
            "kernel_size": 7,
            "residual_kernel_size": 3,
            "last_kernel_size": 3,
            "dilation_base": 2,
            "pad_mode": "constant",
            "compress": 2,
        },
        "transformer": {
            "d_model": 16,
            "num_heads": 2,
            "num_layers": 1,
            "layer_scale": 0.01,
            "context": 250,
            "dim_feedforward": 32,
            "input_dimension": 16,
            "output_dimensions": [16],
        },
        "quantizer": {"dimension": 8, "output_dimension": 16},
    },
}


def hf_file(path: str) -> tuple[str, str, str | None]:
    """``hf://org/name/some/file@rev`` -> (``org/name``, ``some/file``, ``rev`` or None)."""
    rest = path.removeprefix("hf://")
    rest, _, revision = rest.partition("@")
    parts = rest.split("/")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision or None


def _tokenizer_json(size: int) -> str:
    """A byte-level BPE ``tokenizer.json`` of exactly ``size`` entries, learnt from a little
    English (so common words are one token, as in the released SentencePiece vocabulary),
    that any text goes through and comes back from: pocket-tts splits long texts by
    decoding its tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([CORPUS] * 4, trainer=trainer)
    missing = size - tokenizer.get_vocab_size()
    if missing < 0:
        raise ValueError(f"a byte-level vocabulary needs at least 256 entries, not {size}")
    tokenizer.add_tokens([f"<unused{i}>" for i in range(missing)])
    return str(tokenizer.to_str())


def import_pocket() -> Any:
    """pocket-tts's model class. Importing pocket-tts sets torch to one thread for the whole
    process, which would slow every other model here: the setting is put back."""
    import torch

    threads = torch.get_num_threads()
    try:
        from pocket_tts.models.tts_model import TTSModel
    finally:
        torch.set_num_threads(threads)
    return TTSModel


def language_config(language: str) -> dict[str, Any]:
    """The language's config as packaged in pocket-tts (a local file: nothing downloads)."""
    import yaml

    import_pocket()
    from pocket_tts.utils.config import CONFIGS_DIR

    path = CONFIGS_DIR / f"{language}.yaml"
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data


def build_random_pocket(root: Path, size: Size = "tiny", language: str = "english") -> Path:
    """Write random weights and a tokenizer under ``root`` in the pulled layout.

    Returns the config file to name as ``[engine.voice] pocket_config`` (the tiny one is
    not packaged; the full one is the packaged ``language``'s, copied). The model folder is
    ``root / "kyutai--pocket-tts"`` and the tokenizer's ``root / "kyutai--pocket-tts-without-
    voice-cloning"``.
    """
    import safetensors.torch
    import torch
    import yaml

    tts_model = import_pocket()
    from pocket_tts.models.flow_lm import FlowLMModel
    from pocket_tts.models.mimi import build_mimi
    from pocket_tts.utils.config import Config

    raw = TINY_CONFIG if size == "tiny" else language_config(language)
    raw = {k: v for k, v in raw.items() if k != "weights_path_without_voice_cloning"}
    repo, weights_file, _ = hf_file(str(raw["weights_path"]))
    tok_repo, tokenizer_file, _ = hf_file(str(raw["flow_lm"]["lookup_table"]["tokenizer_path"]))
    model_dir = root / local_name(repo)
    tokenizer_dir = root / local_name(tok_repo)
    (tokenizer_dir / tokenizer_file).parent.mkdir(parents=True, exist_ok=True)
    n_bins = int(raw["flow_lm"]["lookup_table"]["n_bins"])
    (tokenizer_dir / tokenizer_file).write_text(_tokenizer_json(n_bins))

    local = json.loads(json.dumps(raw))
    local.pop("weights_path")
    local["flow_lm"]["lookup_table"]["tokenizer_path"] = str(tokenizer_dir / tokenizer_file)
    config = Config(**local)
    torch.manual_seed(0)
    flow_lm = FlowLMModel.from_pydantic_config(
        config.flow_lm,
        latent_dim=config.mimi.quantizer.dimension,
        insert_bos_before_voice=config.flow_lm.insert_bos_before_voice,
    )
    model = tts_model(flow_lm, 0.3, 1, None, -4.0, config)
    model.flow_lm.speaker_proj_weight = torch.nn.Parameter(
        torch.randn(
            config.flow_lm.transformer.d_model,
            config.mimi.inner_dim or config.mimi.seanet.dimension,
        )
        * 0.02
    )
    model.mimi = build_mimi(config.mimi)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    (model_dir / weights_file).parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(state, str(model_dir / weights_file))
    for folder, source, files in (
        (model_dir, repo, [weights_file]),
        (tokenizer_dir, tok_repo, [tokenizer_file]),
    ):
        record = {
            "source": source,
            "revision": "random",
            "files": files,
            "size_bytes": sum((folder / f).stat().st_size for f in files),
        }
        (folder / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    config_path = root / f"pocket-{size}.yaml"
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config_path
