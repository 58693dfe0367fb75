"""The client's behaviour under failure: retries, Retry-After, timeouts, each error class."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from bot.tada import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RetryPolicy,
    ServerError,
    ServiceUnavailable,
    TadaClient,
    TadaError,
    TadaHTTPError,
    TadaProtocolError,
    TadaTimeout,
    TadaTransportError,
    Unauthorized,
    UnsupportedMediaType,
    parse_retry_after,
)
from bot.tada.models import TrainingStatus, UploadUrl

Handler = Callable[[httpx.Request], httpx.Response]


class Sleeps:
    """Records the waits the client asks for instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class Scripted:
    """A server that answers from a script, one entry per request, and counts them."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def client_for(handler: Handler, sleeps: Sleeps, **kwargs: object) -> TadaClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return TadaClient(
        http,
        base_url="http://tada.test/tadzagent",
        api_key=SecretStr("tada_secret"),
        sleep=sleeps,
        rand=lambda: 0.5,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


async def test_requests_carry_the_key_header_and_the_base_path(sleeps: Sleeps) -> None:
    server = Scripted(httpx.Response(200, json=[]))
    await client_for(server, sleeps).list_voices()
    request = server.requests[0]
    assert request.headers["X-API-Key"] == "tada_secret"
    assert str(request.url) == "http://tada.test/tadzagent/api/voices"


async def test_idempotent_calls_retry_5xx_with_growing_backoff(sleeps: Sleeps) -> None:
    server = Scripted(
        httpx.Response(503, json={"detail": "busy"}),
        httpx.Response(502, text="bad gateway"),
        httpx.Response(200, json=[]),
    )
    assert await client_for(server, sleeps).list_voices() == []
    assert len(server.requests) == 3
    # equal jitter with rand=0.5: 3/4 of base * 2**attempt
    assert sleeps.waits == [0.375, 0.75]


async def test_backoff_is_capped_and_jittered() -> None:
    policy = RetryPolicy(backoff_base_seconds=1, backoff_max_seconds=8)
    assert policy.backoff(10, lambda: 0.0) == 4.0
    assert policy.backoff(10, lambda: 1.0) == 8.0
    assert policy.backoff(0, lambda: 0.0) == 0.5


async def test_retries_run_out_and_the_5xx_is_raised_with_its_detail(sleeps: Sleeps) -> None:
    server = Scripted(httpx.Response(500, json={"detail": "database is down"}))
    with pytest.raises(ServerError) as caught:
        await client_for(server, sleeps, retry=RetryPolicy(max_retries=2)).list_voices()
    assert len(server.requests) == 3
    assert caught.value.status == 500
    assert caught.value.detail == "database is down"


async def test_non_idempotent_calls_are_not_retried_on_5xx(sleeps: Sleeps) -> None:
    server = Scripted(httpx.Response(500, json={"detail": "boom"}), httpx.Response(200, json={}))
    with pytest.raises(ServerError):
        await client_for(server, sleeps).generate_voice("v1", "hello")
    assert len(server.requests) == 1
    assert sleeps.waits == []


async def test_429_is_retried_for_any_call_honouring_retry_after(sleeps: Sleeps) -> None:
    server = Scripted(
        httpx.Response(429, headers={"Retry-After": "7"}, json={"detail": "slow down"}),
        httpx.Response(200, json={"url": "http://x/a.mp3"}),
    )
    spoken = await client_for(server, sleeps).generate_voice("v1", "hello")
    assert spoken.url == "http://x/a.mp3"
    assert sleeps.waits == [7.0]
    assert len(server.requests) == 2


async def test_429_with_an_http_date_retry_after(sleeps: Sleeps) -> None:
    later = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(later, now=1_000_000) == 30.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") == 0.0


async def test_429_asking_for_too_long_is_raised_at_once_with_retry_after(sleeps: Sleeps) -> None:
    server = Scripted(
        httpx.Response(429, headers={"Retry-After": "3600"}, json={"detail": "quota"})
    )
    with pytest.raises(RateLimited) as caught:
        await client_for(server, sleeps).list_voices()
    assert caught.value.retry_after == 3600.0
    assert caught.value.detail == "quota"
    assert sleeps.waits == []
    assert len(server.requests) == 1


async def test_429_without_retry_after_backs_off_then_raises(sleeps: Sleeps) -> None:
    server = Scripted(httpx.Response(429, json={"detail": "slow down"}))
    with pytest.raises(RateLimited) as caught:
        await client_for(server, sleeps, retry=RetryPolicy(max_retries=2)).list_voices()
    assert caught.value.retry_after is None
    assert len(sleeps.waits) == 2
    assert len(server.requests) == 3


async def test_read_timeouts_are_retried_for_reads_then_raised_as_timeout(sleeps: Sleeps) -> None:
    server = Scripted(httpx.ReadTimeout("slow"))
    with pytest.raises(TadaTimeout) as caught:
        await client_for(server, sleeps, retry=RetryPolicy(max_retries=2)).list_voices()
    assert len(server.requests) == 3
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert isinstance(caught.value, TadaTransportError)


async def test_a_read_timeout_on_a_post_is_not_retried(sleeps: Sleeps) -> None:
    # The request may have been processed: repeating it could make two voices.
    server = Scripted(httpx.ReadTimeout("slow"))
    with pytest.raises(TadaTimeout):
        await client_for(server, sleeps).create_voice("u1")
    assert len(server.requests) == 1


async def test_a_connection_that_never_opened_is_retried_even_for_a_post(sleeps: Sleeps) -> None:
    voice = {"id": "v1", "name": "me", "created_at": "2026-01-01T00:00:00Z"}
    server = Scripted(httpx.ConnectError("refused"), httpx.Response(200, json=voice))
    created = await client_for(server, sleeps).create_voice("u1")
    assert created.id == "v1"
    assert len(server.requests) == 2


async def test_transport_errors_become_tada_transport_errors(sleeps: Sleeps) -> None:
    server = Scripted(httpx.ConnectError("refused"))
    with pytest.raises(TadaTransportError) as caught:
        await client_for(server, sleeps, retry=RetryPolicy(max_retries=1)).list_voices()
    assert not isinstance(caught.value, TadaTimeout)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequest),
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (409, Conflict),
        (413, PayloadTooLarge),
        (415, UnsupportedMediaType),
        (418, TadaHTTPError),
        (422, InvalidRequest),
        (429, RateLimited),
        (500, ServerError),
        (503, ServiceUnavailable),
        (504, ServerError),
    ],
)
async def test_each_status_raises_its_class_keeping_detail(
    sleeps: Sleeps, status: int, cls: type[TadaHTTPError]
) -> None:
    server = Scripted(httpx.Response(status, json={"detail": f"because {status}"}))
    with pytest.raises(cls) as caught:
        await client_for(server, sleeps, retry=RetryPolicy(max_retries=0)).get_voice("v1")
    assert type(caught.value) is cls
    assert caught.value.status == status
    assert caught.value.detail == f"because {status}"
    assert isinstance(caught.value, TadaError)


async def test_422_keeps_fastapis_validation_list(sleeps: Sleeps) -> None:
    detail = [{"loc": ["query", "email"], "msg": "not a valid email", "type": "value_error"}]
    server = Scripted(httpx.Response(422, json={"detail": detail}))
    with pytest.raises(InvalidRequest) as caught:
        await client_for(server, sleeps).register("nope")
    assert caught.value.errors == detail
    assert caught.value.message == "email: not a valid email"


async def test_non_json_error_bodies_are_kept_as_text(sleeps: Sleeps) -> None:
    server = Scripted(httpx.Response(502, text="<html>Bad Gateway</html>"))
    with pytest.raises(ServerError) as caught:
        await client_for(server, sleeps).create_voice("u1")
    assert caught.value.detail == "<html>Bad Gateway</html>"


async def test_answers_outside_the_contract_are_protocol_errors(sleeps: Sleeps) -> None:
    with pytest.raises(TadaProtocolError):
        await client_for(Scripted(httpx.Response(200, text="ok")), sleeps).list_voices()
    with pytest.raises(TadaProtocolError):
        await client_for(Scripted(httpx.Response(200, json={"id": 1})), sleeps).get_voice("v1")


async def test_unknown_fields_are_ignored_and_upstream_aliases_accepted(sleeps: Sleeps) -> None:
    server = Scripted(
        httpx.Response(
            200,
            json={"id": "u9", "signed_url": "https://storage/x", "token": "t", "path": "p/x"},
        )
    )
    target = await client_for(server, sleeps).create_voice_upload_url("me", "a.wav")
    assert target.upload_id == "u9" and target.upload_url == "https://storage/x"
    assert target.method == "PUT"
    training = Scripted(httpx.Response(202, content=b""))
    started = await client_for(training, sleeps).start_lora_training("u1")
    assert started.upload_id == "u1" and started.status is None
    status = Scripted(
        httpx.Response(
            200,
            json={
                "id": "t",
                "upload_id": "u1",
                "status": "succeeded",
                "created_at": "2026-01-01T00:00:00Z",
                "updated_at": "2026-01-01T00:00:00Z",
                "replicate_id": "r",
            },
        )
    )
    assert (
        await client_for(status, sleeps).get_lora_training("u1")
    ).state is TrainingStatus.SUCCEEDED


async def test_the_key_never_shows_in_reprs_or_error_messages(sleeps: Sleeps) -> None:
    server = Scripted(httpx.Response(401, json={"detail": "invalid API key"}))
    client = client_for(server, sleeps)
    with pytest.raises(Unauthorized) as caught:
        await client.list_voices()
    assert "tada_secret" not in repr(client)
    assert "tada_secret" not in str(caught.value)
    assert "tada_secret" not in repr(caught.value)


async def test_upload_puts_without_the_key_and_retries_a_replayable_body(
    sleeps: Sleeps, tmp_path: Path
) -> None:
    sample = tmp_path / "sample.wav"
    sample.write_bytes(b"RIFF" + b"x" * 3_000_000)
    bodies: list[bytes] = []

    def storage(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        assert "X-API-Key" not in request.headers
        assert request.headers["Content-Type"] == "audio/wav"
        assert request.headers["Content-Length"] == str(sample.stat().st_size)
        if len(bodies) == 1:
            return httpx.Response(503)
        return httpx.Response(200, json={"upload_id": "u1", "status": "uploaded", "size_bytes": 3})

    target = UploadUrl(
        upload_id="u1",
        upload_url="https://storage.test/put/u1",
        headers={"Content-Type": "audio/wav"},
    )
    receipt = await client_for(storage, sleeps).put_upload(target, sample)
    assert receipt.status == "uploaded"
    assert len(bodies) == 2 and bodies[0] == bodies[1] == sample.read_bytes()


async def test_an_async_iterable_upload_is_streamed_once_and_not_retried(sleeps: Sleeps) -> None:
    sent: list[bytes] = []

    def storage(request: httpx.Request) -> httpx.Response:
        sent.append(request.read())
        return httpx.Response(503)

    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"a" * 10, b"b" * 10):
            yield part

    target = UploadUrl(upload_id="u1", upload_url="https://storage.test/put/u1")
    with pytest.raises(ServerError):
        await client_for(storage, sleeps).put_upload(target, chunks(), size=20)
    assert sent == [b"a" * 10 + b"b" * 10]


async def test_downloads_stream_and_stop_past_max_bytes(sleeps: Sleeps, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB

    def artifacts(request: httpx.Request) -> httpx.Response:
        assert "X-API-Key" not in request.headers
        if request.url.path.endswith("/missing.mp3"):
            return httpx.Response(404, json={"detail": "artifact not found"})
        return httpx.Response(200, content=payload)

    client = client_for(artifacts, sleeps)
    dest = tmp_path / "a.mp3"
    assert await client.download_to("/storage/artifacts/a.mp3?signature=s", dest) == len(payload)
    assert dest.read_bytes() == payload
    too_big = tmp_path / "big.mp3"
    with pytest.raises(TadaProtocolError):
        await client.download_to("http://cdn.test/a.mp3", too_big, max_bytes=1024)
    assert not too_big.exists()
    with pytest.raises(NotFound):
        async for _ in client.iter_download("http://cdn.test/missing.mp3"):
            pass


async def test_a_real_socket_that_never_answers_times_out() -> None:
    stop = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await stop.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient() as http:
            client = TadaClient(
                http,
                base_url=f"http://127.0.0.1:{port}",
                timeout=httpx.Timeout(0.2),
                retry=RetryPolicy(max_retries=1, backoff_base_seconds=0.01),
            )
            with pytest.raises(TadaTimeout):
                await client.list_voice_uploads()
    finally:
        stop.set()
        server.close()


async def test_speech_carries_the_members_locale_as_accept_language(sleeps: Sleeps) -> None:
    server = Scripted(httpx.Response(200, json={"url": "http://x/a.mp3"}))
    await client_for(server, sleeps).generate_voice("v1", "hallo", locale="de")
    await client_for(server, sleeps).generate_voice("v1", "hello")
    with_locale, without = server.requests
    assert with_locale.headers["Accept-Language"] == "de"
    assert "Accept-Language" not in without.headers
    assert with_locale.headers["X-API-Key"] == "tada_secret"


async def _slow_server(delay: float, body: bytes) -> tuple[asyncio.Server, int]:
    """A real HTTP server that answers every request with ``body`` after ``delay`` seconds."""

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(delay)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("call", ["create_voice", "generate_voice"])
async def test_a_clone_or_a_speech_waits_for_the_engines_work_not_the_short_timeout(
    call: str,
) -> None:
    # Both answer when the engine has cloned or spoken, which takes tens of seconds on a
    # loaded CPU: the first clone after a start waited 48 s for its models. The short read
    # timeout (30 s) gave up while the engine went on; a retried clone then answered 409.
    body = (
        b'{"id": "v1", "name": "me", "created_at": "2026-01-01T00:00:00Z"}'
        if call == "create_voice"
        else b'{"url": "http://x/a.mp3"}'
    )
    server, port = await _slow_server(0.6, body)
    try:
        async with httpx.AsyncClient() as http:
            client = TadaClient(
                http,
                base_url=f"http://127.0.0.1:{port}",
                timeout=httpx.Timeout(0.2),
                transfer_timeout=httpx.Timeout(10.0),
                retry=RetryPolicy(max_retries=0),
            )
            if call == "create_voice":
                assert (await client.create_voice("u1")).id == "v1"
            else:
                assert (await client.generate_voice("v1", "hello")).url == "http://x/a.mp3"
            # A short call still has the short timeout.
            with pytest.raises(TadaTimeout):
                await client.list_voices()
    finally:
        server.close()
