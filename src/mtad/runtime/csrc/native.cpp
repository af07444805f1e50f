// mtad's native CPU kernels, built on the machine that runs them (`mtad.runtime.native`).
//
// linear_fp16_weight: y[M, N] = x[M, K] @ w[N, K]^T (+ bias) with float32 activations and
// accumulation and fp16 weights, for the few rows a decode step or a verification multiplies.
// Weights are packed in tiles of kTile output columns, each stored k-major ([K, kTile]; the columns
// left over after the last full tile likewise, [K, N % kTile]), so a tile is one contiguous stream
// (interleaved streams read well under the memory bandwidth on the CPUs measured). Per k, a tile's
// weights are converted (F16C) once into kVectors registers and multiplied (FMA) by the broadcast
// x of up to kRows rows into kRows x kVectors accumulators: no horizontal sums, and a few rows cost
// little more than one (the conversions and the stream are shared). Tiles are split over torch's
// intra-op threads. fbgemm's fp16 kernel, which this replaces where it builds, runs on one thread.
//
// swiglu_fp16_weight, qkv_rotary_fp16_weight, attention and rms_norm fuse what a Llama-style
// decoder layer spends dozens of small operator calls on (`mtad.runtime.fused`).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#if !defined(__x86_64__) || !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "mtad's native kernels need an x86-64 CPU with AVX2, FMA and F16C"
#endif
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace {

// The accumulators must stay in registers: every loop over rows or columns of a tile is unrolled.
#define UNROLLED _Pragma("GCC unroll 16")

#if defined(__AVX512F__)
// 6 rows x 4 vectors = 24 accumulators, 4 weight vectors and a broadcast: 29 of 32 registers.
constexpr int64_t kLanes = 16, kVectors = 4, kRows = 6;
constexpr const char* kIsa = "avx512";
using vec = __m512;
inline vec load_w(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline vec load_y(const float* p) { return _mm512_loadu_ps(p); }
inline void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
inline vec broadcast(const float* p) { return _mm512_set1_ps(*p); }
inline vec fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
inline vec zero() { return _mm512_setzero_ps(); }
inline vec set1(float a) { return _mm512_set1_ps(a); }
inline vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
inline vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
inline vec div(vec a, vec b) { return _mm512_div_ps(a, b); }
inline vec min(vec a, vec b) { return _mm512_min_ps(a, b); }
inline vec max(vec a, vec b) { return _mm512_max_ps(a, b); }
inline vec round_nearest(vec a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vec times_pow2(vec a, vec n) { return _mm512_scalef_ps(a, n); }  // a * 2^n, n integral
inline vec zero_where_below(vec a, vec x, float bound) {
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, set1(bound), _CMP_LT_OQ), a, zero());
}
using ivec = __m512i;
inline ivec widen_s8(const uint8_t* p) { return _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline vec to_float(ivec a) { return _mm512_cvtepi32_ps(a); }
inline ivec load_words(const uint8_t* p) { return _mm512_loadu_si512(p); }
template <int N>
inline vec nibble_float(ivec words) {  // nibble N of every 32-bit lane, as a float
  return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(words, 4 * N), _mm512_set1_epi32(15)));
}
inline float sum_lanes(vec a) { return _mm512_reduce_add_ps(a); }
inline float max_lanes(vec a) { return _mm512_reduce_max_ps(a); }
#else
// 5 rows x 2 vectors = 10 accumulators, 2 weight vectors and a broadcast: 13 of 16 registers.
constexpr int64_t kLanes = 8, kVectors = 2, kRows = 5;
constexpr const char* kIsa = "avx2";
using vec = __m256;
inline vec load_w(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline vec load_y(const float* p) { return _mm256_loadu_ps(p); }
inline void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
inline vec broadcast(const float* p) { return _mm256_broadcast_ss(p); }
inline vec fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
inline vec zero() { return _mm256_setzero_ps(); }
inline vec set1(float a) { return _mm256_set1_ps(a); }
inline vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
inline vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
inline vec div(vec a, vec b) { return _mm256_div_ps(a, b); }
inline vec min(vec a, vec b) { return _mm256_min_ps(a, b); }
inline vec max(vec a, vec b) { return _mm256_max_ps(a, b); }
inline vec round_nearest(vec a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vec times_pow2(vec a, vec n) {  // a * 2^n for integral n in [-126, 127]: n is the exponent field
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(a, _mm256_castsi256_ps(bits));
}
inline vec zero_where_below(vec a, vec x, float bound) {
  return _mm256_blendv_ps(a, zero(), _mm256_cmp_ps(x, set1(bound), _CMP_LT_OQ));
}
using ivec = __m256i;
inline ivec widen_s8(const uint8_t* p) { return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))); }
inline vec to_float(ivec a) { return _mm256_cvtepi32_ps(a); }
inline ivec load_words(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
template <int N>
inline vec nibble_float(ivec words) {
  return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(words, 4 * N), _mm256_set1_epi32(15)));
}
inline float sum_lanes(vec a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline float max_lanes(vec a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}
#endif

// e^x per lane, within ~2 float ulps: x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two so n ln2
// is exact), e^r by its degree-6 Taylor polynomial (remainder under 1.2e-7 relative), times 2^n.
// Exactly 0 below -87.3 (under the smallest normal float, and -inf: a masked score); clamped at
// 88.3 (e^x overflows float just above 88.7).
inline vec exp_lanes(vec x) {
  const vec clamped = min(x, set1(88.3f));
  const vec n = round_nearest(mul(clamped, set1(1.44269504f)));
  vec r = fma(n, set1(-0.693359375f), clamped);
  r = fma(n, set1(2.12194440e-4f), r);
  vec p = set1(1.0f / 720.0f);
  p = fma(p, r, set1(1.0f / 120.0f));
  p = fma(p, r, set1(1.0f / 24.0f));
  p = fma(p, r, set1(1.0f / 6.0f));
  p = fma(p, r, set1(0.5f));
  p = fma(p, r, set1(1.0f));
  p = fma(p, r, set1(1.0f));
  return zero_where_below(times_pow2(p, max(n, set1(-126.0f))), x, -87.3f);
}

constexpr int64_t kTile = kLanes * kVectors;  // output columns per packed tile

// Rows [m0, m0 + R) of x against the V * kLanes output columns of a tile starting at column n0,
// whose weights lie k-major (`width` columns per k): each weight is converted once for R rows and
// each x element broadcast once for V vectors of columns.
template <int R, int V>
inline void tile(const float* x, const uint16_t* w, int64_t width, const float* bias, float* y, int64_t m0,
                 int64_t n0, int64_t K, int64_t N) {
  vec acc[R][V];
  UNROLLED for (int r = 0; r < R; ++r)
    UNROLLED for (int v = 0; v < V; ++v) acc[r][v] = bias ? load_y(bias + n0 + v * kLanes) : zero();
  for (int64_t k = 0; k < K; ++k, w += width) {
    vec wv[V];
    UNROLLED for (int v = 0; v < V; ++v) wv[v] = load_w(w + v * kLanes);
    UNROLLED for (int r = 0; r < R; ++r) {
      const vec xr = broadcast(x + (m0 + r) * K + k);
      UNROLLED for (int v = 0; v < V; ++v) acc[r][v] = fma(xr, wv[v], acc[r][v]);
    }
  }
  UNROLLED for (int r = 0; r < R; ++r)
    UNROLLED for (int v = 0; v < V; ++v) store(y + (m0 + r) * N + n0 + v * kLanes, acc[r][v]);
}

// tile<R, V> for R (1..kRows) and V (1..kVectors) known only at run time.
template <int R, int V>
inline void dispatch(int64_t rows, int64_t vectors, const float* x, const uint16_t* w, int64_t width,
                     const float* bias, float* y, int64_t m0, int64_t n0, int64_t K, int64_t N) {
  if constexpr (R > 0 && V > 0) {
    if (vectors < V) return dispatch<R, V - 1>(rows, vectors, x, w, width, bias, y, m0, n0, K, N);
    if (rows < R) return dispatch<R - 1, V>(rows, vectors, x, w, width, bias, y, m0, n0, K, N);
    tile<R, V>(x, w, width, bias, y, m0, n0, K, N);
  }
}

// One tile of the packed weight: the full tiles first ([K, kTile] each), then the columns left
// over ([K, N % kTile], a multiple of kLanes); rows in groups of kRows (the tile stays in cache).
inline void column_tile(const float* x, const uint16_t* packed, const float* bias, float* y, int64_t M,
                        int64_t t, int64_t K, int64_t N) {
  const int64_t n0 = t * kTile, width = std::min(kTile, N - n0);
  const uint16_t* w = packed + n0 * K;
  for (int64_t m = 0; m < M; m += kRows)
    dispatch<kRows, kVectors>(std::min(kRows, M - m), width / kLanes, x, w, width, bias, y, m, n0, K, N);
}

// Block formats: weights that lie exactly on a GGUF block grid (a model dequantized from Q4_1 or
// Q8_0, like the default target) are stored as those blocks, read in a third or a half of fp16's
// bytes and expanded to the very float32 values the dense model holds. A block is kBlock weights
// along K of one output column, w = d q + m (Q4_1: q in 0..15, d and m fp16) or w = d q (Q8_0: q
// int8, d fp16). Packed per tile of kTile columns (whole tiles only), per block of K: the tile's
// kTile d values (fp16), for Q4_1 its kTile m values, then the tile's levels. Q8_0: per k, a byte
// a column. Q4_1: per kSteps = 8 / kVectors steps of k, one vector of kLanes 32-bit words whose
// lane j holds 8 levels, nibble n = kk kVectors + v for column v kLanes + j at step kk: one load
// and a shift, mask and convert per vector of levels, no cross-lane shuffles. The product sums x q over a block in registers and adds d (sum x q) + m (sum x)
// to the output once per block, so the levels are converted, never dequantized, per k.
constexpr int64_t kBlock = 32;
enum class Format { kFp16, kQ4_1, kQ8_0 };

Format format_of(const at::Tensor& packed) {
  switch (packed.scalar_type()) {
    case at::kHalf: return Format::kFp16;
    case at::kByte: return Format::kQ4_1;
    case at::kChar: return Format::kQ8_0;
    default: TORCH_CHECK(false, "weight must be packed by mtad.runtime.native (fp16, uint8 Q4_1 or int8 Q8_0), got ",
                         packed.scalar_type());
  }
}

// Bytes one block of one column takes in the packed rows (Q4_1: d, m, 32 levels of 4 bits).
constexpr int64_t block_bytes(Format f) { return f == Format::kQ4_1 ? 20 : 34; }

// The weight's K (its input width): packed block rows are K / kBlock x block_bytes wide.
int64_t in_features(const at::Tensor& packed) {
  const Format f = format_of(packed);
  if (f == Format::kFp16) return packed.size(1);
  TORCH_CHECK(packed.size(1) % block_bytes(f) == 0, "a block-packed weight's rows must be whole blocks");
  return packed.size(1) / block_bytes(f) * kBlock;
}

void check_packed(const at::Tensor& packed) {
  const Format f = format_of(packed);
  const int64_t multiple = f == Format::kFp16 ? kLanes : kTile;
  TORCH_CHECK(packed.dim() == 2 && packed.is_contiguous() && packed.size(0) % multiple == 0,
              "weight must be packed by mtad.runtime.native ([N, ...] in tile order, N a multiple of ", multiple, ")");
}

// q[V..] = nibbles First + V.. of the words (the levels of one k step's columns).
template <int First, int V>
inline void q4_levels(ivec words, vec (&q)[kVectors]) {
  if constexpr (V < kVectors) {
    q[V] = nibble_float<First + V>(words);
    q4_levels<First, V + 1>(words, q);
  }
}

// Steps S.. of one vector of Q4_1 words (see above): x points at row m0's k of the first step.
template <int R, int S, int Steps>
inline void q4_steps(ivec words, const float* x, int64_t K, vec (&acc)[R][kVectors]) {
  if constexpr (S < Steps) {
    vec q[kVectors];
    q4_levels<S * kVectors, 0>(words, q);
    UNROLLED for (int r = 0; r < R; ++r) {
      const vec xr = broadcast(x + r * K + S);
      UNROLLED for (int v = 0; v < kVectors; ++v) acc[r][v] = fma(xr, q[v], acc[r][v]);
    }
    q4_steps<R, S + 1, Steps>(words, x, K, acc);
  }
}

// Rows [m0, m0 + R) of x against one block-packed tile (columns n0 .. n0 + kTile); xsum [M, K / kBlock]
// holds each row's sum over each block (Q4_1's offsets multiply it).
template <int R, Format F>
inline void block_tile(const float* x, const float* xsum, const uint8_t* w, const float* bias, float* y, int64_t m0,
                       int64_t n0, int64_t K, int64_t N) {
  constexpr int V = kVectors;
  constexpr int64_t level_bytes = F == Format::kQ4_1 ? kTile / 2 : kTile;  // one k of the tile
  constexpr int64_t scale_bytes = (F == Format::kQ4_1 ? 4 : 2) * kTile;
  const int64_t blocks = K / kBlock;
  UNROLLED for (int r = 0; r < R; ++r)
    UNROLLED for (int v = 0; v < V; ++v)
      store(y + (m0 + r) * N + n0 + v * kLanes, bias ? load_y(bias + n0 + v * kLanes) : zero());
  for (int64_t b = 0; b < blocks; ++b, w += scale_bytes + kBlock * level_bytes) {
    const uint8_t* levels = w + scale_bytes;
    vec acc[R][V];
    UNROLLED for (int r = 0; r < R; ++r) UNROLLED for (int v = 0; v < V; ++v) acc[r][v] = zero();
    if constexpr (F == Format::kQ4_1) {
      constexpr int steps = 8 / V;
      for (int64_t k = 0; k < kBlock; k += steps, levels += 4 * kLanes) {
        const ivec words = load_words(levels);
        q4_steps<R, 0, steps>(words, x + m0 * K + b * kBlock + k, K, acc);
      }
    } else {
      for (int64_t k = 0; k < kBlock; ++k, levels += level_bytes) {
        vec q[V];
        UNROLLED for (int v = 0; v < V; ++v) q[v] = to_float(widen_s8(levels + v * kLanes));
        UNROLLED for (int r = 0; r < R; ++r) {
          const vec xr = broadcast(x + (m0 + r) * K + b * kBlock + k);
          UNROLLED for (int v = 0; v < V; ++v) acc[r][v] = fma(xr, q[v], acc[r][v]);
        }
      }
    }
    const uint16_t* d = reinterpret_cast<const uint16_t*>(w);
    UNROLLED for (int v = 0; v < V; ++v) {
      const vec dv = load_w(d + v * kLanes);
      UNROLLED for (int r = 0; r < R; ++r) {
        float* out = y + (m0 + r) * N + n0 + v * kLanes;
        vec sum = fma(dv, acc[r][v], load_y(out));
        if constexpr (F == Format::kQ4_1) sum = fma(load_w(d + kTile + v * kLanes), broadcast(xsum + (m0 + r) * blocks + b), sum);
        store(out, sum);
      }
    }
  }
}

template <int R, Format F>
inline void block_dispatch(int64_t rows, const float* x, const float* xsum, const uint8_t* w, const float* bias,
                           float* y, int64_t m0, int64_t n0, int64_t K, int64_t N) {
  if constexpr (R > 0) {
    if (rows < R) return block_dispatch<R - 1, F>(rows, x, xsum, w, bias, y, m0, n0, K, N);
    block_tile<R, F>(x, xsum, w, bias, y, m0, n0, K, N);
  }
}

// out[M, N] (preallocated) = x[M, K] (contiguous float32) @ packed (+ bias).
void product(const float* xp, int64_t M, const at::Tensor& packed, const float* bias, float* yp) {
  const Format f = format_of(packed);
  const int64_t N = packed.size(0), K = in_features(packed), tiles = (N + kTile - 1) / kTile;
  if (f == Format::kFp16) {
    const uint16_t* wp = reinterpret_cast<const uint16_t*>(packed.const_data_ptr<at::Half>());
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) column_tile(xp, wp, bias, yp, M, t, K, N);
    });
    return;
  }
  const int64_t blocks = K / kBlock, tile_bytes = blocks * block_bytes(f) * kTile;
  std::vector<float> xsum(f == Format::kQ4_1 ? M * blocks : 0);
  for (int64_t i = 0; i < static_cast<int64_t>(xsum.size()); ++i) {
    const float* block = xp + i * kBlock;  // row i / blocks, block i % blocks: rows are K = blocks x kBlock
    float total = 0.0f;
    for (int64_t k = 0; k < kBlock; ++k) total += block[k];
    xsum[i] = total;
  }
  const uint8_t* wp = static_cast<const uint8_t*>(packed.const_data_ptr());
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      for (int64_t m = 0; m < M; m += kRows) {
        const int64_t rows = std::min(kRows, M - m);
        if (f == Format::kQ4_1)
          block_dispatch<kRows, Format::kQ4_1>(rows, xp, xsum.data(), wp + t * tile_bytes, bias, yp, m, t * kTile, K, N);
        else
          block_dispatch<kRows, Format::kQ8_0>(rows, xp, nullptr, wp + t * tile_bytes, bias, yp, m, t * kTile, K, N);
      }
  });
}

