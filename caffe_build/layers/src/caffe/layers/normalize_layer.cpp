// hypersphere reproduction: happynear-fork "Normalize" (see fork-layers.md).
#include <cmath>
#include <string>
#include <vector>

#include "caffe/layers/normalize_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void NormalizeLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const NormalizeParameter& p = this->layer_param_.normalize_param();
  const std::string& t = p.normalize_type();
  CHECK(t == "L2" || t == "L1") << "Normalize layer " << this->layer_param_.name()
      << ": normalize_type must be \"L2\" or \"L1\", got \"" << t << "\"";
  l1_ = (t == "L1");
  bp_norm_ = p.bp_norm();
}

template <typename Dtype>
void NormalizeLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  CHECK_LE(bottom[0]->num_axes(), 4) << "Normalize layer " << this->layer_param_.name()
      << ": bottom of " << bottom[0]->num_axes() << " axes; Normalize takes at most 4";
  // Like the fork, the tops are 4-D (num, channels, height, width): an N x C bottom gives N x C x 1 x 1
  // and the norm N x 1 x 1 x 1.
  const Blob<Dtype>& b = *bottom[0];
  top[0]->Reshape(b.num(), b.channels(), b.height(), b.width());
  vector<int> norm_shape(4);
  norm_shape[0] = b.num();
  norm_shape[1] = 1;
  norm_shape[2] = b.height();
  norm_shape[3] = b.width();
  norm_.Reshape(norm_shape);
  if (top.size() == 2) top[1]->Reshape(norm_shape);
}

template <typename Dtype>
void NormalizeLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const Dtype* x = bottom[0]->cpu_data();
  Dtype* y = top[0]->mutable_cpu_data();
  Dtype* norm = top.size() == 2 ? top[1]->mutable_cpu_data() : norm_.mutable_cpu_data();
  const int num = bottom[0]->num();
  const int channels = bottom[0]->channels();
  const int spatial = bottom[0]->height() * bottom[0]->width();
  for (int n = 0; n < num; ++n) {
    for (int s = 0; s < spatial; ++s) {
      const int base = n * channels * spatial + s;
      Dtype acc = Dtype(0);
      for (int c = 0; c < channels; ++c) {
        const Dtype v = x[base + c * spatial];
        acc += l1_ ? std::fabs(v) : v * v;
      }
      acc += Dtype(1e-6);
      const Dtype nv = l1_ ? acc : std::sqrt(acc);
      norm[n * spatial + s] = nv;
      for (int c = 0; c < channels; ++c) {
        y[base + c * spatial] = x[base + c * spatial] / nv;
      }
    }
  }
}

template <typename Dtype>
void NormalizeLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) return;
  const Dtype* y = top[0]->cpu_data();
  const Dtype* dy = top[0]->cpu_diff();
  const Dtype* norm = top.size() == 2 ? top[1]->cpu_data() : norm_.cpu_data();
  const Dtype* dnorm = (bp_norm_ && top.size() == 2) ? top[1]->cpu_diff() : NULL;
  Dtype* dx = bottom[0]->mutable_cpu_diff();
  const int num = bottom[0]->num();
  const int channels = bottom[0]->channels();
  const int spatial = bottom[0]->height() * bottom[0]->width();
  for (int n = 0; n < num; ++n) {
    for (int s = 0; s < spatial; ++s) {
      const int base = n * channels * spatial + s;
      Dtype a = Dtype(0);
      for (int c = 0; c < channels; ++c) a += y[base + c * spatial] * dy[base + c * spatial];
      const Dtype nv = norm[n * spatial + s];
      const Dtype dn = dnorm ? dnorm[n * spatial + s] : Dtype(0);
      for (int c = 0; c < channels; ++c) {
        const int k = base + c * spatial;
        // L1 uses sign(x) = sign(y) (norm > 0), which also keeps in-place use correct.
        const Dtype dir = l1_ ? static_cast<Dtype>((Dtype(0) < y[k]) - (y[k] < Dtype(0)))
                              : y[k];
        Dtype g = (dy[k] - dir * a) / nv;
        if (dnorm) g += dn * dir;
        dx[k] = g;
      }
    }
  }
}

#ifdef CPU_ONLY
STUB_GPU(NormalizeLayer);
#else
template <typename Dtype>
void NormalizeLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  Forward_cpu(bottom, top);
}
template <typename Dtype>
void NormalizeLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  Backward_cpu(top, propagate_down, bottom);
}
#endif

INSTANTIATE_CLASS(NormalizeLayer);
REGISTER_LAYER_CLASS(Normalize);

}  // namespace caffe
