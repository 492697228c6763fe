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
#include <vector>
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

// panels [p, p + R) (16 columns each) against rows [t, t + TB) of x: R x TB accumulators in registers. With PF,
// each step also asks for the cache line `ahead` steps further down each panel's stream (past a panel's end: the
// start of the next one, which the next tile reads): on some machines the hardware's own prefetch runs too
// little ahead of a tile busy with arithmetic, on others the extra instructions only cost (kernels.choose
// measures which). A prefetch changes no result.
template <int R, int TB, bool PF, typename W>
inline void tile(const float* x, const W* pw, const float* b, float* y, int64_t K, int64_t N, int64_t p,
                 int64_t t, int64_t ahead) {
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
    if constexpr (PF) {
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r) __builtin_prefetch(panel + (r * K + k + ahead) * LANES, 0, 3);
    }
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
template <int R, int TB, bool PF, typename W>
inline void rows(const float* x, const W* pw, const float* b, float* y, int64_t T, int64_t K, int64_t N,
                 int64_t p, int64_t ahead) {
  static_assert(TB <= 8, "the rest of a chunk is dispatched for up to 7 rows");
  int64_t t = 0;
  for (; t + TB <= T; t += TB) tile<R, TB, PF>(x, pw, b, y, K, N, p, t, ahead);
  switch (T - t) {
#define WB_REST(c) \
    case c: if constexpr (c < TB) tile<R, c, PF>(x, pw, b, y, K, N, p, t, ahead); break;
    WB_REST(7) WB_REST(6) WB_REST(5) WB_REST(4) WB_REST(3) WB_REST(2) WB_REST(1)
#undef WB_REST
    default: break;
  }
}

// panels [p, p + n) for n < 8, as the largest tiles of at most R panels that fit
template <int R, int TB, bool PF, typename W>
inline void rest(const float* x, const W* pw, const float* b, float* y, int64_t T, int64_t K, int64_t N,
                 int64_t p, int64_t n, int64_t ahead) {
  while (n > 0) {
    const int64_t r = std::min<int64_t>(n, R);
    switch (r) {
#define WB_PANELS(c) \
      case c: if constexpr (c <= R) rows<c, TB, PF>(x, pw, b, y, T, K, N, p, ahead); break;
      WB_PANELS(7) WB_PANELS(6) WB_PANELS(5) WB_PANELS(4) WB_PANELS(3) WB_PANELS(2) WB_PANELS(1)
#undef WB_PANELS
      default: break;
    }
    p += r;
    n -= r;
  }
}

// panels [lo, hi) of one weight, in tiles of R panels and the rest in smaller ones
template <int R, int TB, bool PF, typename W>
inline void span(const float* x, const W* pw, const float* b, float* y, int64_t T, int64_t K, int64_t N,
                 int64_t lo, int64_t hi, int64_t ahead) {
  int64_t p = lo;
  for (; p + R <= hi; p += R) rows<R, TB, PF>(x, pw, b, y, T, K, N, p, ahead);
  rest<R, TB, PF>(x, pw, b, y, T, K, N, p, hi - p, ahead);
}

// One weight of a group (stream_linear_group): its packed panels, its bias, its output ((T, N) row-major), its
// width.
template <typename W>
struct Part {
  const W* pw;
  const float* b;
  float* y;
  int64_t N, panels;
};

// The panels of every weight of a group, one after the other, split evenly between the threads, each thread's
// share in tiles of R panels and the rest in smaller ones: a weight of a few panels (a 192-column key
// projection is 12) keeps both cores streaming instead of leaving one idle while the other does the tiles that
// do not fill a block of R, and weights that read the same x (a layer's query, key and value projections)
// cost one parallel region instead of one each.
template <int R, int TB, bool PF, typename W>
void run_tiles(const float* x, const std::vector<Part<W>>& parts, int64_t T, int64_t K, int64_t ahead) {
  static_assert(R <= 8, "the rest of a thread's share is dispatched for up to 7 panels");
  int64_t panels = 0;
  for (const auto& part : parts) panels += part.panels;
  // grain: enough panels per task that splitting pays (about 32 KB of fp32 weights)
  const int64_t grain = std::max<int64_t>(1, 512 / std::max<int64_t>(K, 1));
  at::parallel_for(0, panels, grain, [&](int64_t lo, int64_t hi) {
    int64_t start = 0;  // the first panel of parts[i] in the group's numbering
    for (const auto& part : parts) {
      const int64_t a = std::max(lo, start), z = std::min(hi, start + part.panels);
      if (a < z) span<R, TB, PF>(x, part.pw, part.b, part.y, T, K, part.N, a - start, z - start, ahead);
      start += part.panels;
    }
  });
}

template <int R, int TB, typename W>
void run_shape(const float* x, const std::vector<Part<W>>& parts, int64_t T, int64_t K, int64_t ahead) {
  if (ahead > 0) run_tiles<R, TB, true>(x, parts, T, K, ahead);
  else run_tiles<R, TB, false>(x, parts, T, K, 0);
}