at::Tensor float_rows(const at::Tensor& input, int64_t width) {
  TORCH_CHECK(input.scalar_type() == at::kFloat, "input must be float32, got ", input.scalar_type());
  TORCH_CHECK(input.size(-1) == width, "input width ", input.size(-1), " does not match the weight's ", width);
  return input.contiguous();
}

// A bias as `width` contiguous float32 values; undefined where there is none.
at::Tensor float_bias(const std::optional<at::Tensor>& bias, int64_t width) {
  if (!bias.has_value() || !bias->defined()) return {};
  TORCH_CHECK(bias->numel() == width, "bias has ", bias->numel(), " values for ", width, " outputs");
  return bias->to(at::kFloat).contiguous();
}

const float* data_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() : nullptr; }

at::Tensor with_width(const at::Tensor& x, int64_t width) {
  auto sizes = x.sizes().vec();
  sizes.back() = width;
  return at::empty(sizes, x.options());
}

at::Tensor linear_fp16_weight(const at::Tensor& input, const at::Tensor& packed, const std::optional<at::Tensor>& bias) {
  check_packed(packed);
  const int64_t N = packed.size(0), K = in_features(packed);
  auto x = float_rows(input, K);
  const auto bias_f = float_bias(bias, N);
  auto out = with_width(x, N);
  product(x.const_data_ptr<float>(), x.numel() / K, packed, data_or_null(bias_f), out.data_ptr<float>());
  return out;
}

