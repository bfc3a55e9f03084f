#!/usr/bin/env python
"""Embed two 16 kHz mono wavs with an exported speaker embedder and print their cosine score.

    python examples/embed_onnx.py embedder.onnx a.wav b.wav

Needs only onnxruntime, numpy and soundfile (no PyTorch, no Caffe). The embedder comes from
`python export_embedder.py --run-dir RUN -o embedder.onnx`; its output is L2-normalised, so the cosine score is
a dot product. The higher the score, the likelier the two recordings are of one speaker; where to put the
threshold is what the verification EER/minDCF of the run tell (test_verification.py).
"""

import argparse
import sys

import numpy as np
import onnxruntime as ort
import soundfile as sf

SAMPLE_RATE = 16000


def read_wav(path: str) -> np.ndarray:
    """Mono 16 kHz samples as int16 values (VoxCeleb's format), shape (L,)."""
    x, rate = sf.read(path, dtype="int16", always_2d=True)
    if rate != SAMPLE_RATE or x.shape[1] != 1:
        raise ValueError(f"{path}: {rate} Hz, {x.shape[1]} channel(s); the embedder takes 16 kHz mono")
    return x[:, 0]


def embed(session: ort.InferenceSession, samples: np.ndarray) -> np.ndarray:
    """The (D,) embedding of one recording."""
    wave = session.get_inputs()[0]
    dtype = np.int16 if wave.type == "tensor(int16)" else np.float32
    return session.run(None, {wave.name: samples[None].astype(dtype)})[0][0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("embedder", help="the .onnx file from export_embedder.py")
    p.add_argument("wav", nargs=2, help="two 16 kHz mono wav files")
    args = p.parse_args(argv)
    try:
        session = ort.InferenceSession(args.embedder, providers=["CPUExecutionProvider"])
        a, b = (embed(session, read_wav(w)) for w in args.wav)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"embed_onnx.py: {exc}", file=sys.stderr)
        return 2
    print(f"cosine score {float(a @ b):.4f}  ({args.wav[0]} vs {args.wav[1]}, {a.size}-D embeddings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
