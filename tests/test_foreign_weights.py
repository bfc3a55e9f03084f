"""Evaluating weights not trained here (issue 24): a .caffemodel and a net prototxt in folders of their own, no
run directory and no labels.json. test_identification.py numbers the classes as training does (the list's
speakers in sorted order, in the mode whose speaker count is the classifier's size); a classifier that fits
neither mode is one line, exit status 1. test_verification.py needs no labels at all."""

import json

import pytest
from test_e2e import FRAMES, SOFTMAX_HEAD, SPEAKERS, TEST_SPEAKERS, TRUNK

import test_identification
import test_verification
from speaker.cli import EXIT_ERROR


def foreign_weights(tmp_path, classes: int, seed: int = 5):
    """A net prototxt and a .caffemodel with `classes` outputs, written by plain pycaffe calls in two unrelated
    folders (as a colleague's weights would arrive): returns (net path, weights path)."""
    import caffe_torch as caffe

    nets, weights = tmp_path / "nets", tmp_path / "downloads"
    nets.mkdir()
    weights.mkdir()
    net = nets / "resnet.prototxt"
    net.write_text(TRUNK.format(frames=FRAMES, pooled=FRAMES // 2) + SOFTMAX_HEAD.format(classes=classes))
    caffe.set_random_seed(seed)
    caffe.Net(str(net), caffe.TEST).save(str(weights / "theirs.caffemodel"))
    return net, weights / "theirs.caffemodel"


def iden_args(net, weights, corpus, out, *extra):
    return ["--net", str(net), "--weights", str(weights), "--data-root", str(corpus), "--crops", "2", "--gpu",
            "-1", "--out", str(out), "--no-progress", *extra]


@pytest.mark.parametrize("classes, mode, subset", [(SPEAKERS, "identification", "test"),
                                                    (SPEAKERS - TEST_SPEAKERS, "verification", "val")])
def test_identification_of_foreign_weights_numbers_classes_as_training_does(corpus, tmp_path, classes, mode,
                                                                            subset):
    net, weights = foreign_weights(tmp_path, classes)
    out = tmp_path / "derived"
    assert test_identification.main(iden_args(net, weights, corpus, out)) == 0
    derived = json.loads((out / "identification.json").read_text())
    assert (derived["mode"], derived["subset"], derived["labels"]) == (mode, subset, None)


    # the same weights with a labels JSON written from the list by hand (its speakers in sorted order; in
    # verification mode without vox1_meta.csv's test speakers) give the same figures on the same utterances
    listed = sorted({line.split()[1].split("/")[0] for line in (corpus / "iden_split.txt").read_text().splitlines()})
    meta = [row.split("\t") for row in (corpus / "vox1_meta.csv").read_text().splitlines()[1:]]
    held_out = {row[0] for row in meta if row[-1].strip() == "test"}
    assert len(held_out) == TEST_SPEAKERS
    speakers = listed if mode == "identification" else [k for k in listed if k not in held_out]
    assert len(speakers) == classes
    saved = tmp_path / "labels.json"
    saved.write_text(json.dumps({"mode": mode, "speakers": speakers, "test_speakers": sorted(held_out)}))
    out2 = tmp_path / "with_json"
    assert test_identification.main(iden_args(net, weights, corpus, out2, "--labels", str(saved))) == 0
    explicit = json.loads((out2 / "identification.json").read_text())
    assert (explicit["top1"], explicit["top5"], explicit["n"]) == (derived["top1"], derived["top5"], derived["n"])
    split = "3" if subset == "test" else "2"
    assert derived["n"] == sum(line.split()[0] == split and line.split()[1].split("/")[0] in speakers
                               for line in (corpus / "iden_split.txt").read_text().splitlines())


def test_identification_of_a_classifier_that_fits_no_mode_is_one_line(corpus, tmp_path, capsys):
    net, weights = foreign_weights(tmp_path, SPEAKERS + 1)
    out = tmp_path / "out"
    assert test_identification.main(iden_args(net, weights, corpus, out)) == EXIT_ERROR == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("test_identification.py: error: "), err
    assert f"has {SPEAKERS + 1} classes" in err[0] and f"{SPEAKERS} speakers in identification mode" in err[0]
    assert f"{SPEAKERS - TEST_SPEAKERS} speakers in verification mode" in err[0] and "--labels" in err[0]
    assert not (out / "identification.json").exists()
    # --mode names the one mode to check
    assert test_identification.main(iden_args(net, weights, corpus, out, "--mode", "verification")) == 1
    line = capsys.readouterr().err.strip()
    assert f"has {SPEAKERS - TEST_SPEAKERS} speakers in verification mode: give" in line


def test_verification_of_foreign_weights(corpus, tmp_path):
    net, weights = foreign_weights(tmp_path, SPEAKERS - TEST_SPEAKERS)
    out = tmp_path / "veri"
    assert test_verification.main(["--net", str(net), "--weights", str(weights), "--data-root", str(corpus),
                                   "--crops", "2", "--gpu", "-1", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "verification.json").read_text())
    assert 0 <= res["trials"]["eer"] <= 1 and res["trials"]["n"] > 0