// A gated MLP in one call: down(silu(gate(x)) * up(x)), gate and up packed as one [2 I, K] weight
// (gate's rows first): one call where a module per projection makes three products, two
// elementwise ops and their intermediate tensors.
at::Tensor swiglu_fp16_weight(const at::Tensor& input, const at::Tensor& gate_up, const at::Tensor& down) {
  check_packed(gate_up);
  check_packed(down);
  const int64_t K = in_features(gate_up), I2 = gate_up.size(0), I = I2 / 2;
  TORCH_CHECK(I2 % 2 == 0 && in_features(down) == I, "gate_up must hold 2 x ", in_features(down),
              " rows for down's input, got ", I2);
  auto x = float_rows(input, K);
  const int64_t M = x.numel() / K;
  auto gated = at::empty({M, I2}, x.options());
  float* g = gated.data_ptr<float>();
  product(x.const_data_ptr<float>(), M, gate_up, nullptr, g);
  auto hidden = at::empty({M, I}, x.options());
  float* h = hidden.data_ptr<float>();
  const int64_t whole = I / kLanes * kLanes;  // I is a multiple of kLanes wherever the MLP fuses
  for (int64_t m = 0; m < M; ++m) {
    const float *gate = g + m * I2, *up = gate + I;
    for (int64_t i = 0; i < whole; i += kLanes) {
      const vec a = load_y(gate + i);
      store(h + m * I + i, mul(div(a, add(set1(1.0f), exp_lanes(mul(a, set1(-1.0f))))), load_y(up + i)));
    }
    for (int64_t i = whole; i < I; ++i) h[m * I + i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
  }
  auto out = with_width(x, down.size(0));
  product(h, M, down, nullptr, out.data_ptr<float>());
  return out;
}

// The attention projections in one call: x [B, S, K] @ packed [q; k; v] (+ bias), then the rotary
// embedding on q and k (Llama's rotate-half convention: the first half of each head pairs with the
// second) with cos/sin [B, S, D], each returned as [B, heads, S, D] as the attention expects.
std::vector<at::Tensor> qkv_rotary_fp16_weight(const at::Tensor& input, const at::Tensor& packed,
                                               const std::optional<at::Tensor>& bias, const at::Tensor& cos,
                                               const at::Tensor& sin, int64_t q_heads, int64_t kv_heads) {
  check_packed(packed);
  const int64_t K = in_features(packed), N = packed.size(0);
  TORCH_CHECK(input.dim() == 3, "input must be [batch, sequence, hidden]");
  const int64_t B = input.size(0), S = input.size(1), D = cos.size(-1), heads = q_heads + 2 * kv_heads;
  TORCH_CHECK(N == heads * D && D % 2 == 0, "the packed weight holds ", N, " outputs, not ", heads, " heads of ", D);
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.numel() == B * S * D && cos.scalar_type() == at::kFloat,
              "cos and sin must be float32 [batch, sequence, head_dim]");
  auto x = float_rows(input, K);
  const auto bias_f = float_bias(bias, N);
  auto projected = at::empty({B * S, N}, x.options());
  product(x.const_data_ptr<float>(), B * S, packed, data_or_null(bias_f), projected.data_ptr<float>());
  auto c = cos.contiguous(), s = sin.contiguous();
  auto q = at::empty({B, q_heads, S, D}, x.options());
  auto k = at::empty({B, kv_heads, S, D}, x.options());
  auto v = at::empty({B, kv_heads, S, D}, x.options());
  const float *pp = projected.const_data_ptr<float>(), *cp = c.const_data_ptr<float>(), *sp = s.const_data_ptr<float>();
  float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const int64_t half = D / 2;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < S; ++t) {
      const float* row = pp + (b * S + t) * N;
      const float *cr = cp + (b * S + t) * D, *sr = sp + (b * S + t) * D;
      for (int64_t h = 0; h < heads; ++h) {
        const float* src = row + h * D;
        float* dst;
        if (h < q_heads)
          dst = qp + ((b * q_heads + h) * S + t) * D;
        else if (h < q_heads + kv_heads)
          dst = kp + ((b * kv_heads + h - q_heads) * S + t) * D;
        else {
          std::copy(src, src + D, vp + ((b * kv_heads + h - q_heads - kv_heads) * S + t) * D);
          continue;
        }
        for (int64_t i = 0; i < half; ++i) {
          dst[i] = src[i] * cr[i] - src[i + half] * sr[i];
          dst[i + half] = src[i + half] * cr[i + half] + src[i] * sr[i + half];
        }
      }
    }
  return {q, k, v};
}

