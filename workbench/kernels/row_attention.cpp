// Attention of a few query rows over a KV cache, every row computed the same way whatever the number of rows:
// out[b, t, h] = softmax(q[b, h, t] . k[b, g(h), j] * scale + mask[t, j], over the columns j row t sees) . v.
//
// A one-token decoding step asks attention for one query row per head; a general fused attention kernel (flash
// attention for CPU) spends most of its time there on set-up for the row rather than on the few hundred keys it
// reads (docs/results/2026-12-07-cpu-kernels.md). Here the cache's columns are split into chunks of CHUNK columns
// at fixed places (0, CHUNK, 2 CHUNK, ...). The threads share out the (chunk, key/value head) pairs that some row
// sees; each transposes its chunk's keys once ([D][CHUNK]) and computes, for every row and query head of the
// group, the chunk's softmax partial (its max m, its sum l and the sum of p v); the partials are then merged in
// chunk order (flash-decoding's split). With the keys transposed, a row's 16 scores are one vector of fused
// multiply-adds over the head's dimensions, and the rows go four at a time, so that their chains overlap and
// share each key and value read.
// Columns a row does not see (mask -inf or the float minimum, false in a boolean mask, or past the causal
// diagonal without a mask) have the score -inf and the weight exactly 0.
//
// A row's result depends only on its query, the columns it sees and their places in the cache: the chunk
// borders are fixed, every dot product, exponential and sum is the same chain of operations in the same order,
// whatever T is, whichever rows come with it and however the tasks fall to the threads (a column the row does not
// see but a row beside it does adds 0 * v, which leaves the sum unchanged; the columns past the last one some row
// of the block sees, such as the static cache's unfilled ones, are not summed). So the rows of a T-row forward are
// bit-identical to T one-row forwards over the same cache (batch invariance), as the invariant kernels need.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

#include "vec.h"

namespace {

using namespace workbench_vec;

constexpr int64_t CHUNK = 32;  // columns per chunk: two vectors of scores per (row, head)
constexpr int BLOCK = 4;       // rows computed together
typedef int i16 __attribute__((vector_size(64)));

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
__attribute__((always_inline)) inline v16 exp16(v16 x) {
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


// kt[d][j] = k[j][d] for j < n (zeros for n <= j < CHUNK): the chunk's keys, transposed
template <int64_t D>
inline void transpose_keys(const float* k, int64_t n, float* kt) {
#if defined(__AVX512F__)
  if (n == CHUNK) {
    for (int64_t j0 = 0; j0 < CHUNK; j0 += LANES)
      for (int64_t d0 = 0; d0 < D; d0 += LANES) {
        // a 16 x 16 block: rows j0.., columns d0.. -> rows d0.., columns j0..
        __m512 r[16], t[16];
        for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(k + (j0 + i) * D + d0);
        for (int i = 0; i < 16; i += 2) {
          t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
          t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
        }
        for (int i = 0; i < 16; i += 4) {
          r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
          r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
          r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
          r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
        }
        for (int i = 0; i < 4; ++i) {
          t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
          t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
          t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
          t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
        }
        for (int i = 0; i < 4; ++i) {
          r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
          r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
          r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
          r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xDD);
        }
        for (int i = 0; i < 16; ++i) _mm512_storeu_ps(kt + (d0 + i) * CHUNK + j0, r[i]);  // column d0 + i
      }
    return;
  }
#endif
  for (int64_t d = 0; d < D; ++d)
    for (int64_t j = 0; j < CHUNK; ++j) kt[d * CHUNK + j] = j < n ? k[j * D + d] : 0.f;
}

// NB rows of one task: their scores over the chunk (lane j of a vector: q[d] k[j, d] fused-added over d in
// order), the exponentials against each row's max, and the fused sum of p v over the chunk's first n columns in
// order (n: one past the last column some row of the block sees; the columns a row does not see add 0 * v).
// ri: the rows' places in the partials, q: their queries, add: each row's mask term per column (-inf: not seen).
template <int V, int NB>
inline void block_rows(const float* kt, const float* vh, int64_t n, const int64_t* ri, const float* const* q,
                       const float* const* add, float* pm, float* pl, float* pacc, float scale) {
  constexpr int64_t D = V * LANES;
  v16 s[NB][2];
  for (int r = 0; r < NB; ++r) s[r][0] = s[r][1] = v16{};
  for (int64_t d = 0; d < D; ++d) {
    const v16 k0 = load16(kt + d * CHUNK), k1 = load16(kt + d * CHUNK + LANES);
    for (int r = 0; r < NB; ++r) {
      const v16 qd = splat(q[r][d]);
      s[r][0] = fma16(qd, k0, s[r][0]);
      s[r][1] = fma16(qd, k1, s[r][1]);
    }
  }
  alignas(64) float p[NB][CHUNK];
  for (int r = 0; r < NB; ++r) {
    // scaled plus the mask's term; -inf itself where a column is not seen, whatever its key holds
    const v16 hidden = splat(-std::numeric_limits<float>::infinity());
    const v16 a0 = load16(add[r]), a1 = load16(add[r] + LANES);
    const v16 s0 = a0 == hidden ? hidden : s[r][0] * splat(scale) + a0;
    const v16 s1 = a1 == hidden ? hidden : s[r][1] * splat(scale) + a1;
    const float m = std::max(hmax(s0), hmax(s1));
    const v16 p0 = exp16(s0 - splat(m)), p1 = exp16(s1 - splat(m));
    store16(p[r], p0);
    store16(p[r] + LANES, p1);
    pm[ri[r]] = m;
    pl[ri[r]] = hsum(p0 + p1);
  }
  v16 acc[NB][V];
  for (int r = 0; r < NB; ++r)
    for (int x = 0; x < V; ++x) acc[r][x] = v16{};
  for (int64_t j = 0; j < n; ++j) {
    v16 vj[V];
    for (int x = 0; x < V; ++x) vj[x] = load16(vh + j * D + x * LANES);
    for (int r = 0; r < NB; ++r) {
      const v16 w = splat(p[r][j]);
      for (int x = 0; x < V; ++x) acc[r][x] = fma16(w, vj[x], acc[r][x]);
    }
  }
  for (int r = 0; r < NB; ++r)
    for (int x = 0; x < V; ++x) store16(pacc + ri[r] * D + x * LANES, acc[r][x]);
}

// Where the rows' columns come from: row t of query head h sees column j with the term add(t, h)[j - j0].
struct Visibility {
  const float* mask_f;    // an additive float mask, or
  const bool* mask_bool;  // a boolean one, or neither (causal)
  int64_t row_b, stride_h, S, T;
  float hidden_below;     // an additive mask's "hidden": at or below it

