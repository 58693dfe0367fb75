"""The image back end: LoRA training and generation with diffusers + peft.

- :mod:`engine.image.settings`: ``[engine.image]`` (base model, training, generation, demos).
- :mod:`engine.image.zipcheck`: checks on a member's training zip, and reading it.
- :mod:`engine.image.untrusted`: images and zip entries read with bounded memory (also
  used by the bot's upload check).
- :mod:`engine.image.pipeline`: the loaded model (generation, LoRA training, adapters).
- :mod:`engine.image.enhancer`: the prompt enhancer (template, or a chat endpoint).
- :mod:`engine.image.handlers`: the worker's job handlers.
- :mod:`engine.image.service`: what the API routers call; :mod:`engine.image.models`: tables.
"""