// Attention of few queries over a cache, in float32: query [B, Hq, S, D], keys and values
// [B, Hkv, L, D] (Hq a multiple of Hkv: query head h reads kv head h / (Hq / Hkv)), D a multiple of
// kLanes. Without a mask, query s sees keys 0 .. L - S + s (causal, the new tokens last); a mask
// [B or 1, 1, S, L] is either boolean (true: attend) or added to the scores (0 or -inf for a
// tree). Returns [B, S, Hq * D], the layout the output projection reads. A query that sees no key
// gets zeros. (Hq x B) heads are split over torch's threads; a head's scores live in one buffer.
at::Tensor attention(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
                     const std::optional<at::Tensor>& mask, double scaling) {
  TORCH_CHECK(query.dim() == 4 && keys.dim() == 4 && values.sizes() == keys.sizes(),
              "query must be [batch, heads, sequence, head_dim], keys and values [batch, kv_heads, length, head_dim]");
  for (const auto* t : {&query, &keys, &values})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->stride(-1) == 1, "query, keys and values must be float32 with "
                "contiguous head_dim");
  const int64_t B = query.size(0), Hq = query.size(1), S = query.size(2), D = query.size(3);
  const int64_t Hkv = keys.size(1), L = keys.size(2);
  TORCH_CHECK(keys.size(0) == B && keys.size(3) == D && Hkv > 0 && Hq % Hkv == 0 && D % kLanes == 0 && L >= S,
              "keys [", keys.sizes(), "] do not fit query [", query.sizes(), "]");
  at::Tensor m;
  bool boolean = false;
  if (mask.has_value() && mask->defined()) {
    m = *mask;
    TORCH_CHECK(m.dim() == 4 && (m.size(0) == B || m.size(0) == 1) && m.size(1) == 1 && m.size(2) == S && m.size(3) == L,
                "mask must be [batch or 1, 1, ", S, ", ", L, "], got [", m.sizes(), "]");
    boolean = m.scalar_type() == at::kBool;
    m = boolean ? m.contiguous() : m.to(at::kFloat).contiguous();
  }
  const bool* mb = boolean ? m.const_data_ptr<bool>() : nullptr;
  const float* mf = m.defined() && !boolean ? m.const_data_ptr<float>() : nullptr;
  const int64_t mask_batch_stride = m.defined() && m.size(0) == B ? S * L : 0;
  auto out = at::empty({B, S, Hq * D}, query.options());
  const float *qp = query.const_data_ptr<float>(), *kp = keys.const_data_ptr<float>(),
              *vp = values.const_data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t group = Hq / Hkv, vectors = D / kLanes;
  const float scale = static_cast<float>(scaling), minus_inf = -std::numeric_limits<float>::infinity();
  at::parallel_for(0, B * Hq, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(L + kLanes);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / Hq, h = bh % Hq, kvh = h / group;
      const float* kb = kp + b * keys.stride(0) + kvh * keys.stride(1);
      const float* vb = vp + b * values.stride(0) + kvh * values.stride(1);
      for (int64_t s = 0; s < S; ++s) {
        const float* q = qp + b * query.stride(0) + h * query.stride(1) + s * query.stride(2);
        const int64_t seen = mb || mf ? L : L - S + s + 1;  // causal: keys after the query's own are unseen
        const bool* mrow_b = mb ? mb + b * mask_batch_stride + s * L : nullptr;
        const float* mrow_f = mf ? mf + b * mask_batch_stride + s * L : nullptr;
        float top = minus_inf;
        for (int64_t j = 0; j < seen; ++j) {
          if (mrow_b && !mrow_b[j]) {
            scores[j] = minus_inf;
            continue;
          }
          const float* k = kb + j * keys.stride(2);
          vec dot = zero();
          for (int64_t v = 0; v < vectors; ++v) dot = fma(load_y(q + v * kLanes), load_y(k + v * kLanes), dot);
          const float score = sum_lanes(dot) * scale + (mrow_f ? mrow_f[j] : 0.0f);
          scores[j] = score;
          top = std::max(top, score);
        }
        float* o = op + (b * S + s) * Hq * D + h * D;
        if (top == minus_inf) {  // sees no key
          std::fill(o, o + D, 0.0f);
          continue;
        }
        std::fill(scores.begin() + seen, scores.begin() + seen + kLanes, minus_inf);  // pads the last vector
        vec total = zero();
        for (int64_t j = 0; j < seen; j += kLanes) {
          const vec e = exp_lanes(add(load_y(scores.data() + j), set1(-top)));
          store(scores.data() + j, e);
          total = add(total, e);
        }
        vec acc[8];
        const int64_t chunks = std::min<int64_t>(vectors, 8);
        for (int64_t d0 = 0; d0 < vectors; d0 += chunks) {
          const int64_t n = std::min(chunks, vectors - d0);
          for (int64_t v = 0; v < n; ++v) acc[v] = zero();
          for (int64_t j = 0; j < seen; ++j) {
            const float weight = scores[j];
            if (weight == 0.0f) continue;
            const vec w = set1(weight);
            const float* val = vb + j * values.stride(2) + d0 * kLanes;
            for (int64_t v = 0; v < n; ++v) acc[v] = fma(w, load_y(val + v * kLanes), acc[v]);
          }
          const vec inverse = set1(1.0f / sum_lanes(total));
          for (int64_t v = 0; v < n; ++v) store(o + (d0 + v) * kLanes, mul(acc[v], inverse));
        }
      }
    }
  });
  return out;
}