// Tile shapes by row count: R panels x TB rows of x, at most 24 accumulators of the 32 vector registers.
// More panels at once for few rows, more rows for many. For one or two rows four panels at once (four streams
// of weights per thread) ran the model's linears 3% faster than eight on the 2-core AMD test machine; on the
// 2-core Intel Xeon no other shape beat these at 1, 2, 4, 8 or 16 rows. The shape never changes a result.
// `ahead[c]`: the prefetch distance, in steps of k, of the tiles of shape c (ROW_SHAPES: 1, 2, 3-4, 5+ rows); 0 or
// missing: none.
template <typename W>
void run(const float* x, const std::vector<Part<W>>& parts, int64_t T, int64_t K, at::IntArrayRef ahead) {
  const size_t shape = T == 1 ? 0 : T == 2 ? 1 : T <= 4 ? 2 : 3;
  const int64_t a = shape < ahead.size() ? ahead[shape] : 0;
  if (shape == 0) run_shape<4, 1>(x, parts, T, K, a);
  else if (shape == 1) run_shape<4, 2>(x, parts, T, K, a);
  else if (shape == 2) run_shape<6, 4>(x, parts, T, K, a);
  else run_shape<3, 8>(x, parts, T, K, a);
}

template <typename W>
void run_group(const at::Tensor& x2, const std::vector<at::Tensor>& packed, const std::vector<at::Tensor>& bias,
               at::IntArrayRef N, at::IntArrayRef ahead, at::Tensor& y) {
  std::vector<Part<W>> parts;
  const int64_t T = x2.size(0);
  int64_t col = 0;
  for (size_t i = 0; i < packed.size(); ++i) {
    parts.push_back({packed[i].data_ptr<W>(), bias.empty() ? nullptr : bias[i].data_ptr<float>(),
                     y.data_ptr<float>() + T * col, N[i], packed[i].size(0)});
    col += N[i];
  }
  run(x2.data_ptr<float>(), parts, T, x2.size(1), ahead);
}

}  // namespace

// y_i = x @ w_i^T (+ b_i) for weights that read the same x, in one parallel region, one after the other in one
// flat output: y_i, T rows of N_i (T = the rows of x), row-major, starts at element T (N_0 + ... + N_{i-1}), bit
// for bit what stream_linear(x, packed[i], bias[i], N[i]) gives. x [..., K] float32; packed[i]
// [ceil(N[i] / 16), K, 16], all float32 or all bfloat16; bias empty (none) or one float32 [N[i]] per weight.
// One output tensor, not one per weight: a compiled graph calls an op that returns a list of tensors through
// Python, and one returning a tensor straight through the dispatcher. ahead: the prefetch distance in steps of k
// for the tiles of 1, 2, 3-4 and 5+ rows (see run; empty: none), which changes no result.
at::Tensor stream_linear_group(const at::Tensor& x, at::TensorList packed, at::TensorList bias, at::IntArrayRef N,
                               at::IntArrayRef ahead) {
  const size_t n = packed.size();
  for (const int64_t a : ahead) TORCH_CHECK(a >= 0, "stream_linear: a prefetch distance cannot be negative");
  TORCH_CHECK(n > 0 && N.size() == n, "stream_linear: one width N per packed weight");
  TORCH_CHECK(bias.empty() || bias.size() == n, "stream_linear: no bias, or one per weight");
  TORCH_CHECK(x.device().is_cpu(), "stream_linear: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kFloat, "stream_linear: x must be float32");
  const int64_t K = x.size(-1);
  auto x2 = x.reshape({-1, K}).contiguous();
  std::vector<at::Tensor> pcs, bcs;
  int64_t width = 0;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = packed[i];
    TORCH_CHECK(p.device().is_cpu(), "stream_linear: CPU tensors only");
    TORCH_CHECK(p.dim() == 3 && p.size(2) == LANES && p.size(0) == (N[i] + LANES - 1) / LANES,
                "stream_linear: packed weight must be [ceil(N / 16), K, 16]");
    TORCH_CHECK(p.size(1) == K, "stream_linear: x has ", K, " features, the weight ", p.size(1));
    TORCH_CHECK(p.scalar_type() == packed[0].scalar_type(), "stream_linear: a group's weights share a dtype");
    pcs.push_back(p.contiguous());
    if (!bias.empty()) {
      TORCH_CHECK(bias[i].scalar_type() == at::kFloat && bias[i].numel() == N[i],
                  "stream_linear: bias must be float32 [N]");
      bcs.push_back(bias[i].contiguous());
    }
    width += N[i];
  }
  auto y = at::empty({x2.size(0) * width}, x.options());
  if (x2.size(0) > 0) {
    if (pcs[0].scalar_type() == at::kFloat) {
      run_group<float>(x2, pcs, bcs, N, ahead, y);
    } else {
      TORCH_CHECK(pcs[0].scalar_type() == at::kBFloat16, "stream_linear: weight must be float32 or bfloat16");
      run_group<at::BFloat16>(x2, pcs, bcs, N, ahead, y);
    }
  }
  return y;
}

// y = x @ w^T (+ b): a group of one. x [..., K] float32; packed [ceil(N / 16), K, 16] float32 or bfloat16;
// bias [N] float32 or none; ahead as for stream_linear_group
at::Tensor stream_linear(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                         int64_t N, at::IntArrayRef ahead) {
  std::vector<at::Tensor> b;
  if (bias.has_value() && bias->defined()) b.push_back(*bias);
  auto shape = x.sizes().vec();
  shape.back() = N;
  return stream_linear_group(x, {packed}, b, {N}, ahead).view(shape);
}

TORCH_LIBRARY(workbench_kernels, m) {
  m.def("stream_linear(Tensor x, Tensor packed, Tensor? bias, int N, int[] ahead=[]) -> Tensor");
  m.def("stream_linear_group(Tensor x, Tensor[] packed, Tensor[] bias, int[] N, int[] ahead=[]) -> Tensor");
}

TORCH_LIBRARY_IMPL(workbench_kernels, CPU, m) {
  m.impl("stream_linear", &stream_linear);
  m.impl("stream_linear_group", &stream_linear_group);
}
