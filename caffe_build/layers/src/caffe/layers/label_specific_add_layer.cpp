// hypersphere reproduction: happynear-fork "LabelSpecificAdd" (see fork-layers.md).
#include <algorithm>
#include <cmath>
#include <vector>

#include "caffe/layers/label_specific_add_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void LabelSpecificAddLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const LabelSpecificAddParameter& p = this->layer_param_.label_specific_add_param();
  bias_ = p.bias();
  anneal_ = p.has_bias_base();
  bias_base_ = p.bias_base();
  bias_gamma_ = p.bias_gamma();
  bias_power_ = p.bias_power();
  bias_min_ = p.bias_min();
  bias_max_ = p.bias_max();
  iteration_ = static_cast<int>(p.iteration());
}

template <typename Dtype>
void LabelSpecificAddLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  CHECK_EQ(bottom[1]->count(), bottom[0]->shape(0)) << "LabelSpecificAdd layer "
      << this->layer_param_.name() << ": one label per sample expected";
  if (top[0] != bottom[0]) top[0]->ReshapeLike(*bottom[0]);
  if (top.size() == 2) top[1]->Reshape(vector<int>(1, 1));
}

template <typename Dtype>
void LabelSpecificAddLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const int count = bottom[0]->count();
  const int num = bottom[0]->shape(0);
  const int dim = count / num;
  if (top[0] != bottom[0]) {
    caffe_copy(count, bottom[0]->cpu_data(), top[0]->mutable_cpu_data());
  }
  // TEST: nothing is added (whatever transform_test says), no annealing step.
  if (this->phase_ != TRAIN) return;
  if (anneal_) {
    // Uses the counter before it is incremented: the first forward uses `iteration`.
    bias_ = bias_base_ + std::pow(Dtype(1) + bias_gamma_ * Dtype(iteration_), bias_power_)
        - Dtype(1);
    bias_ = std::min(std::max(bias_, bias_min_), bias_max_);
    ++iteration_;
  }
  if (top.size() == 2) top[1]->mutable_cpu_data()[0] = bias_;
  const Dtype* label = bottom[1]->cpu_data();
  Dtype* y = top[0]->mutable_cpu_data();
  for (int i = 0; i < num; ++i) {
    const int t = static_cast<int>(label[i]);
    CHECK_GE(t, 0) << "LabelSpecificAdd layer " << this->layer_param_.name()
        << ": label " << t << " out of range";
    CHECK_LT(t, dim) << "LabelSpecificAdd layer " << this->layer_param_.name()
        << ": label " << t << " out of range (" << dim << " classes)";
    if (y[i * dim + t] > -bias_) y[i * dim + t] += bias_;
  }
}

template <typename Dtype>
void LabelSpecificAddLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[0] && top[0] != bottom[0]) {
    caffe_copy(bottom[0]->count(), top[0]->cpu_diff(), bottom[0]->mutable_cpu_diff());
  }
}

#ifdef CPU_ONLY
STUB_GPU(LabelSpecificAddLayer);
#else
template <typename Dtype>
void LabelSpecificAddLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  Forward_cpu(bottom, top);
}
template <typename Dtype>
void LabelSpecificAddLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  Backward_cpu(top, propagate_down, bottom);
}
#endif

INSTANTIATE_CLASS(LabelSpecificAddLayer);
REGISTER_LAYER_CLASS(LabelSpecificAdd);

}  // namespace caffe

