""".m4a (AAC, VoxCeleb2's format) through PyAV: decoded samples equal ffmpeg's own float -> int16 conversion, the
header length equals the decoded length, and every unusable file (wrong rate, stereo, corrupt, truncated, empty)
is one AudioError naming it, from the header check (pre-flight) and from decoding alike."""

import fractions

import av
import numpy as np
import pytest

from voxdata import AudioError, read_wav, scan_audio, wav_info
from voxdata.lists import read_iden_split, read_trials
from voxdata.m4a import write_m4a
from voxdata.synth import synth_utterance


@pytest.fixture(scope="module")
def speech():
    return synth_utterance(0, 1, 0, 0, min_dur=1.0, max_dur=1.2)      # int16, 1-1.2 s


def ffmpeg_s16(path) -> np.ndarray:
    """Reference decode: ffmpeg's resampler converts the decoder's float samples to s16 itself."""
    import gc

    out = []
    with av.open(str(path)) as c:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        for frame in c.decode(c.streams.audio[0]):
            for f in resampler.resample(frame):
                out.append(f.to_ndarray().reshape(-1))
        for f in resampler.resample(None):
            out.append(f.to_ndarray().reshape(-1))
    del resampler, c
    gc.collect()     # its filter graph owns a thread pool: freed here, not by the GC of a process forked later
    return np.concatenate(out)


def test_decode_equals_ffmpegs_conversion_and_the_header_length(tmp_path, speech):
    path = tmp_path / "a.m4a"
    write_m4a(path, speech)
    x = read_wav(path)
    assert x.dtype == np.int16
    # PyAV's decoder returns the last AAC frame whole (1,024 samples); its packet's duration says how many of
    # them are audio, which is where we cut: the input's length
    reference = ffmpeg_s16(path)
    assert len(x) == len(speech) == wav_info(path) and len(reference) == 1024 * -(-len(speech) // 1024)
    np.testing.assert_array_equal(x, reference[: len(x)])
    # the encoder's 1,024 priming samples are cut by the edit list: the decoded audio lines up with the input
    # (AAC is lossy: the residual is small, not zero), and a shift by one AAC frame would not
    n = min(len(x), len(speech))
    err = np.mean((x[:n].astype(float) - speech[:n]) ** 2)
    shifted = np.mean((x[1024:n].astype(float) - speech[: n - 1024]) ** 2)
    assert err < 0.05 * np.mean(speech.astype(float) ** 2) < shifted
    np.testing.assert_array_equal(read_wav(path, start=100, stop=900), x[100:900])


def _write(path, samples, rate=16000, layout="mono"):
    channels = 2 if layout == "stereo" else 1
    data = np.ascontiguousarray(np.tile(samples[None], (channels, 1)).T.reshape(1, -1))   # packed s16
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=rate, layout=layout)
        f = av.AudioFrame.from_ndarray(data, format="s16", layout=layout)
        f.sample_rate, f.pts, f.time_base = rate, 0, fractions.Fraction(1, rate)
        for p in [*s.encode(f), *s.encode(None)]:
            c.mux(p)


def test_unusable_files_are_one_line_naming_the_file(tmp_path, speech):
    good = tmp_path / "good.m4a"
    write_m4a(good, speech)
    data = good.read_bytes()
    cases = {
        "rate.m4a": ("sample rate 22050 Hz, expected 16000 Hz", lambda p: _write(p, speech, rate=22050)),
        "stereo.m4a": ("2 channels, expected mono", lambda p: _write(p, speech, layout="stereo")),
        "garbage.m4a": ("unreadable audio file", lambda p: p.write_bytes(b"not an mp4 file" * 50)),
        "empty.m4a": ("unreadable audio file", lambda p: p.write_bytes(b"")),
        "half.m4a": ("unreadable audio file", lambda p: p.write_bytes(data[: len(data) // 2])),
    }
    # moov first (as `-movflags faststart` writes): a cut file still opens, its last packets are missing
    fast = tmp_path / "fast.m4a"
    with av.open(str(fast), "w", format="mp4", options={"movflags": "faststart"}) as c:
        s = c.add_stream("aac", rate=16000, layout="mono")
        f = av.AudioFrame.from_ndarray(speech[None].copy(), format="s16", layout="mono")
        f.sample_rate, f.pts, f.time_base = 16000, 0, fractions.Fraction(1, 16000)
        for p in [*s.encode(f), *s.encode(None)]:
            c.mux(p)
    assert wav_info(fast) > 0
    fdata = fast.read_bytes()
    cases["cut.m4a"] = ("truncated", lambda p: p.write_bytes(fdata[: len(fdata) - 40]))
    paths = []
    for name, (expected, make) in cases.items():
        p = tmp_path / name
        make(p)
        paths.append(str(p))
        for fn in (wav_info, read_wav):
            with pytest.raises(AudioError) as e:
                fn(p)
            msg = str(e.value)
            assert msg.startswith(f"{p}: ") and expected in msg and "\n" not in msg, (name, msg)
    result = scan_audio([str(good), *paths])
    assert result.good == [str(good)] and len(result.bad) == len(paths)
    assert all(b.startswith(p + ": ") for b, p in zip(result.bad, paths))


def test_lists_name_m4a_files(tmp_path):
    (tmp_path / "iden_split.txt").write_text("1 id00001/abcdefghijk/00001.m4a\n3 id00001/abcdefghijk/00002.m4a\n")
    splits = read_iden_split(tmp_path / "iden_split.txt", check_files=False)
    assert splits.train.paths == ["id00001/abcdefghijk/00001.m4a"]
    # VoxCeleb2's test set unpacks to aac/: trial paths are relative to it when there is no wav/
    (tmp_path / "aac").mkdir()
    (tmp_path / "veri_test.txt").write_text("1 id00001/abcdefghijk/00001.m4a id00001/abcdefghijk/00002.m4a\n")
    assert read_trials(tmp_path / "veri_test.txt").wav_dir == str(tmp_path / "aac")
    (tmp_path / "wav").mkdir()
    assert read_trials(tmp_path / "veri_test.txt").wav_dir == str(tmp_path / "wav")
