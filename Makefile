# Top-level targets. (Only `caffe` so far; other targets are merged in by the lead.)

# Build real BVLC Caffe (pycaffe, CPU) with our C++ fork layers into third_party/caffe and make
# `import caffe` in .venv load it. Idempotent; see caffe_build/README.md.
.PHONY: caffe
caffe:
	bash caffe_build/build.sh
