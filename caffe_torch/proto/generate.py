"""Regenerate caffe_pb2.py from caffe.proto with the protoc bundled in grpcio-tools.

    python -m caffe_torch.proto.generate          # writes caffe_pb2.py beside this file
    python -m caffe_torch.proto.generate --check  # exits 1 if caffe_pb2.py is stale
"""

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def generate(out_dir: Path) -> Path:
    from grpc_tools import protoc  # imported here: only needed to regenerate

    # Compiled from the repository root, so the file registers in protobuf's descriptor pool as
    # "caffe_torch/proto/caffe.proto": a pycaffe's own "caffe.proto" can then be loaded in the same process.
    root = HERE.parent.parent
    rc = protoc.main(["protoc", f"-I{root}", f"--python_out={out_dir}", str(HERE / "caffe.proto")])
    if rc != 0:
        raise RuntimeError(f"protoc failed on {HERE / 'caffe.proto'} (exit {rc})")
    return out_dir / "caffe_torch" / "proto" / "caffe_pb2.py"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that caffe_pb2.py is up to date")
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = generate(Path(tmp)).read_text()
        if fresh != (HERE / "caffe_pb2.py").read_text():
            print("caffe_pb2.py is stale: run python -m caffe_torch.proto.generate", file=sys.stderr)
            return 1
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        (HERE / "caffe_pb2.py").write_text(generate(Path(tmp)).read_text())
    print(HERE / "caffe_pb2.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
