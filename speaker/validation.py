"""Validation during training: top-1/top-5 of a TEST net (sharing the train net's weights) on one seeded crop
per validation utterance, as the paper's validation curves."""

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("train")


class Validator:
    """The TEST net and the fixed crops; run(feed) -> (top1, top5)."""

    def __init__(self, caffe, net_file: Path, train_net, paths, labels, frames, seed, augment, fast=None):
        """`fast`: caffe_torch.fast.FastOptions for the TEST net (caffe_torch only), or None."""
        from voxdata import eval_crops

        from .evaluate import accuracy_input

        self.net = caffe.Net(str(net_file), caffe.TEST, **({} if fast is None else {"fast": fast}))
        self.net.share_with(train_net)
        self.labels = np.asarray(labels)
        self.scores_name = accuracy_input(self.net)
        self.crops = eval_crops(paths, n_crops=1, frames=frames, seed=seed + 7919, augment=augment)
        self.batch = self.net.blobs["data"].shape[0]

    def run(self, feed) -> tuple[float, float]:
        """feed(net, crops int16 (n, L), labels (n,)) fills the input blobs; returns (top-1, top-5)."""
        from .metrics import topk_accuracy

        scores = []
        pending = []
        for crops, _ in self.crops:
            pending.append(crops[0])
            if len(pending) == self.batch:
                scores.append(self._forward(pending, feed))
                pending = []
        if pending:
            scores.append(self._forward(pending, feed))
        s = np.concatenate(scores)
        return topk_accuracy(s, self.labels, 1), topk_accuracy(s, self.labels, min(5, s.shape[1]))

    def _forward(self, crops, feed) -> np.ndarray:
        import torch

        batch = torch.stack(crops)
        n = len(crops)
        if n != self.net.blobs["data"].shape[0]:
            self.net.blobs["data"].reshape(n, *self.net.blobs["data"].shape[1:])
            self.net.blobs["label"].reshape(n, *self.net.blobs["label"].shape[1:])
            self.net.reshape()
        feed(self.net, batch, torch.zeros(n, dtype=torch.int64))
        self.net.forward()
        return np.array(self.net.blobs[self.scores_name].data).reshape(n, -1)

    def log_run(self, feed, it: int) -> tuple[float, float]:
        """run() with Caffe's log lines for iteration `it`."""
        top1, top5 = self.run(feed)
        log.info("Iteration %d, Testing net (#0)", it)
        log.info("    Test net output #0: top1Accuracy = %.4f", top1)
        log.info("    Test net output #1: top5Accuracy = %.4f", top5)
        return top1, top5
