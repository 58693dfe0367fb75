"""Property-based testing of the engine against its own OpenAPI document (schemathesis).

Every operation our ``/openapi.json`` documents (upstream's, plus ``/storage`` and
``/healthz``) gets generated requests, valid and invalid, sent in-process to the real
app with a real API key: no answer may be a 5xx, and every documented answer must match
its schema and content type. The example count is bounded so CI stays short; examples
are derandomized so a failure reproduces.

The demos are configured with a LoRA trained here on the tiny base model, so a valid
prompt really draws an image (unconfigured, they answer 503 by design).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)
from schemathesis.python import asgi

from engine.app import create_app
from engine.image.pipeline import ImageModel
from engine.image.settings import ImageSettings
from engine.image.types import TrainImage
from engine.settings import JobSettings
from tests.conftest import make_settings
from tests.engine.image.zips import image_bytes
from tests.waiting import CEILING_S

pytestmark = pytest.mark.slow(60)

MAX_EXAMPLES = 6
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def _demo_lora(out: Path) -> Path:
    model = ImageModel.from_settings(ImageSettings())
    examples = [
        TrainImage(Image.open(io.BytesIO(image_bytes(i))).convert("RGB"), "tadz") for i in range(2)
    ]
    path = out / "demo.safetensors"
    model.train_lora(examples, path, rank=4, steps=2, learning_rate=1e-2, seed=0)
    return path


def test_no_5xx_and_answers_match_their_schema(tmp_path: Path) -> None:
    lora = _demo_lora(tmp_path)
    image = {
        "generation": {"steps": 1},
        "demos": {
            "tadz": {"lora_path": str(lora), "trigger_word": "tadz"},
            "pudgy": {"lora_path": str(lora), "trigger_word": "pudgy penguin"},
        },
    }
    engine_settings = make_settings(
        tmp_path / "engine",
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        image=image,
    )
    app = create_app(engine_settings)
    failures: list[str] = []
    sent = 0
    operations = 0
    try:
        with asgi.get_client(app) as client:  # starts the lifespan once for the whole run
            resp = client.post("/api/users/register", params={"email": "fuzz@example.com"})
            assert resp.status_code == 200, resp.text
            headers = {"X-API-Key": resp.json()["api_key"]}
            schema = schemathesis.openapi.from_asgi("/openapi.json", app)
            for result in schema.get_all_operations():
                operation = result.ok()
                operations += 1
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                    @given(case=operation.as_strategy(generation_mode=mode))
                    @settings(
                        max_examples=MAX_EXAMPLES,
                        deadline=None,
                        derandomize=True,
                        database=None,
                        suppress_health_check=list(HealthCheck),
                        phases=[Phase.explicit, Phase.generate],
                    )
                    def exercise(case: schemathesis.Case) -> None:
                        nonlocal sent
                        sent += 1
                        case.call_and_validate(headers=headers, checks=CHECKS)

                    try:
                        exercise()
                    except Unsatisfiable:
                        # Nothing in this operation can be made invalid (no parameters).
                        assert mode is GenerationMode.NEGATIVE, operation.label
                        continue
                    except Exception as exc:  # one operation's failure must not hide others'
                        failures.append(f"{operation.label} [{mode.value}]: {exc}")
    finally:
        asgi.shutdown_lifespans()
    print(f"schemathesis: {operations} operations, {sent} generated requests")
    assert operations >= 25, operations
    assert not failures, "\n\n".join(failures)
