# Convenience targets; each is a one-line wrapper around a script (the scripts are what README documents).

.PHONY: setup test demo caffe prototxt
setup:            ## create .venv and install requirements.txt
	bash tools/setup.sh
test:             ## ruff + the test suite (what CI runs)
	bash tools/test.sh
demo:             ## the whole demo on the synthetic corpus (writes demo/)
	bash tools/demo.sh
# Build real BVLC Caffe (pycaffe, CPU) with our C++ fork layers into third_party/caffe and make
# `import caffe` in .venv load it. Idempotent; see caffe_build/README.md.
caffe:
	bash caffe_build/build.sh
prototxt:         ## regenerate prototxt/ from tools/make_prototxt.py
	.venv/bin/python tools/make_prototxt.py
