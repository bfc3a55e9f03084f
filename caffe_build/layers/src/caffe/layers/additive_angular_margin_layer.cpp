// hypersphere reproduction: "AdditiveAngularMargin", our extension (see the header).
#include <cmath>
#include <vector>

#include "caffe/layers/additive_angular_margin_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void AdditiveAngularMarginLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const AdditiveAngularMarginParameter& p = this->layer_param_.additive_angular_margin_param();
  margin_ = p.margin();
  easy_margin_ = p.easy_margin();
  CHECK(margin_ >= 0 && margin_ < M_PI / 2) << "AdditiveAngularMargin layer "
      << this->layer_param_.name() << ": margin " << margin_ << " must lie in [0, pi/2)";
}

template <typename Dtype>
void AdditiveAngularMarginLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  CHECK_EQ(bottom[1]->count(), bottom[0]->shape(0)) << "AdditiveAngularMargin layer "
      << this->layer_param_.name() << ": one label per sample expected";
  if (top[0] != bottom[0]) top[0]->ReshapeLike(*bottom[0]);
  dphi_.Reshape(vector<int>(1, bottom[0]->shape(0)));
}

template <typename Dtype>
void AdditiveAngularMarginLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const int count = bottom[0]->count();
  const int num = bottom[0]->shape(0);
  const int dim = count / num;
  if (top[0] != bottom[0]) {
    caffe_copy(count, bottom[0]->cpu_data(), top[0]->mutable_cpu_data());
  }
  if (this->phase_ != TRAIN) return;
  const double m = margin_;
  const Dtype cos_m = static_cast<Dtype>(std::cos(m));
  const Dtype sin_m = static_cast<Dtype>(std::sin(m));
  const Dtype threshold = easy_margin_ ? Dtype(0) : static_cast<Dtype>(std::cos(M_PI - m));
  const Dtype m_sin_m = static_cast<Dtype>(m * std::sin(m));
  const Dtype* label = bottom[1]->cpu_data();
  Dtype* y = top[0]->mutable_cpu_data();
  Dtype* dphi = dphi_.mutable_cpu_data();
  for (int i = 0; i < num; ++i) {
    const int t = static_cast<int>(label[i]);
    CHECK_GE(t, 0) << "AdditiveAngularMargin layer " << this->layer_param_.name()
        << ": label " << t << " out of range";
    CHECK_LT(t, dim) << "AdditiveAngularMargin layer " << this->layer_param_.name()
        << ": label " << t << " out of range (" << dim << " classes)";
    const Dtype c = y[i * dim + t];
    if (c > threshold) {
      const Dtype one_minus = Dtype(1) - c * c;
      const bool clamped = !(one_minus > Dtype(1e-12));
      const Dtype sine = std::sqrt(clamped ? Dtype(1e-12) : one_minus);
      y[i * dim + t] = c * cos_m - sine * sin_m;
      dphi[i] = clamped ? cos_m : cos_m + sin_m * c / sine;
    } else {
      y[i * dim + t] = easy_margin_ ? c : c - m_sin_m;
      dphi[i] = Dtype(1);
    }
  }
}

template <typename Dtype>
void AdditiveAngularMarginLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) return;
  const int count = bottom[0]->count();
  const int num = bottom[0]->shape(0);
  const int dim = count / num;
  Dtype* dx = bottom[0]->mutable_cpu_diff();
  if (top[0] != bottom[0]) caffe_copy(count, top[0]->cpu_diff(), dx);
  if (this->phase_ != TRAIN) return;
  const Dtype* label = bottom[1]->cpu_data();
  const Dtype* dphi = dphi_.cpu_data();
  for (int i = 0; i < num; ++i) {
    const int t = static_cast<int>(label[i]);
    dx[i * dim + t] *= dphi[i];
  }
}

#ifdef CPU_ONLY
STUB_GPU(AdditiveAngularMarginLayer);
#else
template <typename Dtype>
void AdditiveAngularMarginLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  Forward_cpu(bottom, top);
}
template <typename Dtype>
void AdditiveAngularMarginLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  Backward_cpu(top, propagate_down, bottom);
}
#endif

INSTANTIATE_CLASS(AdditiveAngularMarginLayer);
REGISTER_LAYER_CLASS(AdditiveAngularMargin);

}  // namespace caffe
