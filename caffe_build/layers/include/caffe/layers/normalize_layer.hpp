// hypersphere reproduction: "Normalize" layer of the happynear (AM-Softmax) fork, configured by
// normalize_param (LayerParameter field 214). It replaces the SSD Normalize layer of the sdist.
#ifndef CAFFE_NORMALIZE_LAYER_HPP_
#define CAFFE_NORMALIZE_LAYER_HPP_

#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {

/**
 * Normalises over channels, per sample and spatial position: L2 (norm = sqrt(sum x^2 + 1e-6))
 * or L1 (norm = sum |x| + 1e-6). Tops are 4-D like the fork's (N x C x H x W); optional second
 * top: the norm (N x 1 x H x W). No parameters.
 */
template <typename Dtype>
class NormalizeLayer : public Layer<Dtype> {
 public:
  explicit NormalizeLayer(const LayerParameter& param) : Layer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "Normalize"; }
  virtual inline int ExactNumBottomBlobs() const { return 1; }
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

  bool l1_;            // normalize_type "L1" (else "L2")
  bool bp_norm_;
  Blob<Dtype> norm_;   // used when there is no second top
};

}  // namespace caffe

#endif  // CAFFE_NORMALIZE_LAYER_HPP_
