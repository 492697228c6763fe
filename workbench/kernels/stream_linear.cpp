// y[T, N] = x[T, K] @ w[N, K]^T (+ b[N]) for a few rows T, with w packed in panels of 16 output columns:
// p[N / 16, K, 16] (linear.py packs it once per model). Each panel is read from memory once, as one
// sequential stream, and applied to every row of x while its 16 columns sit in registers: a weight-streaming
// kernel whose cost grows little with T until the arithmetic catches up with the memory.
//
// Each output y[t, n] is one lane of a vector of fused multiply-adds over k = 0..K-1 in order, then the
// bias: the same operations in the same order whatever T is and whichever outputs are computed together,
// so a row's result does not depend on how many rows are computed with it (batch invariance).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cstring>
#include "vec.h"

namespace {

using namespace workbench_vec;
using workbench_vec::load16;  // overloaded below for bf16 weights

inline v16 load16(const at::BFloat16* p) {  // bf16 -> fp32: the 16 bits shifted into the high half
  typedef unsigned short u16x16 __attribute__((vector_size(32)));
  typedef unsigned int u32x16 __attribute__((vector_size(64)));
  u16x16 h;
  std::memcpy(&h, p, sizeof(h));
  u32x16 w = __builtin_convertvector(h, u32x16) << 16;
  v16 v;
  std::memcpy(&v, &w, sizeof(v));
  return v;
}

// panels [p, p + R) (16 columns each) against rows [t, t + TB) of x: R x TB accumulators in registers
template <int R, int TB, typename W>
inline void tile(const float* x, const W* pw, const float* b, float* y, int64_t K, int64_t N, int64_t p,
                 int64_t t) {
  v16 acc[TB][R];
#pragma GCC unroll 32
  for (int j = 0; j < TB; ++j)
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) acc[j][r] = v16{};
  const W* panel = pw + p * K * LANES;
  for (int64_t k = 0; k < K; ++k) {
    v16 wr[R];
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) wr[r] = load16(panel + (r * K + k) * LANES);
#pragma GCC unroll 32
    for (int j = 0; j < TB; ++j) {
      const v16 xb = splat(x[(t + j) * K + k]);  // x[t + j, k] in every lane
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r) acc[j][r] = fma16(wr[r], xb, acc[j][r]);
    }
  }
  for (int j = 0; j < TB; ++j)
    for (int r = 0; r < R; ++r) {
      const int64_t n0 = (p + r) * LANES;
      float* out = y + (t + j) * N + n0;
      for (int l = 0; l < LANES && n0 + l < N; ++l) out[l] = b ? acc[j][r][l] + b[n0 + l] : acc[j][r][l];
    }
}

// every row of x against panels [p, p + R): x in chunks of TB rows (the last one shorter); after the first
// chunk the panels come from cache
template <int R, int TB, typename W>
inline void rows(const float* x, const W* pw, const float* b, float* y, int64_t T, int64_t K, int64_t N,
                 int64_t p) {
  static_assert(TB <= 8, "the rest of a chunk is dispatched for up to 7 rows");
  int64_t t = 0;
  for (; t + TB <= T; t += TB) tile<R, TB>(x, pw, b, y, K, N, p, t);
  switch (T - t) {
#define WB_REST(c) \
    case c: if constexpr (c < TB) tile<R, c>(x, pw, b, y, K, N, p, t); break;
    WB_REST(7) WB_REST(6) WB_REST(5) WB_REST(4) WB_REST(3) WB_REST(2) WB_REST(1)
#undef WB_REST
    default: break;
  }
}

// panels [p, p + n) for n < 8, as the largest tiles of at most R panels that fit
template <int R, int TB, typename W>
inline void rest(const float* x, const W* pw, const float* b, float* y, int64_t T, int64_t K, int64_t N,
                 int64_t p, int64_t n) {
  while (n > 0) {
    const int64_t r = std::min<int64_t>(n, R);
    switch (r) {
#define WB_PANELS(c) \
      case c: if constexpr (c <= R) rows<c, TB>(x, pw, b, y, T, K, N, p); break;
      WB_PANELS(7) WB_PANELS(6) WB_PANELS(5) WB_PANELS(4) WB_PANELS(3) WB_PANELS(2) WB_PANELS(1)
#undef WB_PANELS
      default: break;
    }
    p += r;
    n -= r;
  }
}

