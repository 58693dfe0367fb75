"""A speech's samples as Discord's Opus packets, encoded in this process as they arrive.

One :class:`OpusStream` per speech: a resampler to 48 kHz that keeps its state between
blocks, and discord.py's own libopus encoder (``discord.opus.Encoder``, what its player
uses for PCM sources). Blocks of any size join without a seam, and a block's first packet
is ready within milliseconds of its samples. The alternative, the bundled ffmpeg run once
per block, costs a process start per block (50-150 ms on 2 busy cores, before the first
packet) and restarts its resampler and encoder at every block.

It needs the libopus shared library (Debian's ``libopus0``, which the deployment image's
ffmpeg package brings) and numpy: :meth:`OpusStream.open` gives ``None`` without them,
and the caller falls back to ffmpeg.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import discord

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

log = logging.getLogger(__name__)

# Discord's Opus: 48 kHz stereo, 20 ms frames.
OUT_RATE = discord.opus.Encoder.SAMPLING_RATE
FRAME_SAMPLES = discord.opus.Encoder.SAMPLES_PER_FRAME
# The resampler's windowed sinc reaches this many input samples to each side.
HALF_WIDTH = 16
# Its pass band, as a share of the input's Nyquist frequency.
CUTOFF = 0.95
# Samples are resampled and encoded this many input samples at a time, so that the first
# packet of a long block is given out before the rest is encoded.
SLICE_SECONDS = 0.06


class Resampler:
    """16-bit mono samples at ``rate`` to float samples at ``out_rate`` (``rate`` at most
    ``out_rate``), block by block, with the same output whatever the blocks' sizes: the
    input a windowed sinc still needs (:data:`HALF_WIDTH` samples) waits for the next block
    or :meth:`flush`."""

    def __init__(self, rate: int, out_rate: int = OUT_RATE, half_width: int = HALF_WIDTH) -> None:
        import numpy as np

        if not 0 < rate <= out_rate:
            raise ValueError(f"cannot resample {rate} Hz to {out_rate} Hz")
        g = math.gcd(rate, out_rate)
        self.rate = rate
        self.up, self.down = out_rate // g, rate // g
        self.width = half_width
        # One row per output phase: the weights of the 2 * width input samples around it.
        phase = np.arange(self.up, dtype=np.float64)[:, None] / self.up
        tau = phase + half_width - 1 - np.arange(2 * half_width, dtype=np.float64)[None, :]
        table = CUTOFF * np.sinc(CUTOFF * tau) * (0.5 + 0.5 * np.cos(np.pi * tau / half_width))
        self._table = table / table.sum(axis=1, keepdims=True)
        # Input not yet used up, from global index ``_first`` (zeros before the start).
        self._x = np.zeros(half_width, dtype=np.float64)
        self._first = -half_width
        self._seen = 0  # input samples pushed
        self._next = 0  # the next output sample's index

    def push(self, samples: NDArray[np.float64]) -> NDArray[np.float64]:
        """The output that ``samples`` (appended to what came before) complete."""
        import numpy as np

        if self.up == self.down:
            return samples
        self._x = np.concatenate([self._x, samples])
        self._seen += len(samples)
        # The last output whose window lies inside what came: base + width <= seen - 1.
        last_base = self._seen - 1 - self.width
        end = ((last_base + 1) * self.up - 1) // self.down + 1 if last_base >= 0 else 0
        return self._outputs(end)

    def flush(self) -> NDArray[np.float64]:
        """The rest of the output (the input's end followed by silence)."""
        import numpy as np

        if self.up == self.down:
            return np.zeros(0, dtype=np.float64)
        self._x = np.concatenate([self._x, np.zeros(2 * self.width, dtype=np.float64)])
        end = -(-self._seen * self.up // self.down)  # outputs before the input's end
        return self._outputs(end)

    def _outputs(self, end: int) -> NDArray[np.float64]:
        import numpy as np

        if end <= self._next:
            return np.zeros(0, dtype=np.float64)
        n = np.arange(self._next, end, dtype=np.int64)
        base = n * self.down // self.up
        taps = base[:, None] - self.width + 1 + np.arange(2 * self.width)[None, :]
        out = (self._table[n * self.down % self.up] * self._x[taps - self._first]).sum(axis=1)
        self._next = end
        keep = int(end * self.down // self.up) - self.width + 1  # the next output's first tap
        if keep > self._first:
            self._x = self._x[keep - self._first :]
            self._first = keep
        return np.asarray(out, dtype=np.float64)


class OpusStream:
    """The Opus packets of one speech, its 16-bit mono blocks given in order to
    :meth:`encode` and its end to :meth:`flush` (blocking: call them in a thread)."""

    def __init__(self, encoder: Any) -> None:
        import numpy as np

        self._encoder = encoder
        self._resampler: Resampler | None = None
        self._pending = np.zeros(0, dtype=np.int16)  # stereo samples short of a frame

    @classmethod
    def open(cls) -> OpusStream | None:
        """A new stream, or ``None`` where libopus or numpy is missing."""
        try:
            import numpy  # noqa: F401

            encoder = discord.opus.Encoder()
        except (ImportError, discord.opus.OpusNotLoaded, OSError) as exc:
            log.debug("no in-process Opus (%s): speech is encoded with ffmpeg", exc)
            return None
        return cls(encoder)

    def encode(self, pcm: bytes, sample_rate: int) -> Iterator[bytes]:
        """The packets that ``pcm`` (16-bit mono at ``sample_rate``) completes, each given
        out as soon as it is encoded."""
        import numpy as np

        if self._resampler is None:
            self._resampler = Resampler(sample_rate)
        elif self._resampler.rate != sample_rate:
            raise ValueError("a speech's sample rate cannot change midway")
        samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2")
        step = max(1, int(SLICE_SECONDS * sample_rate))
        for start in range(0, len(samples), step):
            part = samples[start : start + step].astype(np.float64)
            yield from self._frames(self._resampler.push(part))

    def flush(self) -> list[bytes]:
        """The last packets: what the resampler held back, the last frame filled with
        silence."""
        import numpy as np

        packets = [] if self._resampler is None else list(self._frames(self._resampler.flush()))
        if len(self._pending):
            frame = np.zeros(2 * FRAME_SAMPLES, dtype=np.int16)
            frame[: len(self._pending)] = self._pending
            self._pending = np.zeros(0, dtype=np.int16)
            packets.append(self._encoder.encode(frame.tobytes(), FRAME_SAMPLES))
        return packets

    def _frames(self, out: NDArray[np.float64]) -> Iterator[bytes]:
        import numpy as np

        mono = np.clip(np.round(out), -32768, 32767).astype(np.int16)
        stereo = np.concatenate([self._pending, np.repeat(mono, 2)])
        whole = len(stereo) - len(stereo) % (2 * FRAME_SAMPLES)
        self._pending = stereo[whole:]
        for start in range(0, whole, 2 * FRAME_SAMPLES):
            frame = stereo[start : start + 2 * FRAME_SAMPLES]
            yield self._encoder.encode(frame.astype("<i2").tobytes(), FRAME_SAMPLES)
