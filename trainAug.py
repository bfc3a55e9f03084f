#!/usr/bin/env python3
"""Train with the paper's augmentation (repetition + time reversal): python trainAug.py --solver S [...]
See `python trainAug.py --help`; the loop lives in speaker/train.py."""

import sys


def main(argv=None) -> int:
    from speaker.train import main as train_main

    return train_main(argv, augment=True)


if __name__ == "__main__":
    sys.exit(main())
