"""The engine-with-a-trained-LoRA fixtures of test_lora_api.py, shared with the other API tests."""

from tests.engine.image.test_lora_api import engine_app, trained

__all__ = ["engine_app", "trained"]
