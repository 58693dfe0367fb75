"""The typed Ta-da client: one method per endpoint of every published contract revision.

It takes an :class:`httpx.AsyncClient` (so tests pass one over ``ASGITransport`` to drive
our engine in-process, or over ``MockTransport``) and never builds its own. Calls that are
safe to repeat are retried with exponential backoff and jitter on transport errors,
timeouts and 5xx; every call is retried on 429, waiting out ``Retry-After``. Where upstream
moved a path in a later revision the client calls the newer path and falls back to the
seed's path when the server answers 404 or 405, then remembers which one works.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import struct
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin

import httpx
from pydantic import BaseModel, SecretStr, TypeAdapter, ValidationError

from bot.tada.errors import (
    RateLimited,
    TadaError,
    TadaHTTPError,
    TadaProtocolError,
    TadaTimeout,
    TadaTransportError,
    error_class_for,
)
from bot.tada.models import (
    ImageGeneration,
    LoraTraining,
    LoraUpload,
    Registration,
    SpokenAudio,
    TraceAnswer,
    UploadReceipt,
    UploadUrl,
    Voice,
    VoiceGeneration,
    VoiceGenerationList,
    VoiceUpload,
)
from bot.tada.offer import DEFAULT_TTL_SECONDS, GenerationOffer, OfferCache, offer_of

log = logging.getLogger(__name__)

HOSTED_BASE_URL = "https://api.ta-da.io/tadzagent"
API_KEY_HEADER = "X-API-Key"
# The engine operator's token (engine extension: tracing speech among every generation).
OPERATOR_HEADER = "X-Operator-Token"
MAX_REDIRECTS = 5


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """Scheme, host and port: what a key is bound to."""
    return (url.scheme, url.host, url.port)


CHUNK = 1024 * 1024
M = TypeVar("M")
UploadBody = bytes | Path | AsyncIterable[bytes]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard the client tries before it raises."""

    max_retries: int = 3
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    # A 429 asking for a longer wait is raised at once (with retry_after) for the
    # caller to report, rather than holding a Discord interaction for minutes.
    max_retry_after_seconds: float = 60.0

    def backoff(self, attempt: int, rand: Callable[[], float]) -> float:
        """Equal-jitter exponential backoff: half fixed, half random, capped."""
        ceiling = min(self.backoff_max_seconds, self.backoff_base_seconds * (2**attempt))
        return ceiling / 2 + rand() * ceiling / 2


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds: either delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _detail(resp: httpx.Response) -> Any:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:500] or resp.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return body["detail"]
    return body


# A WAV header as the engine's speech stream sends it (RIFF, fmt, data: 44 bytes).
WAV_HEADER_BYTES = 44


@dataclass
class SpeechStream:
    """A speech arriving while it is made (the engine's speech stream extension)."""

    generation_id: str
    sample_rate: int
    _chunks: AsyncIterator[bytes]
    _carry: bytes = b""

    async def pcm(self) -> AsyncIterator[bytes]:
        """16-bit mono samples as they arrive, in whole samples."""
        data = self._carry
        self._carry = b""
        if data:
            usable = len(data) - len(data) % 2
            if usable:
                yield data[:usable]
            data = data[usable:]
        async for chunk in self._chunks:
            data += chunk
            usable = len(data) - len(data) % 2
            if usable:
                yield data[:usable]
            data = data[usable:]


def _wav_rate(header: bytes) -> int:
    """The sample rate of a 16-bit mono PCM WAV header (the stream's only format)."""
    if header[:4] != b"RIFF" or header[8:16] != b"WAVEfmt " or header[36:40] != b"data":
        raise TadaProtocolError("the speech stream is not a WAV")
    fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", header[20:36])
    if (fmt, channels, bits) != (1, 1, 16) or not 8000 <= rate <= 48000:
        raise TadaProtocolError("the speech stream is not 16-bit mono PCM")
    return int(rate)


