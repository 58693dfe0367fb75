"""Benchmark of traceable speech: is a changed copy of a generation found again, and is
speech not made here ever taken for one?

The engine's own CPU reference back end (Piper + WORLD) speaks TEXTS in two cloned voices
(the "high" and "low" speakers of tests/engine/voice/conftest.py); each generation's
fingerprint is stored as generation stores it. Every generation then goes through each
transformation below with the bundled ffmpeg, is decoded by the engine's confined decoder
and traced against all stored fingerprints, exactly as ``POST /api/trace/speech`` does.

- true-positive rate per transformation: the clip's own generation is among the matches
  (``top1``: it is the best match; the other voice speaking the same text is the usual
  runner-up);
- false-positive rate: speech not made here matches any stored generation. Negatives:
  the LibriVox reader and the CMU Sphinx recordings (Debian pocketsphinx-testdata), the
  ALSA speaker-test voice (alsa-utils), and flite's voices (Debian flite) reading the very
  same texts (same words, another speaker and synthesiser) and other texts, some cut
  into windows; clips too short to trace (under about 2 s) are counted as refused.

    python bench/trace.py            # writes bench/results/trace.json
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.voice import make_speakers, sample_file
from engine.voice import fingerprint as fp
from engine.voice.audio import decode, ffmpeg_exe, load_sample
from engine.voice.reference import CpuReferenceBackend
from engine.voice.settings import VoiceSettings
from engine.voice.trace import MAX_TRACE_SECONDS

RESULTS = Path(__file__).parent / "results"
SPHINX = Path("/usr/share/pocketsphinx/test/data")
ALSA = Path("/usr/share/sounds/alsa")

TEXTS = [
    "The old lighthouse keeper climbed the stairs every evening to light the lamp.",
    "Please bring the blue folder to the meeting room before lunch, and close the door.",
    "I told you already, the money is in the drawer next to the kitchen window.",
    "Hey everyone, welcome back to the stream! Tonight we are finally trying the new map.",
    "Can you call me back when you get this message? It is about the car.",
    "The train to the coast leaves at seven, so we should pack our bags tonight.",
]
OTHER_TEXTS = [
    "Rain is expected over the northern hills for most of the weekend.",
    "She opened the letter slowly, afraid of what it might say.",
    "Turn left at the bakery and the museum is the second building on the right.",
    "Our team won the match in the last minute with a lucky goal.",
]
FLITE_VOICES = ["kal", "awb", "rms", "slt"]

# name -> ffmpeg output arguments (and the file extension); what members and Discord do.
TRANSFORMS: dict[str, tuple[list[str], str]] = {
    "wav (as made)": ([], "wav"),
    "mp3 128 kbps": (["-c:a", "libmp3lame", "-b:a", "128k"], "mp3"),
    "mp3 32 kbps": (["-c:a", "libmp3lame", "-b:a", "32k"], "mp3"),
    "opus 32 kbps (Discord voice message)": (["-c:a", "libopus", "-b:a", "32k"], "ogg"),
    "opus 16 kbps": (["-c:a", "libopus", "-b:a", "16k"], "ogg"),
    "middle 2.5 s excerpt, opus 32 kbps": (
        ["-ss", "0.8", "-t", "2.5", "-c:a", "libopus", "-b:a", "32k"],
        "ogg",
    ),
    "middle 3 s excerpt, opus 32 kbps": (
        ["-ss", "0.5", "-t", "3.0", "-c:a", "libopus", "-b:a", "32k"],
        "ogg",
    ),
    "speed x0.92 (pitch+tempo), mp3": (
        ["-af", "asetrate={rate_092},aresample={rate}", "-c:a", "libmp3lame"],
        "mp3",
    ),
    "speed x1.08 (pitch+tempo), mp3": (
        ["-af", "asetrate={rate_108},aresample={rate}", "-c:a", "libmp3lame"],
        "mp3",
    ),
    "speed x1.15 (pitch+tempo), mp3": (
        ["-af", "asetrate={rate_115},aresample={rate}", "-c:a", "libmp3lame"],
        "mp3",
    ),
    "pitch +1 semitone (tempo kept), opus": (
        ["-af", "rubberband=pitch=1.0595", "-c:a", "libopus", "-b:a", "32k"],
        "ogg",
    ),
    "pitch -1 semitone (tempo kept), opus": (
        ["-af", "rubberband=pitch=0.9439", "-c:a", "libopus", "-b:a", "32k"],
        "ogg",
    ),
    "pitch +2 semitones (tempo kept), opus": (
        ["-af", "rubberband=pitch=1.1225", "-c:a", "libopus", "-b:a", "32k"],
        "ogg",
    ),
    "pitch -3 semitones (tempo kept), opus": (
        ["-af", "rubberband=pitch=0.8409", "-c:a", "libopus", "-b:a", "32k"],
        "ogg",
    ),
    "pitch +4 semitones (tempo kept), opus": (
        ["-af", "rubberband=pitch=1.2599", "-c:a", "libopus", "-b:a", "32k"],
        "ogg",
    ),
    "speed x1.30 (pitch+tempo), mp3": (
        ["-af", "asetrate={rate_130},aresample={rate}", "-c:a", "libmp3lame"],
        "mp3",
    ),
    "tempo x1.1 (pitch kept), opus": (
        ["-af", "atempo=1.1", "-c:a", "libopus", "-b:a", "32k"],
        "ogg",
    ),
    "tempo x0.8 (pitch kept), opus": (
        ["-af", "atempo=0.8", "-c:a", "libopus", "-b:a", "32k"],
        "ogg",
    ),
    "under music-like noise at 5 dB SNR, opus": (
        [
            "-filter_complex",
            "anoisesrc=color=pink:amplitude=0.08:sample_rate={rate}[n];[0:a][n]amix=inputs=2:duration=first:normalize=0",
            "-c:a",
            "libopus",
            "-b:a",
            "32k",
        ],
        "ogg",
    ),
}


def ffmpeg(src: Path, dst: Path, args: list[str]) -> None:
    subprocess.run(
        [ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), *args, str(dst)],
        check=True,
        capture_output=True,
    )


def wav_file(audio: np.ndarray, rate: int, path: Path) -> Path:
    ints = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(rate)
        fh.writeframes(ints.tobytes())
    return path


def trace(path: Path, stored: dict[str, fp.Fingerprint]) -> dict[str, Any]:
    """Decode ``path`` as the engine does (confined) and compare it with every stored one."""
    audio = decode(path, fp.FINGERPRINT_RATE, MAX_TRACE_SECONDS)
    variants = fp.query_variants(audio, fp.FINGERPRINT_RATE)
    if len(variants[0]) < fp.MIN_OVERLAP:
        return {"refused": True, "seconds": len(audio) / fp.FINGERPRINT_RATE, "matches": []}
    scored = []
    for name, fingerprint in stored.items():
        best = fp.best_alignment(variants, fingerprint)
        scored.append((best.score, name, best.matched))
    scored.sort(reverse=True)
    return {
        "refused": False,
        "seconds": len(audio) / fp.FINGERPRINT_RATE,
        "best_score": round(scored[0][0], 4),
        "matches": [name for _, name, ok in scored if ok],
    }


def windows(audio: np.ndarray, rate: int, seconds: float = 5.0) -> list[np.ndarray]:
    n = int(seconds * rate)
    if len(audio) <= n:
        return [audio]
    return [audio[i : i + n] for i in range(0, len(audio) - n + 1, n // 2)]


def negatives(directory: Path) -> dict[str, list[Path]]:
    """Speech not made here, by source, as files."""
    rate = 16000
    out: dict[str, list[Path]] = {"librivox": [], "sphinx": [], "alsa": [], "flite": []}
    # The LibriVox reader: whole files, and the files joined and cut into 3 s windows.
    reader = []
    for path in sorted((SPHINX / "librivox").glob("*.wav")):
        out["librivox"].append(path)
        reader.append(decode(path, rate))
    for i, piece in enumerate(windows(np.concatenate(reader), rate, 3.0)):
        out["librivox"].append(wav_file(piece, rate, directory / f"librivox-{i}.wav"))
    for path in sorted(SPHINX.glob("*.raw")):
        raw = np.frombuffer(path.read_bytes(), "<i2").astype(np.float32) / 32768
        out["sphinx"].append(wav_file(raw, rate, directory / f"sphinx-{path.stem}.wav"))
    # The ALSA voice says one or two words a file: joined, then cut into windows.
    alsa = []
    for path in sorted(ALSA.glob("*.wav")):
        if path.stem != "Noise":
            alsa.append(decode(path, rate))
            alsa.append(np.zeros(rate // 4, np.float32))
    for i, piece in enumerate(windows(np.concatenate(alsa), rate)):
        out["alsa"].append(wav_file(piece, rate, directory / f"alsa-{i}.wav"))
    for voice in FLITE_VOICES:
        for i, text in enumerate(TEXTS + OTHER_TEXTS):
            path = directory / f"flite-{voice}-{i}.wav"
            subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True)
            out["flite"].append(path)
    return out


def main() -> None:
    started = time.perf_counter()
    settings = VoiceSettings()
    backend = CpuReferenceBackend(settings)
    rate = backend.sample_rate
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpu": platform.processor()},
        "method": "Chromaprint (ffmpeg chromaprint muxer, algorithm 1), "
        f"speech at half speed, {len(fp.query_plan())} guesses per clip (speed "
        f"{fp.RATE_STEP}^-{fp.RATE_STEPS}..{fp.RATE_STEP}^{fp.RATE_STEPS}, pitch-only from "
        f"{fp.RATE_STEP}^{fp.PITCH_FROM_STEP}, tempo {list(fp.TEMPOS)}), match >= "
        f"{fp.MATCH_THRESHOLD} equal bits over >= {fp.MIN_OVERLAP} items",
    }
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        stored: dict[str, fp.Fingerprint] = {}
        made: dict[str, Path] = {}
        for voice, audio in make_speakers(backend).items():
            sample = load_sample(
                sample_file(audio, rate, directory, voice),
                sample_rate=rate,
                min_seconds=settings.min_sample_seconds,
                max_seconds=settings.max_sample_seconds,
                target_dbfs=settings.target_dbfs,
            )
            profile = backend.analyse(sample)
            for i, text in enumerate(TEXTS):
                speech = backend.synthesise(text, profile)
                name = f"{voice}-{i}"
                stored[name] = fp.fingerprint(speech.audio, speech.sample_rate)
                made[name] = wav_file(speech.audio, speech.sample_rate, directory / f"{name}.wav")
        results["generations"] = len(stored)
        results["generation_seconds"] = [
            round(len(decode(p, 16000)) / 16000, 2) for p in made.values()
        ]
        print(f"{len(stored)} generations stored ({time.perf_counter() - started:.0f} s)")

        fill = {
            "rate": str(rate),
            "rate_092": str(round(rate * 0.92)),
            "rate_108": str(round(rate * 1.08)),
            "rate_115": str(round(rate * 1.15)),
            "rate_130": str(round(rate * 1.30)),
        }
        detection: dict[str, Any] = {}
        for label, (args, ext) in TRANSFORMS.items():
            found = top1 = refused = 0
            scores = []
            for name, src in made.items():
                dst = directory / f"q-{name}.{ext}"
                ffmpeg(src, dst, [a.format(**fill) for a in args])
                answer = trace(dst, stored)
                refused += answer["refused"]
                found += name in answer["matches"]
                top1 += bool(answer["matches"]) and answer["matches"][0] == name
                scores.append(answer.get("best_score", 0.0))
            n = len(made)
            detection[label] = {
                "tpr": round(found / n, 3),
                "top1": round(top1 / n, 3),
                "refused_too_short": refused,
                "clips": n,
                "median_best_score": round(float(np.median(scores)), 3),
            }
            print(f"{label:45s} TPR {found}/{n}  top-1 {top1}/{n}")
        results["detection"] = detection

        false_positives: dict[str, Any] = {}
        all_neg = fp_count = refused_total = 0
        for source, paths in negatives(directory).items():
            hits = refused = 0
            best = []
            for path in paths:
                answer = trace(path, stored)
                refused += answer["refused"]
                hits += bool(answer["matches"])
                best.append(answer.get("best_score", 0.0))
            traced = len(paths) - refused
            false_positives[source] = {
                "clips": len(paths),
                "refused_too_short": refused,
                "false_positives": hits,
                "max_best_score": round(max(best), 3),
            }
            all_neg += traced
            fp_count += hits
            refused_total += refused
            print(f"negatives {source:10s} {hits} false positive(s) of {traced} traced")
        results["false_positives"] = false_positives
        results["fpr"] = round(fp_count / max(all_neg, 1), 4)
        results["negatives_traced"] = all_neg
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "trace.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"FPR {fp_count}/{all_neg}; wrote {RESULTS / 'trace.json'}")


if __name__ == "__main__":
    main()
