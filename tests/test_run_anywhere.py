"""`python -m caffe_torch my_script.py` from any folder (issue 24): tools/setup.sh puts the repository on
.venv's import path (a .pth file), so after `source .venv/bin/activate` a pycaffe script in a folder of its own
runs on caffe_torch with no PYTHONPATH, as README and docs/pycaffe-scripts.md say."""

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ACTIVATE = ROOT / ".venv" / "bin" / "activate"


@pytest.mark.skipif(not ACTIVATE.is_file(), reason="no .venv here: tools/setup.sh makes it (CI runs it first)")
def test_pycaffe_script_in_another_folder_runs_on_caffe_torch_after_activating_the_venv(tmp_path):
    folder = tmp_path / "my project"
    folder.mkdir()
    (folder / "my_script.py").write_text(textwrap.dedent('''\
        import sys

        import caffe
        from caffe import layers as L

        n = caffe.NetSpec()
        n.data = L.Input(shape=dict(dim=[2, 3]))
        n.out = L.InnerProduct(n.data, num_output=int(sys.argv[1]), weight_filler=dict(type="constant", value=0.5))
        with open("net.prototxt", "w") as f:
            f.write(str(n.to_proto()))
        net = caffe.Net("net.prototxt", caffe.TEST)
        net.blobs["data"].data[...] = [[1, 2, 3], [0, 0, 4]]
        print(caffe.__file__, net.forward()["out"].tolist())
    '''))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = "/usr/bin:/bin"           # only the activation puts .venv's python first
    res = subprocess.run(["bash", "-c", f'source "{ACTIVATE}" && python -m caffe_torch my_script.py 2'],
                         cwd=folder, env=env, capture_output=True, text=True, timeout=1800)   # a hang guard only
    assert res.returncode == 0, res.stderr
    where, out = res.stdout.strip().split(" ", 1)
    assert Path(where) == ROOT / "caffe_torch" / "__init__.py"
    assert out == "[[3.0, 3.0], [2.0, 2.0]]"            # 0.5 * (1+2+3), 0.5 * 4; bias 0
    assert (folder / "net.prototxt").is_file()          # the script ran in its own folder
