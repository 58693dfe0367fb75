"""Object-level authorization: another member's key never reaches your objects.

Alice makes one of everything through the real back ends (a voice sample, a cloned
voice, a speech generation, an image zip, a trained LoRA, an image generation). Then,
for every route that takes an id, Bob's key gets the same 404 as an id that does not
exist (no existence oracle), while Alice's own key still gets 200 (so the matrix can
fail). Lists never show Alice's objects to Bob, and signed URLs altered to point at
another object are refused.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from engine.settings import JobSettings
from tests.conftest import REFERENCE_VOICE, backend_for, make_settings, register, running_engine
from tests.engine.image.test_lora_api import IMAGE, upload_zip, wait_final
from tests.engine.image.zips import good_zip
from tests.engine.voice.conftest import SAMPLE_TEXT, fetch, h, upload_sample, wav_bytes
from tests.waiting import CEILING_S


@dataclass(frozen=True)
class Route:
    """One id-taking route, with the id it is called with."""

    method: str
    path: str
    json: dict[str, str] | None = None
    params: dict[str, str] | None = None

    def label(self) -> str:
        return f"{self.method} {self.path} {self.params or ''}"


def routes(ids: dict[str, str]) -> list[Route]:
    """Every route of the contract that takes an id, filled with Alice's ids."""
    text = {"text": "Hello there"}
    prompt = {"prompt": "a cat"}
    return [
        Route("POST", "/api/voices/uploads", params={"upload_id": ids["voice_upload"]}),
        Route("GET", f"/api/voices/{ids['voice']}"),
        Route("GET", f"/api/voices/{ids['voice']}/generations"),
        Route("POST", f"/api/voices/{ids['voice']}/generations", json=text),
        Route("GET", f"/api/voices/generations/{ids['voice']}"),  # the seed's per-voice list
        Route("POST", f"/api/voices/generations/{ids['voice']}", json=text),
        Route("GET", f"/api/voices/generations/{ids['voice_generation']}"),
        Route("GET", f"/api/loras/trainings/{ids['lora_upload']}"),
        Route("POST", f"/api/loras/trainings/{ids['lora_upload']}"),
        Route("POST", f"/api/loras/generations/{ids['lora_upload']}", json=prompt),
        Route("GET", f"/api/loras/{ids['lora']}/generations"),
        Route("POST", f"/api/loras/{ids['lora']}/generations", json=prompt),
        Route("GET", f"/api/loras/{ids['lora_upload']}/generations"),
        Route("POST", f"/api/loras/{ids['lora_upload']}/generations", json=prompt),
        Route("GET", f"/api/loras/generations/{ids['lora_generation']}"),
        # Engine extensions: upscale and vary one of your images.
        Route("POST", f"/api/images/{ids['lora_generation']}/upscale"),
        Route("POST", f"/api/images/{ids['lora_generation']}/vary", json={"strength": "subtle"}),
    ]


LISTS = (
    "/api/voices",
    "/api/voices/uploads",
    "/api/voices/generations",
    "/api/loras/uploads",
    "/api/loras/trainings",
    "/api/loras/generations",
)


async def call(api: httpx.AsyncClient, route: Route, key: str) -> httpx.Response:
    return await api.request(
        route.method, route.path, json=route.json, params=route.params, headers=h(key)
    )


def swap_ids(route: Route, ids: dict[str, str]) -> Route:
    """The same route with every one of Alice's ids replaced by an id nobody has."""
    fresh = {v: str(uuid.uuid4()) for v in ids.values()}
    path = route.path
    params = dict(route.params or {})
    for old, new in fresh.items():
        path = path.replace(old, new)
        params = {k: new if v == old else v for k, v in params.items()}
    return Route(route.method, path, route.json, params or None)


