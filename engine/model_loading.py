"""One process-wide lock for building and loading torch models.

The libraries the models come through change process-global state while they load:

- accelerate's ``init_empty_weights`` (diffusers' ``from_pretrained`` and single-file loads)
  and peft's copy of it (diffusers' ``load_lora_weights``) replace
  ``torch.nn.Module.register_parameter`` for the whole process, so every module any thread
  builds meanwhile gets its parameters on the meta device ("Cannot copy out of meta
  tensor"), and two loads that overlap can restore each other's patch and leave it in place
  for good;
- diffusers' and transformers' ``no_init_weights`` / ``guard_torch_init_functions`` swap
  out ``torch.nn.init``'s functions (a model built meanwhile keeps uninitialised weights);
- both set ``torch.set_default_dtype`` to the loaded model's dtype (a model built meanwhile
  comes out in bfloat16), and transformers patches ``torch.linspace``;
- the seeded tiny models and a LoRA's first weights draw from torch's global RNG.

A lock of one back end cannot keep another back end (the voice one, or a second engine in
the same process, as a test harness with two bots runs) out of that window: only one lock
for the whole process can. It is the one module-level mutable object of the engine, because
what it guards is itself process-global. Every path that builds modules or loads weights
holds it: the image base model (built-in tiny, diffusers folder, single file), a LoRA's
adapter (added for training or loaded from a file), the neural voice model and the speaker
encoder. Generation and training steps do not take it: they build no modules, so the
worker's back ends keep running side by side, and only a load waits for another load. (A
load's default dtype could in principle reach a tensor a generation makes without naming its
dtype; tiny SD 1.5, SDXL and FLUX generations run during bfloat16 loads drew the same pixels
as alone.) Reentrant: a load may call another loading function.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Process-wide on purpose (see the module docstring): never one per back end or per engine.
_LOADING = threading.RLock()


@contextmanager
def loading_models() -> Iterator[None]:
    """Hold the process-wide model-loading lock while models are built or loaded.

    Take it innermost: nothing run under it may wait for another lock (a back end's own
    lock is taken before it, never inside), so it cannot deadlock.
    """
    with _LOADING:
        yield
