// Jagged softmax attention on CPU that reads and writes the jagged rows in place: no padded copies.
//
// One work item is one (sequence, head); its queries go in blocks of kQueryBlock rows. A block's score
// tile (rows x the keys any of its rows may see) lives in a per-thread scratch tensor, small enough to
// stay in cache, and the matmuls are BLAS sgemm calls whose leading dimensions stride straight through
// the (rows, H, D) layout. Every query row attends a contiguous key range [lo, hi] (causal, sliding
// window or all keys), so masking is a loop bound. Short histories are the common case: one block,
// a few small gemms, no padding, gathers or scatters.
//
// Forward:  S = scale * Q K^T, P = softmax(S) over [lo, hi], O = P V, lse = max + log(sum).
// Backward: P = exp(scale * Q K^T - lse), dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O)),
//           dQ = scale * dS K, dK = scale * dS^T Q.
// fp32 only; callers convert other dtypes.

#include <torch/library.h>

#include <limits>

#include "common.h"

namespace {

using namespace fxrec_native;

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const at::Tensor& q_offsets, const at::Tensor& k_offsets,
                                           bool causal, int64_t window, double scale) {
  check(q, "q", 3), check(k, "k", 3), check(v, "v", 3);
  auto q_off = q_offsets.to(at::kLong).contiguous(), k_off = k_offsets.to(at::kLong).contiguous();
  const int64_t batch = q_off.numel() - 1, heads = q.size(1), dim = q.size(2), dim_v = v.size(2);
  // every row is written: queries with no keys get zero weights, and a block with no keys a zero gemm
  auto out = at::empty({q.size(0), heads, dim_v}, q.options());
  auto lse = at::empty({q.size(0), heads}, q.options());
  const int64_t max_q = longest(q_off), max_k = longest(k_off);
  const Layout lay{q_off.data_ptr<int64_t>(), k_off.data_ptr<int64_t>(), heads, dim, dim_v};
  const Mask mask{causal, window};
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  float* lp = lse.data_ptr<float>();
  const float neg_inf = -std::numeric_limits<float>::infinity();

  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    auto scratch = at::empty({std::max<int64_t>(1, std::min(max_q, kQueryBlock) * max_k)}, q.options());
    float* s = scratch.data_ptr<float>();
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / heads, h = item % heads;
      const int64_t lq = lay.q_len(b), lk = lay.k_len(b);
      const int64_t ldq = heads * dim, ldv = heads * dim_v;
      const float* qb = qp + (lay.q_off[b] * heads + h) * dim;
      const float* kb = kp + (lay.k_off[b] * heads + h) * dim;
      const float* vb = vp + (lay.k_off[b] * heads + h) * dim_v;
      float* ob = op + (lay.q_off[b] * heads + h) * dim_v;
      float* lb = lp + lay.q_off[b] * heads + h;
      for (int64_t i0 = 0; i0 < lq; i0 += kQueryBlock) {
        const int64_t rows = std::min(kQueryBlock, lq - i0);
        int64_t k0, k1;  // the block's keys [k0, k1): the union of its rows' ranges
        mask.block(i0, rows, lk, k0, k1);
        const int64_t width = k1 - k0;
        // S^T (width x rows, column-major) = K Q^T, i.e. S row-major (rows x width)
        gemm('T', 'N', width, rows, dim, static_cast<float>(scale), kb + k0 * ldq, ldq, qb + i0 * ldq, ldq,
             0.0f, s, width);
        for (int64_t r = 0; r < rows; ++r) {
          float* row = s + r * width;
          int64_t lo, hi;
          mask.range(i0 + r, lk, lo, hi);
          if (hi < lo) {  // nothing to attend to: zero weights, output stays 0
            std::fill(row, row + width, 0.0f);
            lb[(i0 + r) * heads] = neg_inf;
            continue;
          }
          lo -= k0, hi -= k0;
          float top = row[lo];
          for (int64_t j = lo + 1; j <= hi; ++j) top = std::max(top, row[j]);
          float total = 0.0f;
#pragma omp simd reduction(+ : total)
          for (int64_t j = lo; j <= hi; ++j) {
            row[j] = safe_exp(row[j] - top);
            total += row[j];
          }
          const float inv = 1.0f / total;
#pragma omp simd
          for (int64_t j = lo; j <= hi; ++j) row[j] *= inv;
          zero_outside(row, lo, hi, width);
          lb[(i0 + r) * heads] = top + std::log(total);
        }
        // O^T (dv x rows) = V^T P^T
        gemm('N', 'N', dim_v, rows, width, 1.0f, vb + k0 * ldv, ldv, s, width, 0.0f, ob + i0 * ldv, ldv);
      }
    }
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& q_offsets, const at::Tensor& k_offsets,
    bool causal, int64_t window, double scale) {
  check(grad_out, "grad_out", 3), check(q, "q", 3), check(k, "k", 3), check(v, "v", 3), check(out, "out", 3);
  auto q_off = q_offsets.to(at::kLong).contiguous(), k_off = k_offsets.to(at::kLong).contiguous();
  const int64_t batch = q_off.numel() - 1, heads = q.size(1), dim = q.size(2), dim_v = v.size(2);
  auto dq = at::zeros_like(q), dk = at::zeros_like(k), dv = at::zeros_like(v);
  const int64_t max_q = longest(q_off), max_k = longest(k_off);
  const Layout lay{q_off.data_ptr<int64_t>(), k_off.data_ptr<int64_t>(), heads, dim, dim_v};
  const Mask mask{causal, window};
  const float *gp = grad_out.data_ptr<float>(), *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>();
  const float *vp = v.data_ptr<float>(), *op = out.data_ptr<float>(), *lp = lse.data_ptr<float>();
  float *dqp = dq.data_ptr<float>(), *dkp = dk.data_ptr<float>(), *dvp = dv.data_ptr<float>();
  const float fscale = static_cast<float>(scale);

  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    const int64_t block = std::max<int64_t>(1, std::min(max_q, kQueryBlock) * max_k);
    auto scratch = at::empty({2 * block + kQueryBlock}, q.options());
    float* p = scratch.data_ptr<float>();
    float* dp = p + block;
    float* delta = dp + block;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / heads, h = item % heads;
      const int64_t lq = lay.q_len(b), lk = lay.k_len(b);
      if (lq == 0 || lk == 0) continue;
      const int64_t qrow = (lay.q_off[b] * heads + h), krow = (lay.k_off[b] * heads + h);
      const int64_t ldq = heads * dim, ldv = heads * dim_v;
      const float *qb = qp + qrow * dim, *kb = kp + krow * dim, *vb = vp + krow * dim_v;
      const float *gb = gp + qrow * dim_v, *ob = op + qrow * dim_v, *lb = lp + qrow;
      float *dqb = dqp + qrow * dim, *dkb = dkp + krow * dim, *dvb = dvp + krow * dim_v;
      for (int64_t i0 = 0; i0 < lq; i0 += kQueryBlock) {
        const int64_t rows = std::min(kQueryBlock, lq - i0);
        int64_t k0, k1;
        mask.block(i0, rows, lk, k0, k1);
        const int64_t width = k1 - k0;
        if (width == 0) continue;
        const float *qi = qb + i0 * ldq, *gi = gb + i0 * ldv, *oi = ob + i0 * ldv;
        const float *kj = kb + k0 * ldq, *vj = vb + k0 * ldv;
        gemm('T', 'N', width, rows, dim, fscale, kj, ldq, qi, ldq, 0.0f, p, width);
        for (int64_t r = 0; r < rows; ++r) {
          float* row = p + r * width;
          int64_t lo, hi;
          mask.range(i0 + r, lk, lo, hi);
          lo = std::max<int64_t>(lo - k0, 0), hi -= k0;
          const float shift = lb[(i0 + r) * heads];
#pragma omp simd
          for (int64_t j = lo; j <= hi; ++j) row[j] = safe_exp(row[j] - shift);
          zero_outside(row, lo, hi, width);
          const float* g = gi + r * ldv;
          const float* o = oi + r * ldv;
          float d = 0.0f;
#pragma omp simd reduction(+ : d)
          for (int64_t c = 0; c < dim_v; ++c) d += g[c] * o[c];
          delta[r] = d;
        }
        // dV^T (dv x width) += dO^T P;  dP^T (width x rows) = V dO^T, i.e. dP row-major (rows x width)
        gemm('N', 'T', dim_v, width, rows, 1.0f, gi, ldv, p, width, 1.0f, dvb + k0 * ldv, ldv);
        gemm('T', 'N', width, rows, dim_v, 1.0f, vj, ldv, gi, ldv, 0.0f, dp, width);
        for (int64_t r = 0; r < rows; ++r) {
          float* prow = p + r * width;
          const float* dprow = dp + r * width;
          const float d = delta[r];
#pragma omp simd
          for (int64_t j = 0; j < width; ++j) prow[j] = prow[j] * (dprow[j] - d);  // dS, in place of P
        }
        // dQ^T (d x rows) = K^T dS^T;  dK^T (d x width) += Q^T dS
        gemm('N', 'N', dim, rows, width, fscale, kj, ldq, p, width, 0.0f, dqb + i0 * ldq, ldq);
        gemm('N', 'T', dim, width, rows, fscale, qi, ldq, p, width, 1.0f, dkb + k0 * ldq, ldq);
      }
    }
  });
  return {dq, dk, dv};
}

}  // namespace

// implementations only: the schemas are declared in fxrec/ops/library.py, which exists before this builds
TORCH_LIBRARY_IMPL(fxrec_native, CPU, m) {
  m.impl("jagged_attention_forward", &forward);
  m.impl("jagged_attention_backward", &backward);
}