class TadaClient:
    """Client of the Ta-da HTTP API (hosted, or our engine).

    Build one per process with the shared ``httpx.AsyncClient``; :meth:`with_key` gives a
    view that authenticates as one member (cheap: it shares the connection pool).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: SecretStr | None = None,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout | None = None,
        transfer_timeout: httpx.Timeout | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        offer_ttl: float = DEFAULT_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        _routes: dict[str, str] | None = None,
        _offers: OfferCache | None = None,
    ) -> None:
        self._http = http
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.retry = retry or RetryPolicy()
        self.timeout = timeout or httpx.Timeout(30.0, connect=10.0)
        # Uploads and downloads move megabytes, and a clone or a speech answers when the
        # engine has done the work (tens of seconds on a loaded CPU): a longer budget.
        self.transfer_timeout = transfer_timeout or httpx.Timeout(600.0, connect=10.0)
        self._sleep = sleep
        self._rand = rand
        # Which of a moved endpoint's paths this server answers, learned on first use.
        self._routes: dict[str, str] = {} if _routes is None else _routes
        # What this API offers beyond the hosted contract (its OpenAPI document), shared
        # with every per-member view.
        self._offers = _offers or OfferCache(ttl=offer_ttl, clock=clock)

    def __repr__(self) -> str:
        keyed = "with key" if self._api_key is not None else "anonymous"
        return f"<TadaClient {self.base_url} {keyed}>"

    def with_key(self, api_key: SecretStr) -> TadaClient:
        """The same client, authenticated with ``api_key``."""
        return TadaClient(
            self._http,
            base_url=self.base_url,
            api_key=api_key,
            retry=self.retry,
            timeout=self.timeout,
            transfer_timeout=self.transfer_timeout,
            sleep=self._sleep,
            rand=self._rand,
            _routes=self._routes,
            _offers=self._offers,
        )

    # ------------------------------------------------------------------ trace

    async def trace_speech(self, audio: bytes, *, operator_token: SecretStr) -> TraceAnswer:
        """``POST /api/trace/speech`` (engine extension) as the engine's operator: whether
        ``audio`` is (part of) speech made by this engine, and which generation.

        The engine decodes the clip confined (untrusted bytes). Raises
        :class:`~bot.tada.errors.NotFound` where the API has no such endpoint (the hosted
        Ta-da API), :class:`~bot.tada.errors.Unauthorized` for a wrong operator token.
        """
        path = "/api/trace/speech"
        resp = await self._send(
            "POST",
            self.base_url + path,
            path=path,
            headers={OPERATOR_HEADER: operator_token.get_secret_value()},
            content=lambda: audio,
            idempotent=True,  # a read: sending it twice changes nothing
            authenticated=False,
            transfer=True,
        )
        self._raise_for_status(resp, "POST", path)
        return self._parse(TraceAnswer, resp)

    # ------------------------------------------------------------------ users

    async def register(self, email: str) -> Registration:
        """``POST /api/users/register?email=``: a new account and its API key (shown once)."""
        resp = await self._call("POST", "/api/users/register", params={"email": email})
        return self._parse(Registration, resp)

    async def verify_key(self) -> None:
        """Check that this client's key is accepted (raises :class:`Unauthorized` if not).

        The contract has no "who am I" endpoint; the cheapest authenticated read is used.
        """
        await self._call("GET", "/api/voices/uploads", idempotent=True)

    # ----------------------------------------------------------------- voices

    async def create_voice_upload_url(self, name: str, file_name: str) -> UploadUrl:
        """``POST /api/voices/uploads/url``: a pre-signed URL to PUT an audio sample to."""
        resp = await self._call(
            "POST", "/api/voices/uploads/url", params={"name": name, "file_name": file_name}
        )
        return self._parse(UploadUrl, resp)

    async def create_voice(self, upload_id: str) -> Voice:
        """``POST /api/voices/uploads?upload_id=``: clone a voice from an uploaded sample."""
        resp = await self._call(
            "POST", "/api/voices/uploads", params={"upload_id": upload_id}, long_work=True
        )
        return self._parse(Voice, resp)

    async def list_voice_uploads(self) -> list[VoiceUpload]:
        """``GET /api/voices/uploads``: this key's voice samples."""
        resp = await self._call("GET", "/api/voices/uploads", idempotent=True)
        return self._parse(list[VoiceUpload], resp)

    async def list_voices(self) -> list[Voice]:
        """``GET /api/voices``: this key's cloned voices."""
        resp = await self._call("GET", "/api/voices", idempotent=True)
        return self._parse(list[Voice], resp)

    async def get_voice(self, voice_id: str) -> Voice:
        """``GET /api/voices/{voice_id}``."""
        resp = await self._call("GET", f"/api/voices/{voice_id}", idempotent=True)
        return self._parse(Voice, resp)

    async def generate_voice(
        self, voice_id: str, text: str, *, locale: str | None = None
    ) -> SpokenAudio:
        """Speak ``text`` with a voice; ``locale`` (the member's Discord locale) goes as
        ``Accept-Language``: the engine's hint to the text's language (an API that does
        not read it ignores it).

        ``POST /api/voices/{voice_id}/generations`` (latest), falling back to the seed's
        ``POST /api/voices/generations/{voice_id}``.
        """
        resp = await self._call(
            "POST",
            f"/api/voices/{voice_id}/generations",
            fallback=f"/api/voices/generations/{voice_id}",
            route="generate_voice",
            json={"text": text},
            headers={"Accept-Language": locale} if locale else None,
            long_work=True,
        )
        return self._parse(SpokenAudio, resp)

    @contextlib.asynccontextmanager
    async def stream_speech(
        self, voice_id: str, text: str, *, locale: str | None = None
    ) -> AsyncIterator[SpeechStream]:
        """Speak ``text`` with a voice, the audio arriving while it is made: the engine's
        ``POST /api/voices/{voice_id}/speech/stream`` extension (check
        :meth:`generation_offer` first: the hosted API has no such route).

        Not retried: a speech asked twice is made twice. Once the stream ends, the
        generation is ``get_voice_generation(stream.generation_id)``.
        """
        path = f"/api/voices/{voice_id}/speech/stream"
        headers = {API_KEY_HEADER: self._api_key.get_secret_value()} if self._api_key else {}
        if locale:  # as for generate_voice: the hint to the text's language
            headers["Accept-Language"] = locale
        try:
            async with self._http.stream(
                "POST",
                self.base_url + path,
                json={"text": text},
                headers=headers,
                timeout=self.transfer_timeout,
                follow_redirects=False,
            ) as resp:
                if not resp.is_success:
                    await resp.aread()
                    self._raise_for_status(resp, "POST", path)
                chunks = resp.aiter_raw()
                head = b""
                async for chunk in chunks:
                    head += chunk
                    if len(head) >= WAV_HEADER_BYTES:
                        break
                if len(head) < WAV_HEADER_BYTES:
                    raise TadaProtocolError(f"{path}: the stream ended before its audio")
                generation_id = resp.headers.get("X-Generation-Id", "")
                if not generation_id:
                    raise TadaProtocolError(f"{path}: the stream names no generation")
                yield SpeechStream(
                    generation_id,
                    _wav_rate(head[:WAV_HEADER_BYTES]),
                    chunks,
                    head[WAV_HEADER_BYTES:],
                )
        except httpx.TimeoutException as exc:
            raise TadaTimeout(f"POST {path}: no answer in time ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise TadaTransportError(f"POST {path}: {type(exc).__name__}: {exc}") from exc

    async def list_voice_generations(
        self, voice_id: str, *, limit: int = 20, offset: int = 0
    ) -> VoiceGenerationList:
        """One voice's generations: ``GET /api/voices/{voice_id}/generations`` (latest),
        falling back to the seed's ``GET /api/voices/generations/{voice_id}``."""
        resp = await self._call(
            "GET",
            f"/api/voices/{voice_id}/generations",
            fallback=f"/api/voices/generations/{voice_id}",
            route="list_voice_generations",
            params={"limit": limit, "offset": offset},
            idempotent=True,
        )
        return self._parse(VoiceGenerationList, resp)

    async def list_all_voice_generations(
        self, *, limit: int = 20, offset: int = 0
    ) -> VoiceGenerationList:
        """``GET /api/voices/generations``: every voice generation of this key."""
        resp = await self._call(
            "GET",
            "/api/voices/generations",
            params={"limit": limit, "offset": offset},
            idempotent=True,
        )
        return self._parse(VoiceGenerationList, resp)

    async def get_voice_generation(self, generation_id: str) -> VoiceGeneration:
        """``GET /api/voices/generations/{generation_id}``."""
        resp = await self._call("GET", f"/api/voices/generations/{generation_id}", idempotent=True)
        return self._parse(VoiceGeneration, resp)

    # ------------------------------------------------------------------ loras

    async def create_lora_upload_url(
        self, name: str, trigger_word: str, file_name: str
    ) -> UploadUrl:
        """``POST /api/loras/uploads/url``: a pre-signed URL to PUT a zip of images to."""
        resp = await self._call(
            "POST",
            "/api/loras/uploads/url",
            params={"name": name, "trigger_word": trigger_word, "file_name": file_name},
        )
        return self._parse(UploadUrl, resp)

    async def list_lora_uploads(self) -> list[LoraUpload]:
        """``GET /api/loras/uploads``: this key's image zips (each one a LoRA to be)."""
        resp = await self._call("GET", "/api/loras/uploads", idempotent=True)
        return self._parse(list[LoraUpload], resp)

    async def start_lora_training(self, upload_id: str) -> LoraTraining:
        """``POST /api/loras/trainings/{upload_id}``: start training (202 Accepted)."""
        resp = await self._call("POST", f"/api/loras/trainings/{upload_id}")
        return self._parse_optional(LoraTraining, resp, upload_id=upload_id)

    async def get_lora_training(self, upload_id: str) -> LoraTraining:
        """``GET /api/loras/trainings/{upload_id}``: where a training stands."""
        resp = await self._call("GET", f"/api/loras/trainings/{upload_id}", idempotent=True)
        return self._parse(LoraTraining, resp)

    async def list_lora_trainings(self, *, limit: int = 20, offset: int = 0) -> list[LoraTraining]:
        """``GET /api/loras/trainings``: this key's trainings."""
        resp = await self._call(
            "GET",
            "/api/loras/trainings",
            params={"limit": limit, "offset": offset},
            idempotent=True,
        )
        return self._parse_list(LoraTraining, resp, "trainings")

    async def generate_lora(
        self,
        lora_id: str,
        prompt: str,
        *,
        seed: int | None = None,
        negative_prompt: str | None = None,
        aspect_ratio: str | None = None,
        variation_of: str | None = None,
    ) -> ImageGeneration:
        """An image from a trained LoRA: ``POST /api/loras/{lora_id}/generations`` (latest),
        falling back to the seed's ``POST /api/loras/generations/{upload_id}``.

        The keyword controls are engine extensions: each one given is sent, so pass only
        what :meth:`generation_offer` says this API accepts (the hosted one: none).
        """
        extensions = {
            "seed": seed,
            "negative_prompt": negative_prompt,
            "aspect_ratio": aspect_ratio,
            "variation_of": variation_of,
        }
        body = {"prompt": prompt} | {k: v for k, v in extensions.items() if v is not None}
        resp = await self._call(
            "POST",
            f"/api/loras/{lora_id}/generations",
            fallback=f"/api/loras/generations/{lora_id}",
            route="generate_lora",
            json=body,
        )
        return self._parse(ImageGeneration, resp)

    async def list_lora_generations(
        self, lora_id: str, *, limit: int = 20, offset: int = 0
    ) -> list[ImageGeneration]:
        """``GET /api/loras/{lora_id}/generations``: one LoRA's images (latest revision)."""
        resp = await self._call(
            "GET",
            f"/api/loras/{lora_id}/generations",
            params={"limit": limit, "offset": offset},
            idempotent=True,
        )
        return self._parse_list(ImageGeneration, resp, "generations")

    async def list_all_lora_generations(
        self, *, limit: int = 20, offset: int = 0
    ) -> list[ImageGeneration]:
        """``GET /api/loras/generations``: every LoRA image of this key."""
        resp = await self._call(
            "GET",
            "/api/loras/generations",
            params={"limit": limit, "offset": offset},
            idempotent=True,
        )
        return self._parse_list(ImageGeneration, resp, "generations")

    async def get_lora_generation(self, generation_id: str) -> ImageGeneration:
        """``GET /api/loras/generations/{generation_id}`` (latest revision)."""
        resp = await self._call("GET", f"/api/loras/generations/{generation_id}", idempotent=True)
        return self._parse(ImageGeneration, resp)

    async def upscale_image(self, image_id: str) -> ImageGeneration:
        """``POST /api/images/{image_id}/upscale`` (engine extension): the image at twice
        its size, redrawn lightly with its LoRA; ``parent_id`` names ``image_id``."""
        resp = await self._call("POST", f"/api/images/{image_id}/upscale")
        return self._parse(ImageGeneration, resp)

    async def vary_image(self, image_id: str, strength: str) -> ImageGeneration:
        """``POST /api/images/{image_id}/vary`` (engine extension): a variation of the image
        (``strength``: ``subtle`` or ``strong``) with a new seed."""
        resp = await self._call("POST", f"/api/images/{image_id}/vary", json={"strength": strength})
        return self._parse(ImageGeneration, resp)

    # ------------------------------------------------------------------ offer

    async def generation_offer(self) -> GenerationOffer:
        """The optional generation controls this API accepts, from its OpenAPI document
        (fetched once per base URL and TTL; unreadable means the hosted contract)."""
        return await self._offers.get(self.base_url, self._fetch_offer)

    async def _fetch_offer(self) -> GenerationOffer | None:
        try:
            resp = await self._call("GET", "/openapi.json", idempotent=True, authenticated=False)
            document = resp.json()
        except (TadaError, ValueError) as exc:
            log.info("%s: no OpenAPI document (%s); assuming the hosted contract", self, exc)
            return None
        if not isinstance(document, dict):
            log.info(
                "%s: its OpenAPI document is not an object; assuming the hosted contract", self
            )
            return None
        return offer_of(document)

    # ------------------------------------------------------------------- demo

    async def demo_tadz(self, prompt: str) -> ImageGeneration:
        """``POST /api/demo/tadz``: an image in the Tadz style."""
        resp = await self._call("POST", "/api/demo/tadz", json={"prompt": prompt})
        return self._parse(ImageGeneration, resp)

    async def demo_pudgy(self, prompt: str) -> ImageGeneration:
        """``POST /api/demo/pudgy``: an image in the Pudgy Penguins style."""
        resp = await self._call("POST", "/api/demo/pudgy", json={"prompt": prompt})
        return self._parse(ImageGeneration, resp)

    # -------------------------------------------------------- files (signed URLs)

    async def put_upload(
        self, target: UploadUrl, body: UploadBody, *, size: int | None = None
    ) -> UploadReceipt:
        """Stream ``body`` to a pre-signed upload URL.

        The API key is never sent there (the URL may belong to a storage service). A
        ``Path`` or ``bytes`` body is retried like an idempotent call; an async iterable
        can be read only once, so it is not.
        """
        headers = dict(target.headers)
        if isinstance(body, bytes):
            size = len(body)
        elif isinstance(body, Path):
            size = (await asyncio.to_thread(body.stat)).st_size
        if size is not None:
            headers["Content-Length"] = str(size)
        replayable = isinstance(body, bytes | Path)

        def content() -> bytes | AsyncIterable[bytes]:
            return _file_chunks(body) if isinstance(body, Path) else body

        resp = await self._send(
            target.method.upper(),
            self._absolute(target.upload_url),
            path="(upload URL)",
            headers=headers,
            content=content,
            idempotent=replayable,
            authenticated=False,
            transfer=True,
        )
        self._raise_for_status(resp, target.method.upper(), "(upload URL)")
        if not resp.content:
            return UploadReceipt(upload_id=target.upload_id)
        try:
            return UploadReceipt.model_validate(resp.json())
        except (ValueError, ValidationError):
            # Storage services answer in their own shapes; success is the status code.
            return UploadReceipt(upload_id=target.upload_id)

    async def iter_download(
        self, url: str, *, max_bytes: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream an artifact (audio, image) from its URL, chunk by chunk.

        Relative URLs resolve against the API base. Raises :class:`TadaProtocolError` past
        ``max_bytes`` instead of filling memory or disk.
        """
        target = self._absolute(url)
        try:
            async with self._http.stream("GET", target, timeout=self.transfer_timeout) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    self._raise_for_status(resp, "GET", "(download URL)")
                seen = 0
                async for chunk in resp.aiter_bytes(CHUNK):
                    seen += len(chunk)
                    if max_bytes is not None and seen > max_bytes:
                        raise TadaProtocolError(f"download is larger than {max_bytes} bytes")
                    yield chunk
        except httpx.TimeoutException as exc:
            raise TadaTimeout(f"download timed out: {exc}") from exc
        except httpx.TransportError as exc:
            raise TadaTransportError(f"download failed: {exc}") from exc

    async def download_to(self, url: str, dest: Path, *, max_bytes: int | None = None) -> int:
        """Stream an artifact into ``dest`` (written in a thread); returns its size."""
        size = 0
        fh = await asyncio.to_thread(dest.open, "wb")
        try:
            async for chunk in self.iter_download(url, max_bytes=max_bytes):
                await asyncio.to_thread(fh.write, chunk)
                size += len(chunk)
        except BaseException:
            await asyncio.to_thread(fh.close)
            await asyncio.to_thread(dest.unlink, True)
            raise
        await asyncio.to_thread(fh.close)
        return size

    # --------------------------------------------------------------- plumbing

    def _absolute(self, url: str) -> str:
        return url if "://" in url else urljoin(self.base_url + "/", url.lstrip("/"))

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        idempotent: bool = False,
        fallback: str | None = None,
        route: str | None = None,
        authenticated: bool = True,
        headers: dict[str, str] | None = None,
        long_work: bool = False,
    ) -> httpx.Response:
        """One API call; with ``fallback``, the seed path is tried on 404/405. ``long_work``:
        the answer comes when the engine has done the work (a clone, a speech), so it waits
        as long as a transfer does, not the short read timeout."""
        candidates = [path] if fallback is None else [path, fallback]
        if route is not None and self._routes.get(route) == "seed":
            candidates = candidates[1:]
        resp: httpx.Response | None = None
        for index, candidate in enumerate(candidates):
            resp = await self._send(
                method,
                self.base_url + candidate,
                path=candidate,
                params=params,
                json=json,
                headers=headers,
                idempotent=idempotent,
                authenticated=authenticated,
                transfer=long_work,
            )
            last = index == len(candidates) - 1
            if resp.status_code in (404, 405) and not last:
                log.debug(
                    "%s %s answered %s; trying the seed path", method, candidate, resp.status_code
                )
                continue
            if route is not None and resp.is_success:
                self._routes[route] = "latest" if candidate == path else "seed"
            self._raise_for_status(resp, method, candidate)
            return resp
        raise AssertionError("unreachable: the last candidate always returns or raises")

    async def _send(
        self,
        method: str,
        url: str,
        *,
        path: str,
        params: dict[str, Any] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        content: Callable[[], bytes | AsyncIterable[bytes]] | None = None,
        idempotent: bool,
        authenticated: bool = True,
        transfer: bool = False,
    ) -> httpx.Response:
        """Send with retries; returns the last response (error statuses included)."""
        all_headers = dict(headers or {})
        if authenticated and self._api_key is not None:
            all_headers[API_KEY_HEADER] = self._api_key.get_secret_value()
        attempt = 0
        while True:
            try:
                resp = await self._request(
                    method,
                    url,
                    params=params,
                    json=json,
                    content=content() if content is not None else None,
                    headers=all_headers,
                    timeout=self.transfer_timeout if transfer else self.timeout,
                )
            except httpx.TransportError as exc:
                # A connection that never opened sent nothing: safe to retry anything.
                unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if attempt < self.retry.max_retries and (idempotent or unsent):
                    delay = self.retry.backoff(attempt, self._rand)
                    log.info(
                        "%s %s: %s; retry %d in %.1fs",
                        method,
                        path,
                        type(exc).__name__,
                        attempt + 1,
                        delay,
                    )
                    await self._sleep(delay)
                    attempt += 1
                    continue
                if isinstance(exc, httpx.TimeoutException):
                    raise TadaTimeout(
                        f"{method} {path}: no answer in time ({type(exc).__name__})"
                    ) from exc
                raise TadaTransportError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            status = resp.status_code
            retryable = status == 429 or (status >= 500 and idempotent)
            if not retryable or attempt >= self.retry.max_retries:
                return resp
            wait = parse_retry_after(resp.headers.get("Retry-After"))
            if wait is not None and wait > self.retry.max_retry_after_seconds:
                return resp  # too long to hold an interaction: the caller reports it
            delay = wait if wait is not None else self.retry.backoff(attempt, self._rand)
            log.info(
                "%s %s answered %d; retry %d in %.1fs", method, path, status, attempt + 1, delay
            )
            await resp.aclose()
            await self._sleep(delay)
            attempt += 1

    async def _request(
        self, method: str, url: str, *, headers: dict[str, str], **kwargs: Any
    ) -> httpx.Response:
        """One request, following redirects ourselves so the key stays with its origin.

        httpx copies every header but ``Authorization`` onto a redirect, wherever it leads;
        a member's ``X-API-Key`` (or the operator's token) must never reach another origin
        (scheme, host and port).
        """
        resp = await self._http.request(
            method, url, headers=headers, follow_redirects=False, **kwargs
        )
        for _ in range(MAX_REDIRECTS):
            nxt = resp.next_request
            if nxt is None:
                return resp
            if _origin(nxt.url) != _origin(resp.request.url):
                nxt.headers.pop(API_KEY_HEADER, None)
                nxt.headers.pop(OPERATOR_HEADER, None)
            await resp.aclose()
            resp = await self._http.send(nxt, follow_redirects=False)
        return resp

    def _raise_for_status(self, resp: httpx.Response, method: str, path: str) -> None:
        if resp.is_success:
            return
        status = resp.status_code
        cls = error_class_for(status)
        detail = _detail(resp)
        if cls is RateLimited:
            raise RateLimited(
                status,
                detail,
                method=method,
                path=path,
                retry_after=parse_retry_after(resp.headers.get("Retry-After")),
            )
        raise cls(status, detail, method=method, path=path)

    @staticmethod
    def _parse(model: type[M] | Any, resp: httpx.Response) -> M:
        try:
            data = resp.json()
        except ValueError as exc:
            raise TadaProtocolError(f"{resp.request.url.path}: the answer is not JSON") from exc
        try:
            if isinstance(model, type) and issubclass(model, BaseModel):
                return model.model_validate(data)  # type: ignore[return-value]
            parsed: M = TypeAdapter(model).validate_python(data)
            return parsed
        except ValidationError as exc:
            raise TadaProtocolError(
                f"{resp.request.url.path}: unexpected answer: {exc.error_count()} problem(s): "
                f"{exc.errors()[0]['loc']} {exc.errors()[0]['msg']}"
            ) from exc

    @classmethod
    def _parse_list(cls, model: type[BaseModel], resp: httpx.Response, key: str) -> list[Any]:
        """A list answer that upstream leaves untyped: a bare list or ``{key: [...]}``."""
        try:
            data = resp.json()
        except ValueError as exc:
            raise TadaProtocolError(f"{resp.request.url.path}: the answer is not JSON") from exc
        if isinstance(data, dict):
            data = data.get(key, data.get("items"))
        if not isinstance(data, list):
            raise TadaProtocolError(f"{resp.request.url.path}: expected a list of {key}")
        try:
            return [model.model_validate(item) for item in data]
        except ValidationError as exc:
            raise TadaProtocolError(f"{resp.request.url.path}: unexpected {key}: {exc}") from exc

    @classmethod
    def _parse_optional(cls, model: type[M], resp: httpx.Response, **defaults: Any) -> M:
        """An answer whose body upstream leaves empty or untyped (202 Accepted)."""
        if not resp.content:
            return model(**defaults)
        parsed: M = cls._parse(model, resp)
        return parsed


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    """Read a file in chunks, each read in a thread (the event loop never blocks on disk)."""
    fh = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(fh.read, CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(fh.close)


__all__ = ["HOSTED_BASE_URL", "RetryPolicy", "TadaClient", "TadaError", "TadaHTTPError"]
