// Attention of a few query rows over a KV cache, every row computed the same way whatever the number of rows:
// out[b, t, h] = softmax(q[b, h, t] . k[b, g(h), j] * scale + mask[t, j], over the columns j row t sees) . v.
//
// A one-token decoding step asks attention for one query row per head; a general fused attention kernel (flash
// attention for CPU) spends most of its time there on set-up for the row rather than on the few hundred keys it
// reads (docs/results/2026-12-07-cpu-kernels.md). Here the cache's columns are split into chunks of CHUNK columns
// at fixed places (0, CHUNK, 2 CHUNK, ...); the threads share out the chunks that some row sees, each reads its
// chunks' keys and values once for every row and head, and keeps per (row, head) the chunk's softmax partial
// (its max m, its sum l and the sum of p v); the partials are then merged in chunk order (flash-decoding's split).
// Columns a row does not see (mask -inf or the float minimum, false in a boolean mask, or past the causal
// diagonal without a mask) are skipped: they would contribute exp(-inf) = 0.
//
// A row's result depends only on its query, the columns it sees and their places in the cache: the chunk
// borders are fixed, every dot product, exponential and sum is the same chain of operations in the same order,
// whatever T is, whichever rows come with it and however the chunks fall to the threads. So the rows of a T-row
// forward are bit-identical to T one-row forwards over the same cache (batch invariance), as the invariant
// kernels need.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int LANES = 16;
constexpr int64_t CHUNK = 32;  // columns per chunk: two vectors of scores per (row, head)
typedef float v16 __attribute__((vector_size(64)));
typedef int i16 __attribute__((vector_size(64)));

inline v16 load16(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store16(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }

inline v16 splat(float x) { return v16{} + x; }

// the 16 lanes summed in a fixed tree order
inline float hsum(v16 v) {
  typedef float v8 __attribute__((vector_size(32)));
  typedef float v4 __attribute__((vector_size(16)));
  v8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  v4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

inline float hmax(v16 v) {
  float m = v[0];
  for (int l = 1; l < LANES; ++l) m = std::max(m, v[l]);
  return m;
}

// e^x for 16 lanes (Cephes' single-precision polynomial, about 1 ulp); -inf gives 0
inline v16 exp16(v16 x) {
  const v16 hi = splat(88.3762626647949f), lo = splat(-88.3762626647949f);
  x = x > hi ? hi : x;
  const i16 under = x < lo;
  x = x < lo ? lo : x;
  v16 t = x * splat(1.44269504088896341f) + splat(0.5f);
  i16 n = __builtin_convertvector(t, i16);
  n += (__builtin_convertvector(n, v16) > t);  // toward zero -> floor (a true comparison is -1)
  const v16 fn = __builtin_convertvector(n, v16);
  v16 r = x - fn * splat(0.693359375f);
  r = r - fn * splat(-2.12194440e-4f);
  v16 p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * (r * r) + r + splat(1.0f);
  const i16 bits = (n + 127) << 23;
  v16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const v16 out = p * scale;
  return under ? v16{} : out;
}


// One chunk's partials for every (row, head): the scores of the columns each row sees, their exponentials
// against the chunk's max, and the sum of p v over the chunk, every lane summed over the columns in order.
// V: the head size in vectors of 16 (a template argument, so that a row's D accumulators stay in registers).
template <int V, typename Sees>
void chunk_impl(int64_t c, int64_t b, int64_t T, int64_t Hq, int64_t Hkv, int64_t S, const float* qp,
                const float* kp, const float* vp, const Sees& sees, float* pm, float* pl, float* pacc, float scale,
                bool per_head) {
  constexpr int64_t D = V * LANES;
  const int64_t G = Hq / Hkv, rows = T * Hq;
  const int64_t j0 = c * CHUNK, n = std::min(S, j0 + CHUNK) - j0;
  const float ninf = -std::numeric_limits<float>::infinity();
  alignas(64) float add[CHUNK], s[CHUNK], p[CHUNK];
  bool vis[CHUNK];
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < Hq; ++h) {
      if (h == 0 || per_head) {  // which of the chunk's columns row t sees (a head's own, for a per-head mask)
        for (int64_t j = 0; j < CHUNK; ++j) {
          float a = 0.f;
          vis[j] = j < n && sees(t, h, j0 + j, &a);
          add[j] = a;
        }
      }
      const int64_t r = c * rows + t * Hq + h;
      const int64_t g = h / G;
      const float* kh = kp + ((b * Hkv + g) * S + j0) * D;
      const float* vh = vp + ((b * Hkv + g) * S + j0) * D;
      const float* qr = qp + ((b * Hq + h) * T + t) * D;
      v16 qv[V];
      for (int x = 0; x < V; ++x) qv[x] = load16(qr + x * LANES);
      bool any = false;
      for (int64_t j = 0; j < CHUNK; ++j) {
        if (!vis[j]) {
          s[j] = ninf;
          continue;
        }
        any = true;
        const float* kj = kh + j * D;
        v16 d = qv[0] * load16(kj);
        for (int x = 1; x < V; ++x) d = d + qv[x] * load16(kj + x * LANES);
        s[j] = hsum(d) * scale + add[j];
      }
      if (!any) {
        pm[r] = ninf;
        pl[r] = 0.f;
        continue;
      }
      const v16 s0 = load16(s), s1 = load16(s + LANES);
      const float m = std::max(hmax(s0), hmax(s1));
      const v16 p0 = exp16(s0 - splat(m)), p1 = exp16(s1 - splat(m));
      store16(p, p0);
      store16(p + LANES, p1);
      pm[r] = m;
      pl[r] = hsum(p0 + p1);
      v16 acc[V];
      for (int x = 0; x < V; ++x) acc[x] = v16{};
      for (int64_t j = 0; j < n; ++j) {
        if (!vis[j]) continue;
        const v16 w = splat(p[j]);
        for (int x = 0; x < V; ++x) acc[x] = acc[x] + w * load16(vh + j * D + x * LANES);
      }
      for (int x = 0; x < V; ++x) store16(pacc + r * D + x * LANES, acc[x]);
    }
  }
}

}  // namespace

