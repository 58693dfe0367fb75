"""Traceable speech: every generation is fingerprinted as it is made, and a re-encoded or
sped-up clip of it is found again over ``POST /api/trace/speech`` (engine extension)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from engine.settings import JobSettings
from engine.voice import fingerprint as fp
from engine.voice.audio import decode, ffmpeg_exe
from engine.voice.models import SpeechFingerprint
from tests.conftest import make_settings, register, running_engine, services_of
from tests.engine.voice.conftest import (
    GENERATION_TEXT,
    Speaker,
    clone,
    fetch,
    h,
)
from tests.prerequisites import SPHINX_LIBRIVOX
from tests.waiting import CEILING_S

OPERATOR = "operator-token-for-tests-0123456789"


def reencode(data: bytes, tmp: Path, *args: str, ext: str = "ogg") -> bytes:
    """``data`` through ffmpeg with ``args`` (codec, bitrate, filters)."""
    src, dst = tmp / "src.bin", tmp / f"out.{ext}"
    src.write_bytes(data)
    subprocess.run(
        [ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), *args, str(dst)],
        check=True,
        capture_output=True,
    )
    return dst.read_bytes()


def test_a_reencoded_sped_up_copy_matches_and_other_speech_does_not(
    base_sample: Speaker, tmp_path: Path
) -> None:
    stored = fp.fingerprint(base_sample.audio, base_sample.sample_rate)
    assert len(stored) > fp.MIN_OVERLAP
    wav = base_sample.wav()
    opus = reencode(wav, tmp_path, "-c:a", "libopus", "-b:a", "32k")
    (tmp_path / "opus.ogg").write_bytes(opus)
    clip = decode(tmp_path / "opus.ogg", fp.FINGERPRINT_RATE)
    assert fp.best_alignment(fp.query_variants(clip, fp.FINGERPRINT_RATE), stored).matched
    # 8 % faster (pitch and tempo), then MP3: only the rate grid finds it.
    fast = reencode(
        wav, tmp_path, "-af", f"asetrate={int(base_sample.sample_rate * 1.08)}", ext="mp3"
    )
    (tmp_path / "fast.mp3").write_bytes(fast)
    clip = decode(tmp_path / "fast.mp3", fp.FINGERPRINT_RATE)
    assert not fp.align(fp.fingerprint(clip, fp.FINGERPRINT_RATE), stored).matched
    assert fp.best_alignment(fp.query_variants(clip, fp.FINGERPRINT_RATE), stored).matched
    other = sorted(SPHINX_LIBRIVOX.glob("*.wav"))[0]
    clip = decode(other, fp.FINGERPRINT_RATE)
    assert not fp.best_alignment(fp.query_variants(clip, fp.FINGERPRINT_RATE), stored).matched


def test_fingerprints_round_trip_and_align_at_the_offset() -> None:
    rng = np.random.default_rng(7)
    stored = rng.integers(0, 2**32, size=60, dtype=np.uint64).astype(np.uint32)
    assert np.array_equal(fp.from_bytes(fp.to_bytes(stored)), stored)
    piece = stored[20:45].copy()
    piece ^= np.uint32(1 << 3)  # one bit of 32 differs everywhere
    found = fp.align(piece, stored)
    assert found.offset_items == 20 and found.overlap_items == 25
    assert found.score == pytest.approx(31 / 32)
    assert found.matched
    assert not fp.align(
        rng.integers(0, 2**32, size=40, dtype=np.uint64).astype(np.uint32), stored
    ).matched


@pytest.fixture
async def traced_app(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = make_settings(
        tmp_path / "engine",
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        trace={"operator_token": OPERATOR},
    )
    async with running_engine(settings) as pair:
        yield pair


async def test_trace_finds_a_generation_for_its_owner_and_the_operator_only(
    traced_app: tuple[FastAPI, httpx.AsyncClient],
    speakers: dict[str, Speaker],
    tmp_path: Path,
) -> None:
    app, api = traced_app
    alice = await register(api, "alice@example.com")
    bob = await register(api, "bob@example.com")
    voice = (await clone(api, alice, speakers["low"].wav(), name="Low voice")).json()
    made = await api.post(
        f"/api/voices/{voice['id']}/generations", json={"text": GENERATION_TEXT}, headers=h(alice)
    )
    assert made.status_code == 200, made.text
    generation = made.json()
    async with services_of(app).db.session() as s:
        row = await s.scalar(
            select(SpeechFingerprint).where(SpeechFingerprint.generation_id == generation["id"])
        )
    assert row is not None and row.user_id != "" and row.voice_id == voice["id"]
    mp3 = (await fetch(api, generation["audio_url"])).content
    # What Discord does to a voice message: Opus at 32 kbps.
    clip = reencode(mp3, tmp_path, "-c:a", "libopus", "-b:a", "32k")

    own = await api.post("/api/trace/speech", content=clip, headers=h(alice))
    assert own.status_code == 200, own.text
    body = own.json()
    assert body["made_here"] is True and body["scope"] == "own"
    match = body["matches"][0]
    assert match["generation_id"] == generation["id"]
    assert match["voice_id"] == voice["id"] and match["voice_name"] == "Low voice"
    assert match["user_id"] is None  # a member is not told account ids
    assert match["score"] >= fp.MATCH_THRESHOLD

    others = await api.post("/api/trace/speech", content=clip, headers=h(bob))
    assert others.status_code == 200
    assert others.json()["made_here"] is False and others.json()["matches"] == []

    operator = await api.post(
        "/api/trace/speech", content=clip, headers={"X-Operator-Token": OPERATOR}
    )
    assert operator.status_code == 200
    assert operator.json()["scope"] == "all"
    assert operator.json()["matches"][0]["generation_id"] == generation["id"]
    assert operator.json()["matches"][0]["user_id"]

    unrelated = sorted(SPHINX_LIBRIVOX.glob("*.wav"))[0].read_bytes()
    none = await api.post(
        "/api/trace/speech", content=unrelated, headers={"X-Operator-Token": OPERATOR}
    )
    assert none.status_code == 200 and none.json()["made_here"] is False


async def test_trace_refusals_are_typed(
    traced_app: tuple[FastAPI, httpx.AsyncClient], speakers: dict[str, Speaker]
) -> None:
    _, api = traced_app
    alice = await register(api, "alice@example.com")
    wav = speakers["low"].wav()
    cases = [
        ({}, wav, 401, "X-API-Key"),
        ({"X-Operator-Token": "wrong-token-0123456789"}, wav, 401, "X-Operator-Token"),
        (h(alice), b"", 422, "request body"),
        (h(alice), b"#!/bin/sh\nrm -rf /\n" * 100, 422, "audio"),
        (h(alice), wav[:44] + b"\x00" * 2000, 422, "too short"),
    ]
    for headers, content, status, detail in cases:
        resp = await api.post("/api/trace/speech", content=content, headers=headers)
        assert resp.status_code == status, (detail, resp.text)
        assert detail in str(resp.json()["detail"]), resp.text


async def test_trace_is_an_extension_in_the_openapi_document(
    traced_app: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, api = traced_app
    op = (await api.get("/openapi.json")).json()["paths"]["/api/trace/speech"]["post"]
    assert op["x-tada-extension"] is True
    assert "application/octet-stream" in op["requestBody"]["content"]


def test_the_operator_token_comes_from_the_environment_only(tmp_path: Path) -> None:
    from engine.settings import (
        OPERATOR_TOKEN_ENV,
        SettingsError,
        load_engine_settings,
        settings_for_child,
        settings_from_parent,
    )

    config = tmp_path / "config.toml"
    config.write_text("[engine]\n")
    token = "x" * 20
    settings = load_engine_settings(config, {OPERATOR_TOKEN_ENV: token})
    assert settings.trace.operator_token is not None
    assert settings.trace.operator_token.get_secret_value() == token
    child = settings_from_parent({"TADA_ENGINE_SETTINGS_JSON": settings_for_child(settings)})
    assert child is not None and child.trace.operator_token == settings.trace.operator_token
    with pytest.raises(SettingsError, match=OPERATOR_TOKEN_ENV):
        load_engine_settings(config, {OPERATOR_TOKEN_ENV: "short"})
    config.write_text('[engine.trace]\noperator_token = "in-the-file-0123456789"\n')
    with pytest.raises(SettingsError, match="must not be in the config file"):
        load_engine_settings(config, {})


def test_generated_requests_get_no_5xx_and_answers_match_the_schema(tmp_path: Path) -> None:
    """schemathesis on the trace extension alone (the whole API's run is in
    tests/conformance/test_schemathesis.py)."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
    )
    from schemathesis.python import asgi

    from engine.app import create_app

    app = create_app(make_settings(tmp_path / "engine", trace={"operator_token": OPERATOR}))
    checks = [not_a_server_error, response_schema_conformance, content_type_conformance]
    sent = 0
    try:
        with asgi.get_client(app) as client:  # type: ignore[arg-type]
            resp = client.post("/api/users/register", params={"email": "fuzz@example.com"})
            headers = {"X-API-Key": resp.json()["api_key"]}
            schema = schemathesis.openapi.from_asgi("/openapi.json", app)
            operations = [r.ok() for r in schema.get_all_operations()]  # type: ignore[union-attr]
            [operation] = [op for op in operations if op.path == "/api/trace/speech"]
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @given(case=operation.as_strategy(generation_mode=mode))
                @settings(
                    max_examples=8,
                    deadline=None,
                    derandomize=True,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                    phases=[Phase.explicit, Phase.generate],
                )
                def exercise(case: schemathesis.Case) -> None:
                    nonlocal sent
                    sent += 1
                    case.call_and_validate(headers=headers, checks=checks)

                try:
                    exercise()
                except Unsatisfiable:
                    # Raw bytes have no invalid form to generate.
                    assert mode is GenerationMode.NEGATIVE
    finally:
        asgi.shutdown_lifespans()
    assert sent >= 8
