"""Fixtures shared by the test files: the tiny synthetic corpus the end-to-end tests' tiny nets train on
(test_e2e.py, test_train_safety.py, test_bad_input.py), a copy of it that a test may damage, one torch thread
for a test that compares runs bit for bit; and torch's thread count put back after every test, so that no test
depends on which tests ran before it in the same process."""

import shutil

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """torch on one thread during the test (the float32 sums of its kernels are ordered by the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