// q [B, Hq, T, D], k and v [B, Hkv, S, D] (Hq a multiple of Hkv), mask [B or 1, 1 or Hq, T, S] additive float or
// boolean, or none (causal: row t sees the first S - T + t + 1 columns); fp32, D a multiple of 16 up to 128.
// Returns [B, T, Hq, D] (the layout transformers' attention interface hands back).
at::Tensor row_attention(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                         const c10::optional<at::Tensor>& mask_in, double scale) {
  TORCH_CHECK(q_in.device().is_cpu() && k_in.device().is_cpu() && v_in.device().is_cpu(),
              "row_attention: CPU tensors only");
  TORCH_CHECK(q_in.scalar_type() == at::kFloat && k_in.scalar_type() == at::kFloat &&
                  v_in.scalar_type() == at::kFloat, "row_attention: float32 only");
  TORCH_CHECK(q_in.dim() == 4 && k_in.dim() == 4 && v_in.dim() == 4, "row_attention: 4-d q, k, v");
  const int64_t B = q_in.size(0), Hq = q_in.size(1), T = q_in.size(2), D = q_in.size(3);
  const int64_t Hkv = k_in.size(1), S = k_in.size(2);
  TORCH_CHECK(k_in.size(0) == B && v_in.size(0) == B && v_in.size(1) == Hkv && v_in.size(2) == S &&
                  k_in.size(3) == D && v_in.size(3) == D, "row_attention: k and v must be [B, Hkv, S, D]");
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, "row_attention: query heads must be a multiple of key heads");
  TORCH_CHECK(D % LANES == 0 && D <= 8 * LANES, "row_attention: head size must be a multiple of 16, at most 128");
  auto q = q_in.contiguous();
  auto k = k_in.contiguous();
  auto v = v_in.contiguous();
  const bool has_mask = mask_in.has_value() && mask_in->defined();
  at::Tensor mask;
  bool boolean = false;
  int64_t mask_b = 0, mask_h = 0;  // strides of the mask's batch and head dimensions (0: broadcast)
  if (has_mask) {
    mask = *mask_in;
    TORCH_CHECK(mask.dim() == 4 && mask.size(2) == T && mask.size(3) == S,
                "row_attention: mask must be [B, 1, T, S] or [B, Hq, T, S]");
    TORCH_CHECK(mask.scalar_type() == at::kFloat || mask.scalar_type() == at::kBool,
                "row_attention: mask must be float32 or bool");
    boolean = mask.scalar_type() == at::kBool;
    mask = mask.contiguous();
    mask_b = mask.size(0) == 1 ? 0 : mask.stride(0);
    mask_h = mask.size(1) == 1 ? 0 : mask.stride(1);
  }
  const int64_t V = D / LANES;
  const int64_t chunks = (S + CHUNK - 1) / CHUNK;
  auto out = at::zeros({B, T, Hq, D}, q.options());
  if (B == 0 || T == 0 || Hq == 0 || S == 0) return out;
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float ninf = -std::numeric_limits<float>::infinity();
  const float hidden_below = std::numeric_limits<float>::lowest() / 2;  // an additive mask's "hidden"
  const float* mask_f = has_mask && !boolean ? mask.data_ptr<float>() : nullptr;
  const bool* mask_bool = has_mask && boolean ? mask.data_ptr<bool>() : nullptr;

  // partials [chunk][t][h]: m, l and acc[D]
  const int64_t rows = T * Hq;
  std::vector<float> pm(chunks * rows), pl(chunks * rows), pacc(chunks * rows * D);

  for (int64_t b = 0; b < B; ++b) {
    // whether row t (of head h, for a per-head mask) sees column j; its additive term in *add
    auto sees = [&](int64_t t, int64_t h, int64_t j, float* add) -> bool {
      if (!has_mask) {
        *add = 0.f;
        return j < S - T + t + 1;
      }
      const int64_t at_ = b * mask_b + h * mask_h + t * S + j;
      if (boolean) {
        *add = 0.f;
        return mask_bool[at_];
      }
      const float a = mask_f[at_];
      *add = a;
      return a > hidden_below;
    };
    // the chunks some row sees: [first, last]
    int64_t first = chunks, last = -1;
    for (int64_t c = 0; c < chunks; ++c) {
      bool any = false;
      for (int64_t h = 0; h < (mask_h ? Hq : 1) && !any; ++h)
        for (int64_t t = 0; t < T && !any; ++t)
          for (int64_t j = c * CHUNK; j < std::min(S, (c + 1) * CHUNK) && !any; ++j) {
            float a;
            any = sees(t, h, j, &a);
          }
      if (any) {
        first = std::min(first, c);
        last = c;
      }
    }
    if (last < 0) continue;  // no row sees anything: zeros

    at::parallel_for(first, last + 1, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        switch (V) {
#define WB_HEAD(n) \
          case n: chunk_impl<n>(c, b, T, Hq, Hkv, S, qp, kp, vp, sees, pm.data(), pl.data(), pacc.data(), \
                                static_cast<float>(scale), mask_h != 0); break;
          WB_HEAD(1) WB_HEAD(2) WB_HEAD(3) WB_HEAD(4) WB_HEAD(5) WB_HEAD(6) WB_HEAD(7) WB_HEAD(8)
#undef WB_HEAD
          default: break;
        }
      }
    });

    // merge the chunks' partials in chunk order: out = sum_c e^(m_c - M) acc_c / sum_c e^(m_c - M) l_c
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t i = t * Hq + h;
        float M = ninf;
        for (int64_t c = first; c <= last; ++c) M = std::max(M, pm[c * rows + i]);
        float* o = op + ((b * T + t) * Hq + h) * D;
        if (M == ninf) continue;  // the row sees nothing: zeros
        float L = 0.f;
        std::vector<v16> acc(V, v16{});
        for (int64_t c = first; c <= last; ++c) {
          const int64_t r = c * rows + i;
          if (pm[r] == ninf) continue;
          const float w = std::exp(pm[r] - M);
          L = L + w * pl[r];
          for (int64_t x = 0; x < V; ++x) acc[x] = acc[x] + splat(w) * load16(pacc.data() + r * D + x * LANES);
        }
        for (int64_t x = 0; x < V; ++x) store16(o + x * LANES, acc[x] / splat(L));
      }
  }
  return out;
}

TORCH_LIBRARY_FRAGMENT(workbench_kernels, m) {
  m.def("row_attention(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(workbench_kernels, CPU, m) {
  m.impl("row_attention", &row_attention);
}
