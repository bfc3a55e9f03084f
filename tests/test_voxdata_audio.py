"""read_wav / wav_info on good and bad files: errors name the file."""

import numpy as np
import pytest
import soundfile as sf

from voxdata import AudioError, read_wav, wav_info


def _wav(path, data, rate=16000, subtype="PCM_16"):
    sf.write(path, data, rate, subtype=subtype)
    return path


def test_good_file(tmp_path):
    x = (np.arange(1000) % 200 - 100).astype(np.int16) * 50
    p = _wav(tmp_path / "ok.wav", x)
    y = read_wav(p)
    assert y.dtype == np.int16 and np.array_equal(y, x)
    assert wav_info(p) == 1000
    np.testing.assert_array_equal(read_wav(p, start=100, stop=250), x[100:250])


@pytest.mark.parametrize(
    "case, message",
    [
        ("rate", "sample rate 8000 Hz"),
        ("stereo", "2 channels"),
        ("empty", "empty"),
        ("truncated", "truncated"),
        ("not_wav", "unreadable"),
        ("zero_bytes", "unreadable"),
    ],
)
def test_bad_files(tmp_path, case, message):
    p = tmp_path / f"{case}.wav"
    if case == "rate":
        _wav(p, np.zeros(100, np.int16), rate=8000)
    elif case == "stereo":
        _wav(p, np.zeros((100, 2), np.int16))
    elif case == "empty":
        _wav(p, np.zeros(0, np.int16))
    elif case == "truncated":
        _wav(p, np.ones(1000, np.int16))
        p.write_bytes(p.read_bytes()[:-300])  # a cut-off download
    elif case == "not_wav":
        p.write_text("this is not audio\n" * 20)
    else:
        p.write_bytes(b"")
    with pytest.raises(AudioError, match=message) as err:
        read_wav(p)
    assert str(p) in str(err.value)
    assert isinstance(err.value, ValueError)
    with pytest.raises(AudioError, match=str(p).replace(".", r"\.")):
        wav_info(p)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="nope.wav"):
        read_wav(tmp_path / "nope.wav")


def test_scan_audio_counts_bad_files(tmp_path, caplog):
    from voxdata import scan_audio

    good = _wav(tmp_path / "a.wav", np.ones(10, np.int16))
    bad = _wav(tmp_path / "b.wav", np.ones(10, np.int16), rate=44100)
    with caplog.at_level("WARNING"):
        res = scan_audio([good, bad])
    assert res.good == [str(good)] and len(res.bad) == 1 and "b.wav" in res.bad[0] and "44100" in res.bad[0]
    assert "1 of 2" in caplog.text