// Llama-style RMSNorm in float32: weight * x / sqrt(mean(x^2) + eps), one pass per row.
at::Tensor rms_norm(const at::Tensor& input, const at::Tensor& weight, double eps) {
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.dim() == 1, "weight must be a 1-D float32 tensor");
  const int64_t H = weight.size(0);
  auto x = float_rows(input, H);
  auto w = weight.contiguous();
  auto out = at::empty_like(x);
  const float *xp = x.const_data_ptr<float>(), *wp = w.const_data_ptr<float>();
  float* yp = out.data_ptr<float>();
  for (int64_t m = 0, rows = x.numel() / H; m < rows; ++m) {
    const float* row = xp + m * H;
    float squares = 0.0f;
    for (int64_t i = 0; i < H; ++i) squares += row[i] * row[i];
    const float scale = 1.0f / std::sqrt(squares / static_cast<float>(H) + static_cast<float>(eps));
    for (int64_t i = 0; i < H; ++i) yp[m * H + i] = wp[i] * (row[i] * scale);
  }
  return out;
}

// residual += update, elementwise (same shapes, both float32 and contiguous).
void add_into(at::Tensor& residual_out, const at::Tensor& update) {
  float* r = residual_out.data_ptr<float>();
  const float* u = update.const_data_ptr<float>();
  for (int64_t i = 0, n = residual_out.numel(); i < n; ++i) r[i] += u[i];
}

