// GDPA (Kunlun's generalized dot-product attention) on CPU over jagged query rows in place.
//
// out_i = scale * sum_j act(q_i . k_j) v_j over the T dense keys of the row's example (|i - j| <= window
// when a window is given), no softmax. One work item is one (example, head); its queries are taken in
// blocks of kQueryBlock rows, so the (rows x T) score tile stays in cache.
//
// Forward:  S = Q K^T, A = act(S), O = scale * A V.
// Backward: S and A are recomputed; dV = scale * A^T dO, dA = scale * dO V^T, dS = dA * act'(S),
//           dQ = dS K, dK = dS^T Q.

#include <torch/library.h>

#include "common.h"

namespace {

using namespace fxrec_native;

enum class Act { Gelu, Silu, Relu, Relu2, Raw };

Act parse(const std::string& name) {
  if (name == "gelu") return Act::Gelu;
  if (name == "silu") return Act::Silu;
  if (name == "relu") return Act::Relu;
  if (name == "relu2") return Act::Relu2;
  if (name == "raw") return Act::Raw;
  TORCH_CHECK(false, "unknown GDPA activation ", name);
}

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;


// a[j] = act(s[j]) for j in [lo, hi]
inline void activate(Act act, const float* s, float* a, int64_t lo, int64_t hi) {
  switch (act) {
    case Act::Gelu:
#pragma omp simd
      for (int64_t j = lo; j <= hi; ++j) a[j] = 0.5f * s[j] * (1.0f + std::erf(s[j] * kInvSqrt2));
      break;
    case Act::Silu:
#pragma omp simd
      for (int64_t j = lo; j <= hi; ++j) a[j] = s[j] / (1.0f + safe_exp(-s[j]));
      break;
    case Act::Relu:
#pragma omp simd
      for (int64_t j = lo; j <= hi; ++j) a[j] = std::max(s[j], 0.0f);
      break;
    case Act::Relu2:
#pragma omp simd
      for (int64_t j = lo; j <= hi; ++j) {
        const float r = std::max(s[j], 0.0f);
        a[j] = r * r;
      }
      break;
    case Act::Raw:
      if (a != s && hi >= lo) std::copy(s + lo, s + hi + 1, a + lo);
      break;
  }
}

// g[j] *= act'(s[j]) for j in [lo, hi]
inline void activate_backward(Act act, const float* s, float* g, int64_t lo, int64_t hi) {
  switch (act) {
    case Act::Gelu:
#pragma omp simd
      for (int64_t j = lo; j <= hi; ++j) {
        const float x = s[j];
        g[j] *= 0.5f * (1.0f + std::erf(x * kInvSqrt2)) + x * kInvSqrt2Pi * safe_exp(-0.5f * x * x);
      }
      break;
    case Act::Silu:
#pragma omp simd
      for (int64_t j = lo; j <= hi; ++j) {
        const float sig = 1.0f / (1.0f + safe_exp(-s[j]));
        g[j] *= sig * (1.0f + s[j] * (1.0f - sig));
      }
      break;
    case Act::Relu:
#pragma omp simd
      for (int64_t j = lo; j <= hi; ++j) g[j] = s[j] > 0.0f ? g[j] : 0.0f;
      break;
    case Act::Relu2:
#pragma omp simd
      for (int64_t j = lo; j <= hi; ++j) g[j] *= 2.0f * std::max(s[j], 0.0f);
      break;
    case Act::Raw:
      break;
  }
}

// the keys of example b: T rows each, as a jagged layout with offsets b * T
struct Work {
  int64_t lq, q_row, k_row;
};

inline Work work(const int64_t* q_off, int64_t keys, int64_t heads, int64_t item) {
  const int64_t b = item / heads, h = item % heads;
  return {q_off[b + 1] - q_off[b], q_off[b] * heads + h, b * keys * heads + h};
}

at::Tensor forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& offsets,
                   const std::string& activation, double scale, int64_t window) {
  check(q, "q", 3), check(k, "k", 4), check(v, "v", 4);
  const Act act = parse(activation);
  auto q_off = offsets.to(at::kLong).contiguous();
  const int64_t batch = q_off.numel() - 1, heads = q.size(1), dim = q.size(2);
  const int64_t keys = k.size(1), dim_v = v.size(3);
  TORCH_CHECK(k.size(0) == batch && v.size(0) == batch && v.size(1) == keys, "k, v must be (B, T, H, D)");
  auto out = at::empty({q.size(0), heads, dim_v}, q.options());
  const int64_t max_q = longest(q_off);
  const Mask mask{false, window};
  const int64_t* qo = q_off.data_ptr<int64_t>();
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t ldq = heads * dim, ldv = heads * dim_v;

  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    auto scratch = at::empty({std::max<int64_t>(1, std::min(max_q, kQueryBlock) * keys)}, q.options());
    float* s = scratch.data_ptr<float>();
    for (int64_t item = begin; item < end; ++item) {
      const Work w = work(qo, keys, heads, item);
      const float *qb = qp + w.q_row * dim, *kb = kp + w.k_row * dim, *vb = vp + w.k_row * dim_v;
      float* ob = op + w.q_row * dim_v;
      for (int64_t i0 = 0; i0 < w.lq; i0 += kQueryBlock) {
        const int64_t rows = std::min(kQueryBlock, w.lq - i0);
        int64_t k0, k1;
        mask.block(i0, rows, keys, k0, k1);
        const int64_t width = k1 - k0;
        gemm('T', 'N', width, rows, dim, 1.0f, kb + k0 * ldq, ldq, qb + i0 * ldq, ldq, 0.0f, s, width);
        for (int64_t r = 0; r < rows; ++r) {
          float* row = s + r * width;
          int64_t lo, hi;
          mask.range(i0 + r, keys, lo, hi);
          lo = std::max<int64_t>(lo - k0, 0), hi -= k0;
          activate(act, row, row, lo, hi);
          zero_outside(row, lo, hi, width);
        }
        gemm('N', 'N', dim_v, rows, width, static_cast<float>(scale), vb + k0 * ldv, ldv, s, width, 0.0f,
             ob + i0 * ldv, ldv);
      }
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& q,
                                                        const at::Tensor& k, const at::Tensor& v,
                                                        const at::Tensor& offsets, const std::string& activation,
                                                        double scale, int64_t window) {
  check(grad_out, "grad_out", 3), check(q, "q", 3), check(k, "k", 4), check(v, "v", 4);
  const Act act = parse(activation);
  auto q_off = offsets.to(at::kLong).contiguous();
  const int64_t batch = q_off.numel() - 1, heads = q.size(1), dim = q.size(2);
  const int64_t keys = k.size(1), dim_v = v.size(3);
  auto dq = at::empty_like(q), dk = at::zeros_like(k), dv = at::zeros_like(v);
  const int64_t max_q = longest(q_off);
  const Mask mask{false, window};
  const int64_t* qo = q_off.data_ptr<int64_t>();
  const float *gp = grad_out.data_ptr<float>(), *qp = q.data_ptr<float>();
  const float *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  float *dqp = dq.data_ptr<float>(), *dkp = dk.data_ptr<float>(), *dvp = dv.data_ptr<float>();
  const int64_t ldq = heads * dim, ldv = heads * dim_v;
  const float fscale = static_cast<float>(scale);

  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    const int64_t block = std::max<int64_t>(1, std::min(max_q, kQueryBlock) * keys);
    auto scratch = at::empty({3 * block}, q.options());
    float *s = scratch.data_ptr<float>(), *a = s + block, *da = a + block;
    for (int64_t item = begin; item < end; ++item) {
      const Work w = work(qo, keys, heads, item);
      const float *qb = qp + w.q_row * dim, *kb = kp + w.k_row * dim, *vb = vp + w.k_row * dim_v;
      const float* gb = gp + w.q_row * dim_v;
      float *dqb = dqp + w.q_row * dim, *dkb = dkp + w.k_row * dim, *dvb = dvp + w.k_row * dim_v;
      for (int64_t i0 = 0; i0 < w.lq; i0 += kQueryBlock) {
        const int64_t rows = std::min(kQueryBlock, w.lq - i0);
        int64_t k0, k1;
        mask.block(i0, rows, keys, k0, k1);
        const int64_t width = k1 - k0;
        const float *qi = qb + i0 * ldq, *gi = gb + i0 * ldv, *kj = kb + k0 * ldq, *vj = vb + k0 * ldv;
        gemm('T', 'N', width, rows, dim, 1.0f, kj, ldq, qi, ldq, 0.0f, s, width);
        // dA^T (width x rows) = scale * V dO^T, i.e. dA row-major (rows x width)
        gemm('T', 'N', width, rows, dim_v, fscale, vj, ldv, gi, ldv, 0.0f, da, width);
        for (int64_t r = 0; r < rows; ++r) {
          float *srow = s + r * width, *arow = a + r * width, *grow = da + r * width;
          int64_t lo, hi;
          mask.range(i0 + r, keys, lo, hi);
          lo = std::max<int64_t>(lo - k0, 0), hi -= k0;
          activate(act, srow, arow, lo, hi);
          activate_backward(act, srow, grow, lo, hi);  // dS, in place of dA
          zero_outside(arow, lo, hi, width);
          zero_outside(grow, lo, hi, width);
        }
        // dV^T (dv x width) += scale * dO^T A;  dQ^T (d x rows) = K^T dS^T;  dK^T (d x width) += Q^T dS
        gemm('N', 'T', dim_v, width, rows, fscale, gi, ldv, a, width, 1.0f, dvb + k0 * ldv, ldv);
        gemm('N', 'N', dim, rows, width, 1.0f, kj, ldq, da, width, 0.0f, dqb + i0 * ldq, ldq);
        gemm('N', 'T', dim, width, rows, 1.0f, qi, ldq, da, width, 1.0f, dkb + k0 * ldq, ldq);
      }
    }
  });
  return {dq, dk, dv};
}

}  // namespace

// implementations only: the schemas are declared in fxrec/ops/library.py, which exists before this builds
TORCH_LIBRARY_IMPL(fxrec_native, CPU, m) {
  m.impl("gdpa_forward", &forward);
  m.impl("gdpa_backward", &backward);
}
