"""First-audio latency of ``/voice say``: today's path (the whole speech made, downloaded,
then played) against the speech stream (played as it arrives), in the same run.

The engine runs under uvicorn on loopback with one in-process worker and the CPU reference
back end (models loaded before timing); the bot's own client and audio sources do the rest,
so each time is from the request to the first Opus packet of speech a voice connection
would send:

- ``whole``: ``POST /api/voices/{id}/generations``, download the MP3, ``FFmpegOpusAudio``
  (what the player used before), first packet;
- ``stream``: ``POST /api/voices/{id}/speech/stream``, its blocks fed to
  :class:`bot.voice_channel.StreamedSpeech` (as ``/voice say`` does, with whichever Opus
  encoder the checkout's source uses), its first packet as a player reading it meanwhile
  takes it.

The two alternate, for a one-sentence and a three-sentence text. Each request comes after
``--idle`` seconds of quiet, as a member's command does (a job queue polled while idle
backs off between its looks). Each time comes with the process's CPU seconds over it (the
engine's API and worker and the bot's side all run in this process: on a shared machine
they show the work apart from the waiting) and the 1-minute load average. Writes
bench/results/voice_stream.json (or ``--out``).

    python bench/voice_stream.py [--runs 5] [--idle 2] [--out FILE] [--label TEXT]

To time another checkout's code with this script (before/after), copy the script outside
both trees and run it with ``PYTHONPATH`` at that checkout.
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
        if packet == OPUS_SILENCE:
            time.sleep(0.002)  # a stream still waiting for its first piece
        elif not packet.startswith((b"OpusHead", b"OpusTags")):
            return


def load() -> float:
    return round(os.getloadavg()[0], 2)


async def whole(tada: TadaClient, voice_id: str, text: str) -> dict[str, float]:
    started = time.perf_counter()
    cpu = time.process_time()
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
    return {
        "first_audio_s": first - started,
        "first_audio_cpu_s": time.process_time() - cpu,
        "complete_s": made - started,
        "load_1min": load(),
    }


async def queue_wait(app: Any) -> float:
    """How long the latest job waited in the engine's queue before a worker took it."""
    from sqlalchemy import select

    from engine.models import Job

    async with app.state.services.db.session() as s:
        job = (await s.scalars(select(Job).order_by(Job.created_at.desc()).limit(1))).one()
    return (job.started_at - job.created_at).total_seconds()


async def streamed(tada: TadaClient, voice_id: str, text: str) -> dict[str, float]:
    started = time.perf_counter()
    cpu = time.process_time()
    source = StreamedSpeech()
    heard: dict[str, float] = {}

    def listen() -> None:
        # The player takes packets while the rest of a block is still being encoded.
        first_packet(source)
        heard["at"] = time.perf_counter()
        heard["cpu"] = time.process_time() - cpu
        # Then it plays on at 20 ms a packet: the silence it is given once the speech has
        # started (the next piece not there yet) is a gap a member hears.
        gaps, due = 0, time.perf_counter()
        while packet := source.read():
            gaps += packet == OPUS_SILENCE
            due += 0.02
            time.sleep(max(0.0, due - time.perf_counter()))
        heard["gaps_s"] = gaps * 0.02

    listener = asyncio.create_task(asyncio.to_thread(listen))
    async with tada.stream_speech(voice_id, text) as stream:
        answered = time.perf_counter()
        async for pcm in stream.pcm():
            await source.feed(pcm, stream.sample_rate)
    source.end()
    await tada.get_voice_generation(stream.generation_id)
    done = time.perf_counter()
    await listener
    return {
        "first_audio_s": heard["at"] - started,
        "first_audio_cpu_s": heard["cpu"],
        "complete_s": done - started,
        # The answer's first piece received (the rest is the bot's Opus encoding).
        "first_piece_received_s": answered - started,
        # Silence within the speech while the player waited for the next piece.
        "gaps_s": heard["gaps_s"],
        "load_1min": load(),
    }


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


async def run(runs: int, data_dir: Path, idle: float = 2.0) -> dict[str, Any]:
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
            # First-request costs out of the timing (the language detector loads on the
            # first text long enough to judge).
            await whole(tada, voice.id, "Warming up the engine before timing.")
            await streamed(tada, voice.id, "Warming up the engine before timing.")
            for name, text in TEXTS.items():
                times: dict[str, list[dict[str, float]]] = {"whole": [], "stream": []}
                for _ in range(runs):
                    await asyncio.sleep(idle)
                    times["whole"].append(await whole(tada, voice.id, text))
                    times["whole"][-1]["queue_wait_s"] = await queue_wait(app)
                    await asyncio.sleep(idle)
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
    parser.add_argument("--idle", type=float, default=2.0, help="seconds of quiet before each")
    parser.add_argument("--out", type=Path, default=RESULTS / "voice_stream.json")
    parser.add_argument("--label", default="", help="what code was timed (e.g. a commit)")
    args = parser.parse_args()
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="tada-bench-stream-") as tmp:
        texts = asyncio.run(run(args.runs, Path(tmp), args.idle))
    import engine

    results = {
        "what": "first-audio latency of /voice say: whole speech then play vs streamed",
        "backend": "cpu-reference (Piper + WORLD), models loaded",
        "code": args.label or str(Path(engine.__file__).parents[1]),
        "runs": args.runs,
        "idle_before_each_s": args.idle,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": load_before,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "texts": texts,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["machine"]))


if __name__ == "__main__":
    main()
