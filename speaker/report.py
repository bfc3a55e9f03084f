"""The results table of a set of runs: identification top-1/top-5 and verification EER/minDCF side by side.

    python -m speaker.report NAME=RUN_DIR [NAME=RUN_DIR ...] [--out results.md]

Each RUN_DIR holds identification.json and/or verification.json (written by test_identification.py and
test_verification.py with --out RUN_DIR).
"""

import argparse
import json
import sys
from pathlib import Path


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def table(runs: list[tuple[str, Path]]) -> str:
    head = "| system | top-1 | top-5 | EER | minDCF(0.01) | minDCF(0.001) |"
    lines = [head, "|---|---|---|---|---|---|"]
    for name, run in runs:
        iden = _load(run / "identification.json") or {}
        veri = (_load(run / "verification.json") or {}).get("trials", {})

        def pct(v):
            return f"{100 * v:.2f} %" if v is not None else "-"

        def num(v):
            return f"{v:.4f}" if v is not None else "-"

        dcf = veri.get("min_dcf", {})
        lines.append(f"| {name} | {pct(iden.get('top1'))} | {pct(iden.get('top5'))} | {pct(veri.get('eer'))} | "
                     f"{num(dcf.get('0.01'))} | {num(dcf.get('0.001'))} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR")
    p.add_argument("--out", help="also write the table (markdown) to this file")
    args = p.parse_args(argv)
    runs = []
    for item in args.runs:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_dir():
            p.error(f"{item!r}: expected NAME=RUN_DIR with an existing directory")
        runs.append((name, Path(path)))
    text = table(runs)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
