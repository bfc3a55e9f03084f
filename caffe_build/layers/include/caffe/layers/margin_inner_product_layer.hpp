// hypersphere reproduction: A-Softmax "MarginInnerProduct" layer (SphereFace fork semantics).
// Written for this project from the fork-layers notes (fork-layers.md); see
// caffe_build/README.md. CPU only; the GPU entry points are stubs under CPU_ONLY.
#ifndef CAFFE_MARGIN_INNER_PRODUCT_LAYER_HPP_
#define CAFFE_MARGIN_INNER_PRODUCT_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {

/**
 * Bottoms: x (M x K after flattening from `axis`) and label (M). Tops: logits (M x N) and,
 * optionally, the current lambda (shape 1). One learnable blob W (N x K), renormalised row-wise
 * in place at every forward. The backward is the fork's (not the exact derivative).
 */
template <typename Dtype>
class MarginInnerProductLayer : public Layer<Dtype> {
 public:
  explicit MarginInnerProductLayer(const LayerParameter& param)
      : Layer<Dtype>(param), iter_(0), lambda_(0) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "MarginInnerProduct"; }
  virtual inline int ExactNumBottomBlobs() const { return 2; }
  virtual inline int MinTopBlobs() const { return 1; }
  virtual inline int MaxTopBlobs() const { return 2; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  // The message in use: margin_inner_product_param (147), else the happynear copy (232).
  const MarginInnerProductParameter& margin_param() const;

  int M_;
  int K_;
  int N_;
  MarginInnerProductParameter_MarginType type_;
  Dtype iter_;     // per-forward counter (starts at `iteration`, +1 at the start of each forward)
  Dtype lambda_;   // lambda of the last forward
  Blob<Dtype> x_norm_;     // M: ||x_i||
  Blob<Dtype> cos_t_;      // M: cos of the target column, cached for Backward
};

}  // namespace caffe

#endif  // CAFFE_MARGIN_INNER_PRODUCT_LAYER_HPP_
