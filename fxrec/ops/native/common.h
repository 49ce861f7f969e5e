// Shared pieces of fxrec's native CPU kernels: BLAS gemm on strided row blocks, query blocks and their
// contiguous key ranges (masks), the jagged layout of a work item, and input checks.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc);

namespace fxrec_native {

// Column-major BLAS; every caller below passes row-major blocks as their column-major transposes.
inline void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // C = beta * C; callers use beta 0 or 1
    if (beta == 0.0f)
      for (int64_t j = 0; j < n; ++j) std::fill(c + j * ldc, c + j * ldc + m, 0.0f);
    return;
  }
  const int mi = m, ni = n, ki = k, lda_i = lda, ldb_i = ldb, ldc_i = ldc;
  sgemm_(&ta, &tb, &mi, &ni, &ki, &alpha, a, &lda_i, b, &ldb_i, &beta, c, &ldc_i);
}

// Queries are taken in blocks of this many rows: each block's score tile is (rows x its key range), so
// scratch stays small for long sequences and causal or windowed attention skips the keys no row sees.
constexpr int64_t kQueryBlock = 128;

struct Mask {
  bool causal;
  int64_t window;  // < 0: none
  // keys [lo, hi] that query i of a (lq x lk) block may see; hi < lo means none
  inline void range(int64_t i, int64_t lk, int64_t& lo, int64_t& hi) const {
    lo = window >= 0 ? std::max<int64_t>(0, i - window) : 0;
    hi = lk - 1;
    if (causal) hi = std::min(hi, i);
    if (window >= 0) hi = std::min(hi, i + window);
  }
  // keys [k0, k1) that some query of rows [i0, i0 + rows) may see (ranges grow with i)
  inline void block(int64_t i0, int64_t rows, int64_t lk, int64_t& k0, int64_t& k1) const {
    int64_t lo, hi, unused;
    range(i0, lk, lo, unused);
    range(i0 + rows - 1, lk, unused, hi);
    k0 = std::min(lo, lk);
    k1 = std::max(k0, hi + 1);
  }
};

// exp with its argument clamped to [-80, 80], so no lane under- or overflows (glibc's vector expf takes a
// slow special-case path for such lanes, and softmax rows far below their max are common); e^-80 ~ 2e-35
// is still a normal float, so the sums and products it enters keep their value
inline float safe_exp(float x) { return std::exp(std::clamp(x, -80.0f, 80.0f)); }

// zero row[0, lo) and row(hi, width): the keys outside a query's range [lo, hi] (which may be empty)
inline void zero_outside(float* row, int64_t lo, int64_t hi, int64_t width) {
  lo = std::clamp<int64_t>(lo, 0, width);
  std::fill(row, row + lo, 0.0f);
  std::fill(row + std::clamp<int64_t>(hi + 1, lo, width), row + width, 0.0f);
}

struct Layout {
  const int64_t* q_off;
  const int64_t* k_off;
  int64_t heads, dim, dim_v;
  int64_t q_len(int64_t b) const { return q_off[b + 1] - q_off[b]; }
  int64_t k_len(int64_t b) const { return k_off[b + 1] - k_off[b]; }
};

inline void check(const at::Tensor& t, const char* name, int64_t dims) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32");
  TORCH_CHECK(t.dim() == dims && t.is_contiguous(), name, " must be contiguous with ", dims, " dims");
}

inline int64_t longest(const at::Tensor& offsets) {
  auto lengths = offsets.slice(0, 1) - offsets.slice(0, 0, -1);
  return offsets.numel() > 1 ? lengths.max().item<int64_t>() : 0;
}

}  // namespace fxrec_native
