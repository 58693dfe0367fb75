"""Voice cloning and generation.

- :mod:`engine.voice.settings`: ``[engine.voice]``, validated.
- :mod:`engine.voice.container`: which accepted container a file is (from its bytes), and
  the ffmpeg arguments that read only that file.
- :mod:`engine.voice.audio`: decode (bundled ffmpeg), judge, normalise and encode audio.
- :mod:`engine.voice.backend`: the back-end protocol (analyse a sample, synthesise text).
- :mod:`engine.voice.reference`: the CPU reference back end, built from
  :mod:`engine.voice.piper_base` (base speech), :mod:`engine.voice.world` (conversion) and
  :mod:`engine.voice.similarity` (resemblyzer).
- :mod:`engine.voice.pocket`: the neural back end for CPU hosts (Kyutai Pocket TTS);
  :mod:`engine.voice.qwen3`: the one for GPUs (Qwen3-TTS); :mod:`engine.voice.choice`: which
  of them ``backend = "auto"`` runs; :mod:`engine.voice.neural`: VibeVoice through
  transformers (selectable, not a default).
- :mod:`engine.voice.models`, :mod:`engine.voice.store`, :mod:`engine.voice.schemas`: tables,
  queries and API models.
- :mod:`engine.voice.service`: the API side (clone, speak, typed errors);
  :mod:`engine.voice.handlers`: the worker side (the job handlers, owning the back end).
"""
