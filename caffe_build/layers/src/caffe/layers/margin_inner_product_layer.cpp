// hypersphere reproduction: A-Softmax "MarginInnerProduct" (SphereFace fork semantics, see
// fork-layers.md). Forward: W rows renormalised in place (no epsilon); target logit
// (||x|| psi(c) + lambda x.w_y) / (1 + lambda). Backward: the fork's rescaled gradient.
#include <algorithm>
#include <cmath>
#include <vector>

#include "caffe/filler.hpp"
#include "caffe/layers/margin_inner_product_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

namespace {

template <typename Dtype>
inline Dtype sgn(Dtype v) {
  return static_cast<Dtype>((Dtype(0) < v) - (v < Dtype(0)));
}

// psi(c) of the margin type and the pair (cw, cx) such that the exact derivative of
// ||x|| psi(c) with respect to x is cw * w + cx * x (before the fork's rescaling).
template <typename Dtype>
inline void margin_terms(MarginInnerProductParameter_MarginType type, Dtype c,
    Dtype x_norm, Dtype* psi, Dtype* cw, Dtype* cx) {
  const Dtype s0 = sgn(c);
  const Dtype c2 = c * c;
  switch (type) {
  case MarginInnerProductParameter_MarginType_DOUBLE:
    // psi = 2 s0 c^2 - 1
    *psi = Dtype(2) * s0 * c2 - Dtype(1);
    *cw = Dtype(4) * s0 * c;
    *cx = Dtype(1) / (-x_norm) * (Dtype(2) * s0 * c2 + Dtype(1));
    break;
  case MarginInnerProductParameter_MarginType_TRIPLE: {
    const Dtype c3 = c2 * c;
    const Dtype s1 = sgn(std::fabs(c) - Dtype(0.5));
    const Dtype s2 = s0 * (Dtype(1) + s1) - Dtype(2);
    *psi = s1 * (Dtype(4) * c3 - Dtype(3) * c) + s2;
    *cw = s1 * (Dtype(12) * c2 - Dtype(3));
    *cx = Dtype(1) / (-x_norm) * (Dtype(8) * s1 * c3 - s2);
    break;
  }
  case MarginInnerProductParameter_MarginType_QUADRUPLE: {
    const Dtype c3 = c2 * c;
    const Dtype c4 = c2 * c2;
    const Dtype s3 = s0 * sgn(Dtype(2) * c2 - Dtype(1));
    const Dtype s4 = Dtype(2) * s0 + s3 - Dtype(3);
    *psi = s3 * (Dtype(8) * c4 - Dtype(8) * c2 + Dtype(1)) + s4;
    *cw = s3 * (Dtype(32) * c3 - Dtype(16) * c);
    *cx = Dtype(1) / (-x_norm) *
        (s3 * (Dtype(24) * c4 - Dtype(8) * c2 - Dtype(1)) - s4);
    break;
  }
  default:
    LOG(FATAL) << "MarginInnerProduct: unexpected margin type " << type;
  }
}

}  // namespace

template <typename Dtype>
const MarginInnerProductParameter&
MarginInnerProductLayer<Dtype>::margin_param() const {
  if (!this->layer_param_.has_margin_inner_product_param() &&
      this->layer_param_.has_margin_inner_product_param_happynear()) {
    return this->layer_param_.margin_inner_product_param_happynear();
  }
  return this->layer_param_.margin_inner_product_param();
}

template <typename Dtype>
void MarginInnerProductLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const MarginInnerProductParameter& p = margin_param();
  CHECK(!p.exact_gradient())
      << "MarginInnerProduct layer " << this->layer_param_.name()
      << ": exact_gradient (a caffe_torch extension) is not implemented in this "
         "C++ build; use --engine torch or remove the field";
  CHECK_GT(p.num_output(), 0) << "MarginInnerProduct layer "
      << this->layer_param_.name() << ": num_output must be set";
  N_ = p.num_output();
  type_ = p.type();
  iter_ = static_cast<Dtype>(p.iteration());
  lambda_ = Dtype(0);
  const int axis = bottom[0]->CanonicalAxisIndex(p.axis());
  K_ = bottom[0]->count(axis);
  if (this->blobs_.size() > 0) {
    LOG(INFO) << "Skipping parameter initialization";
  } else {
    this->blobs_.resize(1);
    vector<int> weight_shape(2);
    weight_shape[0] = N_;
    weight_shape[1] = K_;
    this->blobs_[0].reset(new Blob<Dtype>(weight_shape));
    shared_ptr<Filler<Dtype> > weight_filler(GetFiller<Dtype>(p.weight_filler()));
    weight_filler->Fill(this->blobs_[0].get());
  }
  this->param_propagate_down_.resize(this->blobs_.size(), true);
}

template <typename Dtype>
void MarginInnerProductLayer<Dtype>::Reshape(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const int axis = bottom[0]->CanonicalAxisIndex(margin_param().axis());
  CHECK_EQ(K_, bottom[0]->count(axis))
      << "MarginInnerProduct layer " << this->layer_param_.name()
      << ": input size incompatible with the weights";
  M_ = bottom[0]->count(0, axis);
  CHECK_EQ(bottom[1]->count(), M_) << "MarginInnerProduct layer "
      << this->layer_param_.name() << ": one label per sample expected";
  vector<int> top_shape = bottom[0]->shape();
  top_shape.resize(axis + 1);
  top_shape[axis] = N_;
  top[0]->Reshape(top_shape);
  if (top.size() == 2) {
    vector<int> lambda_shape(1, 1);
    top[1]->Reshape(lambda_shape);
  }
  vector<int> m_shape(1, M_);
  x_norm_.Reshape(m_shape);
  cos_t_.Reshape(m_shape);
}

