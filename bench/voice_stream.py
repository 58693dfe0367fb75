"""First-audio latency of ``/voice say``: today's path (the whole speech made, downloaded,
then played) against the speech stream (played as it arrives), in the same run.

The engine runs under uvicorn on loopback with one in-process worker and the CPU reference
back end (models loaded before timing); the bot's own client and audio sources do the rest,
so each time is from the request to the first Opus packet of speech a voice connection
would send:

- ``whole``: ``POST /api/voices/{id}/generations``, download the MP3, ``FFmpegOpusAudio``
  (what the player used before), first packet;
- ``stream``: ``POST /api/voices/{id}/speech/stream``, the first block fed to
  :class:`bot.voice_channel.StreamedSpeech` (ffmpeg encodes it), its first packet.

The two alternate, for a one-sentence and a three-sentence text. Writes
bench/results/voice_stream.json.

    python bench/voice_stream.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import discord

from bot.media import ffmpeg_path
from bot.tada import TadaClient
from bot.voice_channel import OPUS_SILENCE, StreamedSpeech
from engine.app import create_app
from engine.settings import EngineSettings, JobSettings
from engine.voice.handlers import build_backend, warm_up_voice
from engine.voice.settings import voice_settings
from tests.conftest import RELAXED_LIMITS
from tests.engine.voice.conftest import SAMPLE_TEXT, wav_bytes
from tests.waiting import async_wait_until

RESULTS = Path(__file__).parent / "results"
TEXTS = {
    "one_sentence": "The old lighthouse keeper climbed the stairs every evening to light the lamp.",
    "three_sentences": (
        "The old lighthouse keeper climbed the stairs every evening to light the lamp. "
        "Ships far out at sea counted on him. He never once missed a night in forty years."
    ),
}


def first_packet(source: discord.AudioSource) -> None:
    """Read until the first packet of sound (blocking, as discord.py's player thread)."""
    while True:
        packet = source.read()
        if not packet:
            raise RuntimeError("the source ended before any sound")
        if packet != OPUS_SILENCE and not packet.startswith((b"OpusHead", b"OpusTags")):
            return


async def whole(tada: TadaClient, voice_id: str, text: str) -> dict[str, float]:
    started = time.perf_counter()
    spoken = await tada.generate_voice(voice_id, text)
    made = time.perf_counter()
    data = b"".join([c async for c in tada.iter_download(spoken.url)])
    source = discord.FFmpegOpusAudio(
        io.BytesIO(data),
        pipe=True,
        executable=ffmpeg_path(),
        before_options="-hide_banner -loglevel error",
    )
    try:
        await asyncio.to_thread(first_packet, source)
    finally:
        source.cleanup()
    first = time.perf_counter()
    return {"first_audio_s": first - started, "complete_s": made - started}


async def queue_wait(app: Any) -> float:
    """How long the latest job waited in the engine's queue before a worker took it."""
    from sqlalchemy import select

    from engine.models import Job

    async with app.state.services.db.session() as s:
        job = (await s.scalars(select(Job).order_by(Job.created_at.desc()).limit(1))).one()
    return (job.started_at - job.created_at).total_seconds()


async def streamed(tada: TadaClient, voice_id: str, text: str) -> dict[str, float]:
    started = time.perf_counter()
    source = StreamedSpeech()
    first: float | None = None
    async with tada.stream_speech(voice_id, text) as stream:
        answered = time.perf_counter()
        async for pcm in stream.pcm():
            await source.feed(pcm, stream.sample_rate)
            if first is None:
                await asyncio.to_thread(first_packet, source)
                first = time.perf_counter()
    source.end()
    await tada.get_voice_generation(stream.generation_id)
    done = time.perf_counter()
    assert first is not None
    return {
        "first_audio_s": first - started,
        "complete_s": done - started,
        # The answer's first piece received (the rest is the bot's Opus encoding).
        "first_piece_received_s": answered - started,
    }


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


async def run(runs: int, data_dir: Path) -> dict[str, Any]:
    settings = EngineSettings.model_validate(
        {
            "data_dir": data_dir,
            "jobs": JobSettings(in_process_workers=1, wait_timeout_seconds=600),
            "limits": RELAXED_LIMITS,
            # Pinned: the default ("auto") is Pocket TTS wherever its weights were pulled.
            "voice": {"backend": "cpu-reference"},
        }
    )
    backend = build_backend(voice_settings(settings.voice))
    await asyncio.to_thread(warm_up_voice, backend)
    app = create_app(settings, voice_backend=backend)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    await async_wait_until(lambda: server.started, "uvicorn started")
    port = server.servers[0].sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {}
    try:
        async with httpx.AsyncClient(timeout=600) as http:
            reg = await http.post(f"{base}/api/users/register", params={"email": "b@example.com"})
            key = SecretStr(reg.json()["api_key"])
            tada = TadaClient(http, base_url=base, timeout=httpx.Timeout(600.0)).with_key(key)
            sample = backend.base_speech(SAMPLE_TEXT)  # type: ignore[attr-defined]
            target = await tada.create_voice_upload_url("bench", "bench.wav")
            await tada.put_upload(target, wav_bytes(sample.audio, sample.sample_rate))
            voice = await tada.create_voice(target.upload_id)
            assert (await tada.generation_offer()).speech_stream
            await whole(tada, voice.id, "Warm up.")  # first-request costs out of the timing
            await streamed(tada, voice.id, "Warm up.")
            for name, text in TEXTS.items():
                times: dict[str, list[dict[str, float]]] = {"whole": [], "stream": []}
                for _ in range(runs):
                    times["whole"].append(await whole(tada, voice.id, text))
                    times["stream"].append(await streamed(tada, voice.id, text))
                    times["stream"][-1]["queue_wait_s"] = await queue_wait(app)
                out[name] = {
                    "text": text,
                    **{
                        path: {key: summary([r[key] for r in rs]) for key in rs[0]}
                        for path, rs in times.items()
                    },
                }
                print(name, json.dumps(out[name], indent=1))
    finally:
        server.should_exit = True
        await task
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="tada-bench-stream-") as tmp:
        texts = asyncio.run(run(args.runs, Path(tmp)))
    results = {
        "what": "first-audio latency of /voice say: whole speech then play vs streamed",
        "backend": "cpu-reference (Piper + WORLD), models loaded",
        "runs": args.runs,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": load_before,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "texts": texts,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "voice_stream.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["machine"]))


if __name__ == "__main__":
    main()
