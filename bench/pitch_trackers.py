"""Pitch trackers side by side on the evaluation speakers, clean and degraded (issue 26, 2).

For each tracker, speaker and condition (bench/degrade.py): the median F0 of the voiced
frames relative to the speaker's clean consensus (the geometric mean of Harvest's and
pYIN's clean medians, the two trackers the engine does not build on), the share of
frames an octave or a fifth off a clean reference track (frames where clean Harvest and
clean pYIN agree within 10 %), and the CPU seconds each tracker takes per 30 s of audio.
Also the Piper base voice and the test speakers made from it (tests/engine/voice:
"low" is a 0.8x tape-speed copy, so its F0 is 0.8 of the base voice's, exactly).

Trackers: ``dio`` (DIO + StoneMask), ``dio_checked_v1`` (the octave check before this
change: each frame folded when the comb at the folded value was clearer and nearer the
centre), ``dio_checked`` (the engine now: each frame folded toward the guide, the Viterbi
path through the harmonic comb), ``harvest``, ``pyin`` (librosa), ``crepe_tiny`` and
``crepe_full`` (torchcrepe, only where importable and asked for with ``--crepe``).

    python bench/pitch_trackers.py [--seconds 12] [--crepe tiny]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import librosa
import numpy as np
from numpy.typing import NDArray

from bench import degrade
from bench.voice_quality import (
    RESULTS,
    MaterialMissing,
    all_speakers,
    pyin_compiled,
)
from engine.voice import world

RATE = 22050  # the CPU reference's rate: every sample is analysed at it
CONDITIONS = ("clean", "opus32", "phone", "noise10_reverb", "laptop")
Audio = NDArray[np.float32]
Track = NDArray[np.float64]
FRAME_S = world.FRAME_PERIOD_MS / 1000.0


def _legacy_checked(f0: Track, contrast: world.HarmonicContrast) -> Track:
    """The octave check as it was before the guide (engine/voice/world.py at main)."""
    centre = contrast.clear_centre()
    voiced = np.flatnonzero(f0 > 0)
    if centre is None or voiced.size == 0:
        return f0
    out = f0.copy()
    cols = np.minimum(
        np.round(voiced * FRAME_S / contrast.hop_s).astype(np.int64), len(contrast.values) - 1
    )
    values = f0[voiced]
    best = values.copy()
    best_score = contrast.at(cols, values)
    distance = np.abs(np.log(values / centre))
    for ratio in (2.0, 0.5, 1.5, 2.0 / 3.0):
        folded = values * ratio
        score = contrast.at(cols, folded)
        nearer = np.abs(np.log(folded / centre)) < distance
        take = nearer & (score > best_score + 0.15)
        best = np.where(take, folded, best)
        best_score = np.where(take, score, best_score)
        distance = np.where(take, np.abs(np.log(folded / centre)), distance)
    out[voiced] = best
    return out


def _dio(x: Audio) -> Track:
    return world.pitch(x, RATE)[0]


def _dio_checked_v1(x: Audio) -> Track:
    f0 = world.pitch(x, RATE)[0]
    return _legacy_checked(f0, world.harmonic_contrast(x.astype(np.float64), RATE))


def _dio_checked(x: Audio) -> Track:
    return world.pitch(x, RATE, octave_check=True)[0]


def _harvest(x: Audio) -> Track:
    return world.pitch(x, RATE, world.F0Tracker.HARVEST)[0]


def _on_grid(values: NDArray[Any], hop_s: float, frames: int) -> Track:
    """A track of ``hop_s`` frames on the 5 ms grid (nearest frame), 0 where unvoiced."""
    idx = np.minimum(
        np.round(np.arange(frames) * FRAME_S / hop_s).astype(np.int64), len(values) - 1
    )
    out = np.nan_to_num(np.asarray(values, dtype=np.float64)[idx], nan=0.0)
    return out


def _pyin(x: Audio) -> Track:
    pyin_compiled()
    y = librosa.resample(x, orig_sr=RATE, target_sr=16000)
    f0, voiced, _ = librosa.pyin(
        y, fmin=50.0, fmax=500.0, sr=16000, frame_length=1024, hop_length=160
    )
    return _on_grid(np.where(voiced, f0, 0.0), 0.01, world.frames_of(len(x), RATE))


def _crepe(model: str) -> Callable[[Audio], Track]:
    def track(x: Audio) -> Track:
        import torch
        import torchcrepe

        y = librosa.resample(x, orig_sr=RATE, target_sr=16000)
        with torch.inference_mode():
            f0, periodicity = torchcrepe.predict(
                torch.from_numpy(y)[None],
                16000,
                hop_length=160,
                fmin=50.0,
                fmax=550.0,
                model=model,
                batch_size=512,
                device="cpu",
                return_periodicity=True,
            )
        f0 = f0[0].numpy()
        voiced = periodicity[0].numpy() > 0.21
        return _on_grid(np.where(voiced, f0, 0.0), 0.01, world.frames_of(len(x), RATE))

    return track


TRACKERS: dict[str, Callable[[Audio], Track]] = {
    "dio": _dio,
    "dio_checked_v1": _dio_checked_v1,
    "dio_checked": _dio_checked,
    "harvest": _harvest,
    "pyin": _pyin,
}


def _median(track: Track) -> float:
    v = track[track > 0]
    return float(np.median(v)) if v.size else float("nan")


def piper_material(seconds: float) -> dict[str, Audio]:
    """The Piper base voice and the test speakers made from it (tests/engine/voice)."""
    from engine.voice.handlers import build_backend
    from engine.voice.settings import VoiceBackendName, VoiceSettings
    from tests.engine.voice.conftest import SAMPLE_TEXT

    backend = build_backend(VoiceSettings(backend=VoiceBackendName.CPU_REFERENCE))
    speech = backend.base_speech(SAMPLE_TEXT)  # type: ignore[attr-defined]
    base = librosa.resample(speech.audio, orig_sr=speech.sample_rate, target_sr=RATE)
    low = librosa.resample(base, orig_sr=RATE, target_sr=int(RATE / 0.8))
    n = int(seconds * RATE)
    return {"piper_base": base[:n], "piper_low": low[: int(n / 0.8)]}


def errors(track: Track, reference: Track) -> dict[str, float]:
    """Shares of the reference's frames the track holds voiced an octave, a fifth (or a
    twelfth) off, and more than 20 % off at all (gross pitch error)."""
    n = min(len(track), len(reference))
    both = (track[:n] > 0) & (reference[:n] > 0)
    if not both.any():
        return {"frames": 0}
    r = np.abs(np.log2(track[:n][both] / reference[:n][both]))
    return {
        "frames": int(both.sum()),
        "octave": round(float(np.mean((r > 0.8) & (r < 1.2))), 4),
        "fifth": round(float(np.mean(((r > 0.45) & (r < 0.75)) | ((r > 1.45) & (r < 1.75)))), 4),
        "gross": round(float(np.mean(r > math.log2(1.2))), 4),
    }


def markdown(body: dict[str, Any]) -> str:
    """The summary per tracker, then each clip's median F0 over the clean consensus."""
    summary, rows = body["summary"], body["rows"]
    trackers = list(summary)
    lines = [
        f"Clips of {body['seconds_per_clip']:.0f} s at {body['rate']} Hz. "
        "Ratio: the clip's median F0 "
        "over the speaker's clean consensus (Harvest and pYIN, clean). Frames: shares of the "
        "frames where clean Harvest and pYIN agree, read an octave / a fifth / >20 % off.",
        "",
        "| tracker | CPU s per 30 s | clips | off >15 % | octave or fifth | worst ratio | "
        "frames octave | frames fifth | frames >20 % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t, v in summary.items():
        lines.append(
            f"| {t} | {v['cpu_s_per_30s_median']} | {v['clips']} | {v['clips_off_15pct']} | "
            f"{v['clips_octave_or_fifth']} | {v['worst_ratio']} | {v['frames_octave']:.3f} | "
            f"{v['frames_fifth']:.3f} | {v['frames_gross']:.3f} |"
        )
    piper = body["piper_low_over_base_ratio_true_0.8"]
    lines += [
        "",
        'Piper base voice (Hz) and its 0.8x tape-speed copy (test_quality\'s "low"):',
        "",
        "| tracker | base | low | low / base (true 0.8) |",
        "|---|---|---|---|",
    ]
    for t, ratio in piper.items():
        hz = {
            r["speaker"]: r["median_hz"]
            for r in rows
            if r["tracker"] == t and r["speaker"].startswith("piper")
        }
        lines.append(f"| {t} | {hz.get('piper_base')} | {hz.get('piper_low')} | {ratio} |")
    lines += ["", "| speaker | condition | " + " | ".join(trackers) + " |"]
    lines.append("|---|---|" + "---|" * len(trackers))
    keys = dict.fromkeys((r["speaker"], r["condition"]) for r in rows)
    for speaker, condition in keys:
        cells = []
        for t in trackers:
            r = next(
                (
                    r
                    for r in rows
                    if (r["speaker"], r["condition"], r["tracker"]) == (speaker, condition, t)
                ),
                None,
            )
            cells.append("" if r is None else f"{r['median_hz']} ({r['ratio']:.2f})")
        lines.append(f"| {speaker} | {condition} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


PIPER = "piper_low_over_base_ratio_true_0.8"
PIPER_CLIPS = ("piper_base", "piper_low")


def summarise(
    rows: list[dict[str, Any]], cpu: dict[str, list[float]], trackers: list[str], seconds: float
) -> dict[str, Any]:
    """The result file's body: per tracker over the evaluation speakers' clips, the Piper
    ratio, and every row."""
    summary: dict[str, Any] = {}
    for tracker in trackers:
        mine = [r for r in rows if r["tracker"] == tracker and not r["speaker"].startswith("piper")]
        if not mine:
            continue
        ratios = [r["ratio"] for r in mine if not math.isnan(r["ratio"])]
        summary[tracker] = {
            "cpu_s_per_30s_median": round(statistics.median(cpu[tracker]), 2),
            "clips": len(mine),
            # The median F0 of a clip more than 15 % from the speaker's clean consensus.
            "clips_off_15pct": sum(abs(math.log(r)) > math.log(1.15) for r in ratios),
            "clips_octave_or_fifth": sum(abs(math.log2(r)) > 0.45 for r in ratios),
            "worst_ratio": max(ratios, key=lambda v: abs(math.log(v))),
            "frames_octave": round(statistics.fmean(r.get("octave", 0.0) for r in mine), 4),
            "frames_fifth": round(statistics.fmean(r.get("fifth", 0.0) for r in mine), 4),
            "frames_gross": round(statistics.fmean(r.get("gross", 0.0) for r in mine), 4),
        }
    piper = {
        t: round(
            next(r["median_hz"] for r in rows if r["speaker"] == "piper_low" and r["tracker"] == t)
            / next(
                r["median_hz"] for r in rows if r["speaker"] == "piper_base" and r["tracker"] == t
            ),
            3,
        )
        for t in trackers
        if all(any(r["speaker"] == p and r["tracker"] == t for r in rows) for p in PIPER_CLIPS)
    }
    return {
        "seconds_per_clip": seconds,
        "rate": RATE,
        "summary": summary,
        PIPER: piper,
        "rows": rows,
        "machine": {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]},
    }


def from_log(log: Path, seconds: float) -> dict[str, Any]:
    """A run cut short: its printed rows, and each fast tracker's CPU cost timed here on
    the first speaker's 12 s clip (CREPE's from the log's own clips is not known)."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    trackers = list(dict.fromkeys(r["tracker"] for r in rows))
    with tempfile.TemporaryDirectory() as tmp:
        spk = all_speakers(Path(tmp), only=["librivox"])[0]
    clip = librosa.resample(spk.clone, orig_sr=spk.sample_rate, target_sr=RATE)
    clip = clip[: int(12 * RATE)].astype(np.float32)
    cpu: dict[str, list[float]] = {}
    for t in trackers:
        if t in TRACKERS:
            start = time.process_time()
            TRACKERS[t](clip)
            cpu[t] = [(time.process_time() - start) / 12.0 * 30.0]
        else:
            cpu[t] = [float("nan")]
    return summarise(rows, cpu, trackers, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="audio per speaker")
    parser.add_argument("--speakers", default="librivox,sphinx,alsa,slt,rms,awb,allison,ve9qrp")
    parser.add_argument("--crepe", default="", help="comma-separated CREPE models: tiny,full")
    parser.add_argument(
        "--crepe-speakers",
        default="piper_base,piper_low,ve9qrp,librivox",
        help="CREPE is slow on this machine: only these speakers",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "pitch_trackers.json")
    parser.add_argument("--markdown", action="store_true", help="only re-render --out as .md")
    parser.add_argument("--from-log", type=Path, help="the rows a run printed (cut short)")
    args = parser.parse_args()
    if args.from_log:
        body = from_log(args.from_log, args.seconds)
        args.out.write_text(json.dumps(body, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(markdown(body))
        return
    if args.markdown:
        body = json.loads(args.out.read_text())
        args.out.with_suffix(".md").write_text(markdown(body))
        return
    warnings.simplefilter("ignore")
    trackers = dict(TRACKERS)
    for model in filter(None, args.crepe.split(",")):
        trackers[f"crepe_{model}"] = _crepe(model)
    crepe_only = set(args.crepe_speakers.split(","))

    material: dict[str, dict[str, Audio]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            speakers = all_speakers(Path(tmp), only=args.speakers.split(","))
        except MaterialMissing as exc:
            raise SystemExit(f"{exc} (make voice-data; TADA_VOICE_DEB_ROOT for the debs)") from exc
    for spk in speakers:
        clean = librosa.resample(spk.clone, orig_sr=spk.sample_rate, target_sr=RATE)
        clean = clean[: int(args.seconds * RATE)].astype(np.float32)
        material[spk.name] = {"clean": clean}
        for name in CONDITIONS[1:]:
            material[spk.name][name] = degrade.CONDITIONS[name](clean, RATE)
    for name, audio in piper_material(args.seconds).items():
        material[name] = {"clean": audio.astype(np.float32)}

    rows: list[dict[str, Any]] = []
    cpu: dict[str, list[float]] = {t: [] for t in trackers}
    for speaker, conditions in material.items():
        tracks: dict[tuple[str, str], Track] = {}
        for condition, audio in conditions.items():
            for tracker, fn in trackers.items():
                if tracker.startswith("crepe") and speaker not in crepe_only:
                    continue
                start = time.process_time()
                tracks[condition, tracker] = fn(audio)
                took = time.process_time() - start
                cpu[tracker].append(took / (len(audio) / RATE) * 30.0)
        consensus = math.exp(
            statistics.fmean(math.log(_median(tracks["clean", t])) for t in ("harvest", "pyin"))
        )
        h, p = tracks["clean", "harvest"], tracks["clean", "pyin"]
        n = min(len(h), len(p))
        agree = (
            (h[:n] > 0)
            & (p[:n] > 0)
            & (np.abs(np.log(np.maximum(h[:n], 1) / np.maximum(p[:n], 1))) < math.log(1.1))
        )
        reference = np.where(agree, np.sqrt(np.maximum(h[:n], 0) * np.maximum(p[:n], 0)), 0.0)
        for (condition, tracker), track in tracks.items():
            med = _median(track)
            row = {
                "speaker": speaker,
                "condition": condition,
                "tracker": tracker,
                "median_hz": round(med, 1),
                "consensus_hz": round(consensus, 1),
                "ratio": round(med / consensus, 3),
                "voiced": round(float(np.mean(track > 0)), 3),
                **errors(track, reference),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    body = summarise(rows, cpu, list(trackers), args.seconds)
    print(json.dumps({k: body[k] for k in ("summary", PIPER)}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(body, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(body))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