  bool per_head() const { return stride_h != 0; }

  // whether mask entry `at` shows its column (without a mask: the caller's causal test)
  bool seen(int64_t at) const { return mask_f ? mask_f[at] > hidden_below : mask_bool[at]; }

  // whether any of the float mask's 16 entries from `at` shows its column
  bool any_seen16(int64_t at) const {
    const i16 m = load16(mask_f + at) > splat(hidden_below);
    bool some = false;
    for (int l = 0; l < LANES; ++l) some = some || m[l];
    return some;
  }

  // the mask terms of columns [j0, j0 + CHUNK) for row t, head h (-inf for columns not seen or past n); returns
  // one past the last column seen (0: none)
  int64_t terms(int64_t t, int64_t h, int64_t j0, int64_t n, float* add) const {
    const float ninf = -std::numeric_limits<float>::infinity();
    int64_t end = 0;
    const int64_t at = row_b + h * stride_h + t * S + j0;
    for (int64_t j = 0; j < CHUNK; ++j) {
      float a = ninf;
      if (j < n) {
        if (mask_f || mask_bool) a = !seen(at + j) ? ninf : mask_f ? mask_f[at + j] : 0.f;
        else a = j0 + j < S - T + t + 1 ? 0.f : ninf;
      }
      add[j] = a;
      end = a != ninf ? j + 1 : end;
    }
    return end;
  }

