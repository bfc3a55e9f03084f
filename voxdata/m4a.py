"""AAC in MP4 (`.m4a`, VoxCeleb2's format) read and written with PyAV (its wheels bundle ffmpeg's libraries).

The same rules as for wav files (voxdata.audio): 16 kHz, mono, not empty, not truncated, one AudioError naming
the file otherwise. `m4a_info` reads the header only (the container's index) plus the index entries of the
last ~2,000 samples, so a file cut off during a download is found without decoding it: its last packet is
missing or shorter than the index says (ffmpeg flags it corrupt). `read_m4a` decodes the whole file; AAC
decodes to float samples in [-1, 1], which become int16 by the same rule as float wavs (x 32768, rounded,
clipped: voxdata.audio._float_to_int16).

The sample count m4a_info returns is where the last packet ends (its timestamp plus duration): for files with
an edit list (ffmpeg writes one: the encoder's 1,024 priming samples are cut, and the padding of the last
frame) the decoder returns exactly that many samples; the header's own duration (movie time scale, ms) may be
a few samples longer. The audio cache keeps what decoding returns either way.
"""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np

from .audio import SAMPLE_RATE, AudioError, _float_to_int16

EXTENSIONS = (".m4a", ".mp4", ".aac")
_TAIL = 2048                    # samples before the end whose index entries m4a_info reads
_HEADER_TICK = 0.002            # s: the coarsest movie time scale we allow for (ffmpeg writes 1 ms, QuickTime 1/600 s)


def is_m4a(path) -> bool:
    return os.fspath(path).lower().endswith(EXTENSIONS)


def _open(path):
    import av

    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise AudioError(f"{path}: unreadable audio file ({_reason(e)})") from None
    if not container.streams.audio:
        container.close()
        raise AudioError(f"{path}: no audio stream")
    return container


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)       # FFmpegError's strerror: the reason without the path


def _samples(stream, t) -> int:
    """A time in the stream's time base as a sample count."""
    return int(round(t * stream.time_base * stream.sample_rate))


def _stream_samples(stream) -> int:
    """The stream's length in samples from its header (duration in its time base)."""
    if stream.duration is None or stream.time_base is None:
        return 0
    return _samples(stream, stream.duration)


def _check(path: str, stream, sample_rate: int) -> int:
    if stream.sample_rate != sample_rate:
        raise AudioError(f"{path}: sample rate {stream.sample_rate} Hz, expected {sample_rate} Hz")
    channels = stream.codec_context.channels
    if channels != 1:
        raise AudioError(f"{path}: {channels} channels, expected mono")
    n = _stream_samples(stream)
    if n <= 0:
        raise AudioError(f"{path}: empty recording (0 samples)")
    return n


def m4a_info(path, sample_rate: int = SAMPLE_RATE) -> int:
    """Check an m4a file's header (rate, channels, length) and that its last packets are all present, without
    decoding; returns its length in samples. Raises AudioError naming the file."""
    import av

    path = os.fspath(path)
    with _open(path) as container:
        stream = container.streams.audio[0]
        n = _check(path, stream, sample_rate)
        end = None
        try:
            start = max(0, stream.duration - int(_TAIL / (stream.time_base * stream.sample_rate)))
            container.seek(start, stream=stream, any_frame=True, backward=True)
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                if packet.is_corrupt:
                    raise AudioError(f"{path}: truncated: the packet at byte {packet.pos} is cut off")
                end = packet.pts + packet.duration if packet.pts is not None else end
        except av.error.FFmpegError as e:
            raise AudioError(f"{path}: unreadable audio file ({_reason(e)})") from None
        # The header's duration is in the movie's time scale (ffmpeg: 1 ms), so it may exceed the audio by up
        # to one tick; the last packet's end is exact (the decoded length).
        slack = int(np.ceil(_HEADER_TICK * stream.sample_rate))
        if end is None or _samples(stream, end) < n - slack:
            raise AudioError(f"{path}: truncated: the packets end before the {n} samples its header declares")
        return _samples(stream, end)      # inside: PyAV >= 18.1.1 refuses a closed container's stream.time_base


def read_m4a(path, sample_rate: int = SAMPLE_RATE, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Decode a 16 kHz mono m4a file to int16 samples, shape (n,) (start/stop: a slice, in samples, of the
    decoded recording). Raises AudioError naming the file (unreadable, wrong rate, not mono, empty, corrupt)."""
    import av

    path = os.fspath(path)
    with _open(path) as container:
        stream = container.streams.audio[0]
        _check(path, stream, sample_rate)
        parts, first, end = [], None, None
        try:
            for packet in container.demux(stream):
                if packet.size and packet.is_corrupt:
                    raise AudioError(f"{path}: truncated: the packet at byte {packet.pos} is cut off")
                if packet.size and packet.pts is not None:
                    end = max(end or 0, _samples(stream, packet.pts + packet.duration))
                for frame in packet.decode():
                    if first is None and frame.pts is not None:
                        first = _samples(stream, frame.pts)
                    parts.append(frame.to_ndarray().reshape(-1))     # fltp mono: (1, samples) -> (samples,)
        except av.error.FFmpegError as e:
            raise AudioError(f"{path}: corrupt audio data ({_reason(e)})") from None
    if not parts:
        raise AudioError(f"{path}: empty recording (0 samples)")
    data = np.concatenate(parts)
    if end is not None:
        data = data[: end - (first or 0)]     # the decoder returns the last frame whole; its packet says how much
    if data.dtype.kind == "f":
        data = _float_to_int16(data, path)
    else:                        # an integer sample format (not AAC's): ffmpeg's s16 as is
        data = data.astype(np.int16)
    return data[start:stop]


def write_m4a(path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE, bit_rate: int = 64000) -> None:
    """Encode int16 (n,) samples as AAC-LC in an MP4 container (ffmpeg's native encoder), creating parent
    folders. The first frame's timestamp is 0, so the encoder's priming samples get negative timestamps and
    the muxer writes the edit list that makes decoders drop them (as the ffmpeg command line does)."""
    import av

    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    x = np.ascontiguousarray(np.asarray(samples, dtype=np.int16).reshape(1, -1))
    with av.open(path, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        stream.bit_rate = bit_rate
        frame = av.AudioFrame.from_ndarray(x, format="s16", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = 0
        frame.time_base = Fraction(1, sample_rate)
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