// The calls of a Llama-style decoder layer (`mtad.runtime.fused.LeanLayer`): the input norm with
// the q/k/v projections and rotary embedding; the output projection added to the residual; the
// post-attention norm, gated MLP and residual. What the layer's modules do in a dozen calls.
std::vector<at::Tensor> norm_qkv_rotary_fp16_weight(const at::Tensor& input, const at::Tensor& norm_weight,
                                                    double eps, const at::Tensor& packed,
                                                    const std::optional<at::Tensor>& bias, const at::Tensor& cos,
                                                    const at::Tensor& sin, int64_t q_heads, int64_t kv_heads) {
  return qkv_rotary_fp16_weight(rms_norm(input, norm_weight, eps), packed, bias, cos, sin, q_heads, kv_heads);
}

at::Tensor linear_residual_fp16_weight(const at::Tensor& input, const at::Tensor& packed,
                                       const std::optional<at::Tensor>& bias, const at::Tensor& residual) {
  auto out = linear_fp16_weight(input, packed, bias);
  TORCH_CHECK(residual.sizes() == out.sizes() && residual.scalar_type() == at::kFloat,
              "residual [", residual.sizes(), "] does not match the product [", out.sizes(), "]");
  add_into(out, residual.contiguous());
  return out;
}

at::Tensor norm_swiglu_residual_fp16_weight(const at::Tensor& input, const at::Tensor& norm_weight, double eps,
                                            const at::Tensor& gate_up, const at::Tensor& down) {
  auto out = swiglu_fp16_weight(rms_norm(input, norm_weight, eps), gate_up, down);
  TORCH_CHECK(input.sizes() == out.sizes(), "the MLP's output [", out.sizes(), "] does not match its input");
  add_into(out, input.contiguous());
  return out;
}