  // the first and last column row t of head h sees ([S, -1] when none)
  void span(int64_t t, int64_t h, int64_t* lo, int64_t* hi) const {
    if (!mask_f && !mask_bool) {
      *lo = 0;
      *hi = std::min(S - T + t, S - 1);
      return;
    }
    const int64_t at = row_b + h * stride_h + t * S;
    int64_t j = 0;
    if (mask_f)  // whole vectors of hidden columns skipped: most of a static cache's row is its unfilled part
      for (; j + LANES <= S && !any_seen16(at + j); j += LANES) {}
    for (; j < S && !seen(at + j); ++j) {}
    *lo = j;
    int64_t e = S;
    if (mask_f)
      for (; e - LANES >= j && !any_seen16(at + e - LANES); e -= LANES) {}
    for (; e > j && !seen(at + e - 1); --e) {}
    *hi = e - 1;
  }
};

// One task: chunk c of key/value head g, for every row t and query head h of the group: the chunk's keys
// transposed once, then the rows that see some column of it in blocks of up to BLOCK (block_rows); a row that
// sees none only records that (m = -inf).
template <int V>
void chunk_task(int64_t c, int64_t g, int64_t b, int64_t T, int64_t Hq, int64_t Hkv, int64_t S, int64_t first,
                const float* qp, const float* kp, const float* vp, const Visibility& vis, float* pm, float* pl,
                float* pacc, float scale) {
  constexpr int64_t D = V * LANES;
  const int64_t G = Hq / Hkv, rows = T * Hq;
  const int64_t j0 = c * CHUNK, n = std::min(S, j0 + CHUNK) - j0;
  alignas(64) float kt[D * CHUNK];
  alignas(64) float add[BLOCK][CHUNK];
  transpose_keys<D>(kp + ((b * Hkv + g) * S + j0) * D, n, kt);
  const float* vh = vp + ((b * Hkv + g) * S + j0) * D;
  int64_t ri[BLOCK];
  const float* q[BLOCK];
  const float* terms[BLOCK];
  int nb = 0;
  int64_t used = 0;  // one past the last column the block's rows see: the columns of the sum of p v
  auto flush = [&]() {
    switch (nb) {
      case 1: block_rows<V, 1>(kt, vh, used, ri, q, terms, pm, pl, pacc, scale); break;
      case 2: block_rows<V, 2>(kt, vh, used, ri, q, terms, pm, pl, pacc, scale); break;
      case 3: block_rows<V, 3>(kt, vh, used, ri, q, terms, pm, pl, pacc, scale); break;
      case 4: block_rows<V, 4>(kt, vh, used, ri, q, terms, pm, pl, pacc, scale); break;
      default: break;
    }
    nb = 0;
    used = 0;
  };
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < T; ++t) {
    alignas(64) float shared[CHUNK];  // row t's terms, for a mask shared by the heads
    const int64_t end_shared = vis.per_head() ? 0 : vis.terms(t, 0, j0, n, shared);
    for (int64_t h = g * G; h < (g + 1) * G; ++h) {
      const int64_t r = (c - first) * rows + t * Hq + h;
      const int64_t end = vis.per_head() ? vis.terms(t, h, j0, n, add[nb]) : end_shared;
      if (end == 0) {
        pm[r] = ninf;
        pl[r] = 0.f;
        continue;
      }
      if (!vis.per_head()) std::memcpy(add[nb], shared, sizeof(shared));
      ri[nb] = r;
      q[nb] = qp + ((b * Hq + h) * T + t) * D;
      terms[nb] = add[nb];
      used = std::max(used, end);
      if (++nb == BLOCK) flush();
    }
  }
  flush();
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
  auto out = at::zeros({B, T, Hq, D}, q.options());
  if (B == 0 || T == 0 || Hq == 0 || S == 0) return out;
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float ninf = -std::numeric_limits<float>::infinity();
  const int64_t rows = T * Hq;

  for (int64_t b = 0; b < B; ++b) {
    const Visibility vis{has_mask && !boolean ? mask.data_ptr<float>() : nullptr,
                         has_mask && boolean ? mask.data_ptr<bool>() : nullptr, b * mask_b, mask_h, S, T,
                         std::numeric_limits<float>::lowest() / 2};
    // the chunks some row sees: [first, last]
    int64_t lo = S, hi = -1;
    for (int64_t h = 0; h < (mask_h ? Hq : 1); ++h)
      for (int64_t t = 0; t < T; ++t) {
        int64_t l, e;
        vis.span(t, h, &l, &e);
        if (e < l) continue;  // this row sees nothing
        lo = std::min(lo, l);
        hi = std::max(hi, e);
      }
    if (hi < 0) continue;  // no row sees anything: zeros
    const int64_t first = lo / CHUNK, seen = hi / CHUNK - first + 1;

    // partials [chunk - first][t][h]: m, l and acc[D], each entry written by one task
    std::unique_ptr<float[]> pm(new float[seen * rows]), pl(new float[seen * rows]), pacc(new float[seen * rows * D]);
    // one task per (chunk, key/value head): more tasks than chunks, so that the two threads' shares even out;
    // a thread's consecutive tasks are consecutive chunks of one head, one stream through its keys and values
    at::parallel_for(0, seen * Hkv, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t g = i / seen, c = first + i % seen;
        switch (V) {
#define WB_HEAD(n) \
          case n: chunk_task<n>(c, g, b, T, Hq, Hkv, S, first, qp, kp, vp, vis, pm.get(), pl.get(), pacc.get(), \
                                static_cast<float>(scale)); break;
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
        for (int64_t c = 0; c < seen; ++c) M = std::max(M, pm[c * rows + i]);
        float* o = op + ((b * T + t) * Hq + h) * D;
        if (M == ninf) continue;  // the row sees nothing: zeros
        float L = 0.f;
        v16 acc[8];
        for (int64_t x = 0; x < V; ++x) acc[x] = v16{};
        for (int64_t c = 0; c < seen; ++c) {
          const int64_t r = c * rows + i;
          if (pm[r] == ninf) continue;
          const float w = std::exp(pm[r] - M);
          L = L + w * pl[r];
          for (int64_t x = 0; x < V; ++x) acc[x] = acc[x] + splat(w) * load16(pacc.get() + r * D + x * LANES);
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
