#!/usr/bin/env python3
"""Train without augmentation (one random crop, no wrap, no reversal): python trainNoAug.py --solver S [...]
See `python trainNoAug.py --help`; the loop lives in speaker/train.py."""

import sys


def main(argv=None) -> int:
    from speaker.train import main as train_main

    return train_main(argv, augment=False)


if __name__ == "__main__":
    sys.exit(main())