std::vector<int64_t> tile_shape() { return {kTile, kLanes}; }

std::string isa() { return kIsa; }

}  // namespace

TORCH_LIBRARY(mtad_native, m) {
  m.def("linear_fp16_weight(Tensor input, Tensor packed, Tensor? bias) -> Tensor");
  m.def("swiglu_fp16_weight(Tensor input, Tensor gate_up, Tensor down) -> Tensor");
  m.def("rms_norm(Tensor input, Tensor weight, float eps) -> Tensor");
  m.def(
      "qkv_rotary_fp16_weight(Tensor input, Tensor packed, Tensor? bias, Tensor cos, Tensor sin, int q_heads, "
      "int kv_heads) -> Tensor[]");
  m.def("attention(Tensor query, Tensor keys, Tensor values, Tensor? mask, float scaling) -> Tensor");
  m.def(
      "norm_qkv_rotary_fp16_weight(Tensor input, Tensor norm_weight, float eps, Tensor packed, Tensor? bias, "
      "Tensor cos, Tensor sin, int q_heads, int kv_heads) -> Tensor[]");
  m.def("linear_residual_fp16_weight(Tensor input, Tensor packed, Tensor? bias, Tensor residual) -> Tensor");
  m.def(
      "norm_swiglu_residual_fp16_weight(Tensor input, Tensor norm_weight, float eps, Tensor gate_up, Tensor down) "
      "-> Tensor");
  m.def("tile_shape() -> int[]", tile_shape);
  m.def("isa() -> str", isa);
}
TORCH_LIBRARY_IMPL(mtad_native, CPU, m) {
  m.impl("linear_fp16_weight", linear_fp16_weight);
  m.impl("swiglu_fp16_weight", swiglu_fp16_weight);
  m.impl("rms_norm", rms_norm);
  m.impl("attention", attention);
  m.impl("norm_qkv_rotary_fp16_weight", norm_qkv_rotary_fp16_weight);
  m.impl("linear_residual_fp16_weight", linear_residual_fp16_weight);
  m.impl("norm_swiglu_residual_fp16_weight", norm_swiglu_residual_fp16_weight);
  m.impl("qkv_rotary_fp16_weight", qkv_rotary_fp16_weight);
}