// The panels split evenly between the threads, each thread's share in tiles of R panels and the rest in
// smaller ones: a weight of a few panels (a 192-column key projection is 12) keeps both cores streaming
// instead of leaving one idle while the other does the tiles that do not fill a block of R.
template <int R, int TB, typename W>
void run_tiles(const float* x, const W* pw, const float* b, float* y, int64_t T, int64_t K, int64_t N) {
  static_assert(R <= 8, "the rest of a thread's share is dispatched for up to 7 panels");
  const int64_t panels = (N + LANES - 1) / LANES;
  // grain: enough panels per task that splitting pays (about 32 KB of fp32 weights)
  const int64_t grain = std::max<int64_t>(1, 512 / std::max<int64_t>(K, 1));
  at::parallel_for(0, panels, grain, [&](int64_t lo, int64_t hi) {
    int64_t p = lo;
    for (; p + R <= hi; p += R) rows<R, TB>(x, pw, b, y, T, K, N, p);
    rest<R, TB>(x, pw, b, y, T, K, N, p, hi - p);
  });
}

// Tile shapes by row count: R panels x TB rows of x, at most 24 accumulators of the 32 vector registers.
// More panels at once for few rows (memory-bound), more rows for many. The shape never changes a result.
template <typename W>
void run(const float* x, const W* pw, const float* b, float* y, int64_t T, int64_t K, int64_t N) {
  if (T == 1) run_tiles<8, 1>(x, pw, b, y, T, K, N);
  else if (T == 2) run_tiles<8, 2>(x, pw, b, y, T, K, N);
  else if (T <= 4) run_tiles<6, 4>(x, pw, b, y, T, K, N);
  else run_tiles<3, 8>(x, pw, b, y, T, K, N);
}

}  // namespace

// x [..., K] float32; packed [ceil(N / 16), K, 16] float32 or bfloat16; bias [N] float32 or none
at::Tensor stream_linear(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                         int64_t N) {
  TORCH_CHECK(x.device().is_cpu() && packed.device().is_cpu(), "stream_linear: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kFloat, "stream_linear: x must be float32");
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == LANES && packed.size(0) == (N + LANES - 1) / LANES,
              "stream_linear: packed weight must be [ceil(N / 16), K, 16]");
  const int64_t K = packed.size(1);
  TORCH_CHECK(x.size(-1) == K, "stream_linear: x has ", x.size(-1), " features, the weight ", K);
  auto x2 = x.reshape({-1, K}).contiguous();
  auto pc = packed.contiguous();
  const int64_t T = x2.size(0);
  auto y = at::empty({T, N}, x.options());
  const float* b = nullptr;
  at::Tensor bc;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->numel() == N, "stream_linear: bias must be float32 [N]");
    bc = bias->contiguous();
    b = bc.data_ptr<float>();
  }
  if (T > 0) {
    if (pc.scalar_type() == at::kFloat) {
      run(x2.data_ptr<float>(), pc.data_ptr<float>(), b, y.data_ptr<float>(), T, K, N);
    } else {
      TORCH_CHECK(pc.scalar_type() == at::kBFloat16, "stream_linear: weight must be float32 or bfloat16");
      run(x2.data_ptr<float>(), pc.data_ptr<at::BFloat16>(), b, y.data_ptr<float>(), T, K, N);
    }
  }
  auto shape = x.sizes().vec();
  shape.back() = N;
  return y.view(shape);
}

TORCH_LIBRARY(workbench_kernels, m) {
  m.def("stream_linear(Tensor x, Tensor packed, Tensor? bias, int N) -> Tensor");
}

TORCH_LIBRARY_IMPL(workbench_kernels, CPU, m) {
  m.impl("stream_linear", &stream_linear);
}