template <typename Dtype>
void MarginInnerProductLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const MarginInnerProductParameter& p = margin_param();
  // The counter advances at the START of every forward (TRAIN or TEST).
  iter_ += Dtype(1);
  lambda_ = static_cast<Dtype>(p.base()) *
      std::pow(Dtype(1) + static_cast<Dtype>(p.gamma()) * iter_,
               -static_cast<Dtype>(p.power()));
  lambda_ = std::max(lambda_, static_cast<Dtype>(p.lambda_min()));
  if (top.size() == 2) top[1]->mutable_cpu_data()[0] = lambda_;

  // Renormalise every weight row in place, without epsilon.
  Dtype* w = this->blobs_[0]->mutable_cpu_data();
  for (int j = 0; j < N_; ++j) {
    const Dtype inv = Dtype(1) / std::sqrt(caffe_cpu_dot(K_, w + j * K_, w + j * K_));
    caffe_scal(K_, inv, w + j * K_);
  }

  const Dtype* x = bottom[0]->cpu_data();
  const Dtype* label = bottom[1]->cpu_data();
  const Dtype* weight = this->blobs_[0]->cpu_data();
  Dtype* top_data = top[0]->mutable_cpu_data();
  Dtype* x_norm = x_norm_.mutable_cpu_data();
  Dtype* cos_t = cos_t_.mutable_cpu_data();
  for (int i = 0; i < M_; ++i) {
    x_norm[i] = std::sqrt(caffe_cpu_dot(K_, x + i * K_, x + i * K_));
  }
  // Plain inner product x W^T.
  caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasTrans, M_, N_, K_, Dtype(1), x, weight,
      Dtype(0), top_data);
  for (int i = 0; i < M_; ++i) {
    const int y = static_cast<int>(label[i]);
    CHECK_GE(y, 0) << "MarginInnerProduct layer " << this->layer_param_.name()
        << ": label " << y << " out of range";
    CHECK_LT(y, N_) << "MarginInnerProduct layer " << this->layer_param_.name()
        << ": label " << y << " out of range (num_output " << N_ << ")";
    const Dtype xw = top_data[i * N_ + y];
    cos_t[i] = xw / x_norm[i];
    if (type_ == MarginInnerProductParameter_MarginType_SINGLE) continue;
    Dtype psi, cw, cx;
    margin_terms(type_, cos_t[i], x_norm[i], &psi, &cw, &cx);
    top_data[i * N_ + y] = (x_norm[i] * psi + lambda_ * xw) / (Dtype(1) + lambda_);
  }
}

template <typename Dtype>
void MarginInnerProductLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  const Dtype* top_diff = top[0]->cpu_diff();
  const Dtype* x = bottom[0]->cpu_data();
  const Dtype* label = bottom[1]->cpu_data();
  const Dtype* weight = this->blobs_[0]->cpu_data();

  if (this->param_propagate_down_[0]) {
    // dW += dF^T x with the normalised W: margin and normalisation ignored.
    caffe_cpu_gemm<Dtype>(CblasTrans, CblasNoTrans, N_, K_, M_, Dtype(1), top_diff, x,
        Dtype(1), this->blobs_[0]->mutable_cpu_diff());
  }
  if (!propagate_down[0]) return;
  Dtype* bottom_diff = bottom[0]->mutable_cpu_diff();
  if (type_ == MarginInnerProductParameter_MarginType_SINGLE) {
    caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasNoTrans, M_, K_, N_, Dtype(1), top_diff,
        weight, Dtype(0), bottom_diff);
    return;
  }
  const Dtype* x_norm = x_norm_.cpu_data();
  const Dtype* cos_t = cos_t_.cpu_data();
  const Dtype inv1 = Dtype(1) / (Dtype(1) + lambda_);
  caffe_set(M_ * K_, Dtype(0), bottom_diff);
  for (int i = 0; i < M_; ++i) {
    const int y = static_cast<int>(label[i]);
    Dtype* dx = bottom_diff + i * K_;
    for (int j = 0; j < N_; ++j) {
      const Dtype g = top_diff[i * N_ + j];
      if (j != y) {
        caffe_axpy(K_, g * inv1, weight + j * K_, dx);
      } else {
        Dtype psi, cw, cx;
        margin_terms(type_, cos_t[i], x_norm[i], &psi, &cw, &cx);
        const Dtype nrm = std::sqrt(cw * cw + cx * cx);
        caffe_axpy(K_, g * inv1 * (cw / nrm), weight + j * K_, dx);
        caffe_axpy(K_, g * inv1 * (cx / nrm), x + i * K_, dx);
      }
    }
  }
  // + lambda / (1 + lambda) * dF W over all columns.
  caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasNoTrans, M_, K_, N_, lambda_ * inv1,
      top_diff, weight, Dtype(1), bottom_diff);
}

#ifdef CPU_ONLY
STUB_GPU(MarginInnerProductLayer);
#else
template <typename Dtype>
void MarginInnerProductLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  Forward_cpu(bottom, top);
}
template <typename Dtype>
void MarginInnerProductLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  Backward_cpu(top, propagate_down, bottom);
}
#endif

INSTANTIATE_CLASS(MarginInnerProductLayer);
REGISTER_LAYER_CLASS(MarginInnerProduct);

}  // namespace caffe
