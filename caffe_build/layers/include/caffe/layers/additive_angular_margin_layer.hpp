// hypersphere reproduction: "AdditiveAngularMargin" -- OUR EXTENSION (in neither 2017 fork):
// ArcFace / AAM-Softmax's additive angular margin on cosines, additive_angular_margin_param (field 8301).
// Same semantics as caffe_torch/layers/margin.py (AdditiveAngularMargin).
#ifndef CAFFE_ADDITIVE_ANGULAR_MARGIN_LAYER_HPP_
#define CAFFE_ADDITIVE_ANGULAR_MARGIN_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {

/**
 * Bottoms: cosines (N x C) and labels (N); one top (may be in place). TRAIN: the target cosine c
 * becomes cos(theta + m) = c cos m - sqrt(max(1 - c^2, 1e-12)) sin m where c > cos(pi - m), else
 * c - m sin m (easy_margin: cos(theta + m) where c > 0, else c). TEST: identity. Backward: the exact
 * derivative of that forward (identity off the target).
 */
template <typename Dtype>
class AdditiveAngularMarginLayer : public Layer<Dtype> {
 public:
  explicit AdditiveAngularMarginLayer(const LayerParameter& param) : Layer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "AdditiveAngularMargin"; }
  virtual inline int ExactNumBottomBlobs() const { return 2; }
  virtual inline int ExactNumTopBlobs() const { return 1; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  float margin_;
  bool easy_margin_;
  Blob<Dtype> dphi_;   // N: d(top target) / d(bottom target) of the last TRAIN forward
};

}  // namespace caffe

#endif  // CAFFE_ADDITIVE_ANGULAR_MARGIN_LAYER_HPP_
