"""Fixtures shared by the end-to-end test files (test_e2e.py, test_train_safety.py, test_bad_input.py): the
tiny synthetic corpus their tiny nets train on, and a copy of it that a test may damage."""

import shutil

import pytest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """6 speakers (2 of them verification test speakers: test_e2e.SPEAKERS, TEST_SPEAKERS), 6 utterances of
    1-1.5 s each, 30 trials."""
    from test_e2e import SPEAKERS, TEST_SPEAKERS

    from voxdata import make_corpus

    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root, speakers=SPEAKERS, utterances=6, test_speakers=TEST_SPEAKERS, seed=3, min_videos=3,
                max_videos=3, min_dur=1.0, max_dur=1.5, trials=30, workers=1, progress=False)
    return root


@pytest.fixture
def own_corpus(corpus, tmp_path):
    """A copy of the corpus that a test may damage."""
    return shutil.copytree(corpus, tmp_path / "corpus")