async def test_a_second_users_key_gets_404_for_every_object_of_the_first(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        tmp_path / "engine",
        jobs=JobSettings(in_process_workers=1, wait_timeout_seconds=CEILING_S),
        image={**IMAGE, "generation": {"steps": 1}},
    )
    speech = backend_for(REFERENCE_VOICE).base_speech(SAMPLE_TEXT)  # type: ignore[attr-defined]
    sample = wav_bytes(speech.audio, speech.sample_rate)
    async with running_engine(settings) as (_, api):
        alice = await register(api, "alice@example.com")
        bob = await register(api, "bob@example.com")

        # Alice's objects, made through the real back ends.
        voice_upload = await upload_sample(api, alice, sample)
        second_upload = await upload_sample(api, alice, sample)  # kept unused, for the clone
        cloned = await api.post(
            "/api/voices/uploads", params={"upload_id": voice_upload}, headers=h(alice)
        )
        assert cloned.status_code == 200, cloned.text
        voice = cloned.json()["id"]
        spoken = await api.post(
            f"/api/voices/{voice}/generations", json={"text": "Hi, it is me."}, headers=h(alice)
        )
        assert spoken.status_code == 200, spoken.text
        # Odd text reaches the real synthesiser: RTL override, zero-width, emoji, digits of
        # another script. A NUL is refused up front (it used to crash the job three times).
        odd = await api.post(
            f"/api/voices/{voice}/generations",
            json={"text": "Hi there \u202eok\u200b 🎤 ١٢٣"},
            headers=h(alice),
        )
        assert odd.status_code == 200, odd.text
        nul = await api.post(
            f"/api/voices/{voice}/generations", json={"text": "Hi\x00 there"}, headers=h(alice)
        )
        assert nul.status_code == 422, nul.text
        lora_upload = await upload_zip(api, alice, good_zip(4))
        started = await api.post(f"/api/loras/trainings/{lora_upload}", headers=h(alice))
        assert started.status_code == 202, started.text
        trained = await wait_final(api, alice, lora_upload)
        assert trained["status"] == "succeeded", trained
        drawn = await api.post(
            f"/api/loras/{trained['id']}/generations", json={"prompt": "a cat"}, headers=h(alice)
        )
        assert drawn.status_code == 200, drawn.text
        odd_prompt = await api.post(
            f"/api/loras/{trained['id']}/generations",
            json={"prompt": "a cat \u202e\u200b 🦄 قطة"},
            headers=h(alice),
        )
        assert odd_prompt.status_code == 200, odd_prompt.text
        # A NUL is refused up front: no database text column can keep it.
        nul_prompt = await api.post(
            f"/api/loras/{trained['id']}/generations",
            json={"prompt": "a cat\x00"},
            headers=h(alice),
        )
        assert nul_prompt.status_code == 422, nul_prompt.text
        assert nul_prompt.json()["detail"][0]["loc"] == ["body", "prompt"]
        ids = {
            "voice_upload": second_upload,
            "voice": voice,
            "voice_generation": spoken.json()["id"],
            "lora_upload": lora_upload,
            "lora": trained["id"],
            "lora_generation": drawn.json()["id"],
        }

        problems: list[str] = []
        checked = 0
        for route in routes(ids):
            as_bob = await call(api, route, bob)
            as_nobody = await call(api, swap_ids(route, ids), bob)
            checked += 1
            if as_bob.status_code != 404:
                problems.append(f"{route.label()}: Bob got {as_bob.status_code} {as_bob.text}")
            elif as_bob.json() != as_nobody.json():
                problems.append(
                    f"{route.label()}: Bob's 404 {as_bob.json()} differs from an unknown id's "
                    f"{as_nobody.json()} (tells him the id exists)"
                )
        assert not problems, "\n".join(problems)

        # The control: the same routes answer Alice (reads only; writes would change state).
        for route in routes(ids):
            if route.method == "GET":
                mine = await call(api, route, alice)
                assert mine.status_code == 200, (route.label(), mine.text)

        # Bob's lists hold nothing of Alice's.
        for path in LISTS:
            listed = await api.get(path, headers=h(bob))
            assert listed.status_code == 200
            assert not set(ids.values()) & set(_ids_in(listed.json())), path
            checked += 1
        assert checked == 17 + len(LISTS)

        # A voice upload id is not a LoRA upload id, even for its owner.
        wrong_kind = await api.post(f"/api/loras/trainings/{second_upload}", headers=h(alice))
        assert wrong_kind.status_code == 404

        # Signed URLs altered to reach another object are refused.
        audio_url = spoken.json()["audio_url"]
        image_url = drawn.json()["url"]
        assert (await fetch(api, audio_url)).status_code == 200
        image_key = urlsplit(image_url).path.removeprefix("/storage/artifacts/")
        audio = urlsplit(audio_url)
        forged = f"/storage/artifacts/{image_key}?{audio.query}"
        assert (await api.get(forged)).status_code == 403


def _ids_in(body: object) -> list[str]:
    """Every ``id``-like value anywhere in a JSON answer."""
    found: list[str] = []
    if isinstance(body, dict):
        for key, value in body.items():
            if key.endswith("id") and isinstance(value, str):
                found.append(value)
            found += _ids_in(value)
    elif isinstance(body, list):
        for item in body:
            found += _ids_in(item)
    return found


@pytest.mark.parametrize("key", ["", "tada_not-a-real-key", "x" * 5000])
async def test_no_key_or_a_wrong_key_is_401_everywhere(api: httpx.AsyncClient, key: str) -> None:
    for path in LISTS:
        resp = await api.get(path, headers={"X-API-Key": key} if key else {})
        assert resp.status_code == 401, (path, resp.status_code)
        assert key[:20] not in resp.text or not key  # the refused key is not echoed
