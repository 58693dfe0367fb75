"""A training zip is inspected once per upload: when its bytes arrive, and the report kept on
the upload row is what starting the training and the worker use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from sqlalchemy import select, update

import engine.image.handlers as handlers_module
import engine.image.service as service_module
import engine.image.zipcheck as zipcheck
from engine.models import Job, Upload
from tests.conftest import register, running_engine, services_of
from tests.engine.image.test_lora_api import h, put_zip, settings_for, upload_zip
from tests.engine.image.zips import good_zip


@pytest.fixture
def inspections(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths the real zip inspection ran on, wherever it is called from."""
    seen: list[Path] = []
    real = zipcheck.inspect_zip

    def counted(path: Path, limits: Any) -> zipcheck.ZipReport:
        seen.append(path)
        return real(path, limits)

    for module in (zipcheck, service_module, handlers_module):
        monkeypatch.setattr(module, "inspect_zip", counted, raising=False)
    return seen


async def test_one_inspection_per_upload_and_its_report_is_kept(
    tmp_path: Path, inspections: list[Path]
) -> None:
    async with running_engine(settings_for(tmp_path, workers=0)) as (app, api):
        services = services_of(app)
        key = await register(api)
        upload_id = await upload_zip(api, key, good_zip(4))
        assert len(inspections) == 1
        async with services.db.session() as s:
            upload = await s.get(Upload, upload_id)
            assert upload is not None and upload.inspection is not None
            assert len(upload.inspection["report"]["images"]) == 4
        started = await api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))
        assert started.status_code == 202, started.text
        assert await anyio.to_thread.run_sync(services.worker.drain) == 1
        done = (await api.get(f"/api/loras/trainings/{upload_id}", headers=h(key))).json()
        assert done["status"] == "succeeded", done
        assert len(inspections) == 1, inspections


async def test_the_worker_trains_on_the_images_of_the_kept_report(tmp_path: Path) -> None:
    async with running_engine(settings_for(tmp_path, workers=0)) as (app, api):
        services = services_of(app)
        key = await register(api)
        upload_id = await upload_zip(api, key, good_zip(5))
        async with services.db.session() as s:
            upload = await s.get(Upload, upload_id)
            assert upload is not None and upload.inspection is not None
            kept = dict(upload.inspection)
            report = dict(kept["report"])
            report["images"] = report["images"][:4]
            report["ignored"] = ["left out by the test"]
            await s.execute(
                update(Upload)
                .where(Upload.id == upload_id)
                .values(inspection={**kept, "report": report})
            )
            await s.commit()
        started = await api.post(f"/api/loras/trainings/{upload_id}", headers=h(key))
        assert started.status_code == 202, started.text
        assert await anyio.to_thread.run_sync(services.worker.drain) == 1
        async with services.db.session() as s:
            result = await s.scalar(select(Job.result).where(Job.status == "succeeded"))
        assert result is not None
        assert result["images"] == 4 and result["ignored"] == ["left out by the test"]


async def test_a_refused_put_keeps_the_report_of_the_bytes_that_stay(
    tmp_path: Path, inspections: list[Path]
) -> None:
    async with running_engine(settings_for(tmp_path, workers=0)) as (app, api):
        services = services_of(app)
        key = await register(api)
        body = (
            await api.post(
                "/api/loras/uploads/url",
                params={"name": "My set", "trigger_word": "tadz", "file_name": "set.zip"},
                headers=h(key),
            )
        ).json()
        assert (await put_zip(api, body, good_zip(4))).status_code == 200
        assert (await put_zip(api, body, b"PK not a zip")).status_code == 400
        async with services.db.session() as s:
            upload = await s.get(Upload, body["id"])
            assert upload is not None and upload.inspection is not None
            assert len(upload.inspection["report"]["images"]) == 4
        started = await api.post(f"/api/loras/trainings/{body['id']}", headers=h(key))
        assert started.status_code == 202, started.text
        assert await anyio.to_thread.run_sync(services.worker.drain) == 1
        # The good zip's PUT and the refused one: nothing inspected again for training.
        assert len(inspections) == 2
