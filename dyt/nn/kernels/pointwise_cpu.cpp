// CPU kernels for the point-wise norms: y = weight * f(alpha * x + shift) + bias, f = tanh (DyT) or erf (Derf).
//
// Forward: one pass (read x, write y). Backward: one pass that reads x and grad_y once, recomputes f,
// writes grad_x once and keeps per-thread partial sums for alpha, shift, weight and bias, so it moves
// no more memory than LayerNorm's backward. Values are computed in fp32 for fp32 and bf16 tensors and
// rounded once on store. Vectorised with ATen's Vectorized<float> (AVX2/AVX512 as the build flags
// select, a portable fallback otherwise) and parallelised with at::parallel_for (torch's thread count).
//
// Layouts: channels_last sees x as (rows, C) with the channel innermost; channels_first as
// (N, C, S) with one channel per contiguous plane of S elements. Inputs arrive contiguous, parameters
// as fp32 (the Python side makes them so).
//
// Registered as torch.ops.dyt_kernels.{forward,backward}; built on first use by dyt/nn/kernels/cpp.py.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
using at::BFloat16;

// ---- tanh and erf -------------------------------------------------------------------------------
// tanh(z) ~ z * P(z^2) / Q(z^2) on |z| <= 9, a (9, 8) rational fitted to minimise the absolute error
// against float64 tanh (the same coefficients as fast_tanh in kernels/cpu.py and the Triton kernel, so
// all back-ends agree up to rounding). Beyond 9 the fp32 tanh is 1 to within an ulp: clamping the input
// there and the output to [-1, 1] gives exact saturation and tanh(+-inf) = +-1. ATen's clamp keeps NaN.
constexpr float kP[] = {1.0f, 0.13380317386484367f, 0.003494756018877109f, 2.059596563845547e-05f,
                        1.3337769398918259e-08f};
constexpr float kQ[] = {1.0f, 0.4671363486721226f, 0.025873788581090275f, 0.00032842971563776984f,
                        7.769365008427698e-07f};
constexpr float kClamp = 9.0f;
constexpr float kTwoOverSqrtPi = 1.1283791670955126f;

inline Vec horner(const float (&c)[5], const Vec& s) {
  Vec out = at::vec::fmadd(s, Vec(c[4]), Vec(c[3]));
  out = at::vec::fmadd(out, s, Vec(c[2]));
  out = at::vec::fmadd(out, s, Vec(c[1]));
  return at::vec::fmadd(out, s, Vec(c[0]));
}

inline Vec tanh_vec(const Vec& z_in) {
  const Vec z = at::vec::clamp(z_in, Vec(-kClamp), Vec(kClamp));
  const Vec s = z * z;
  return at::vec::clamp(z * horner(kP, s) / horner(kQ, s), Vec(-1.0f), Vec(1.0f));
}

// erf: SLEEF's vectorised erf (1-ulp; the library PyTorch links and exports), a scalar loop where the
// build has no SIMD instruction set.
inline Vec erf_vec(const Vec& z) {
#if defined(CPU_CAPABILITY_AVX512)
  return Vec(Sleef_erff16_u10(z));
#elif defined(CPU_CAPABILITY_AVX2)
  return Vec(Sleef_erff8_u10(z));
#else
  return z.map(static_cast<float (*)(float)>(std::erf));
#endif
}

template <bool kErf>
struct Squash {
  // f(z) alone (forward) and f(z) with f'(z) (backward).
  static Vec value(const Vec& z) {
    if constexpr (kErf) {
      return erf_vec(z);
    } else {
      return tanh_vec(z);
    }
  }
  static Vec value_and_slope(const Vec& z, Vec& slope) {
    if constexpr (kErf) {
      slope = Vec(kTwoOverSqrtPi) * (Vec(0.0f) - z * z).exp();
      return erf_vec(z);
    } else {
      const Vec t = tanh_vec(z);
      slope = Vec(1.0f) - t * t;
      return t;
    }
  }
};

// ---- loads and stores of n <= Vec::size() elements as fp32 ----------------------------------------
inline Vec load(const float* p, int64_t n) { return n == Vec::size() ? Vec::loadu(p) : Vec::loadu(p, n); }

inline Vec load(const BFloat16* p, int64_t n) {
  if (n == Vec::size()) {
    Vec out;
    at::vec::load_to_float(p, out);
    return out;
  }
  float buf[Vec::size()] = {};
  std::copy(p, p + n, buf);
  return Vec::loadu(buf, n);
}

inline void store(const Vec& v, float* p, int64_t n) { v.store(p, n); }

inline void store(const Vec& v, BFloat16* p, int64_t n) {
  // Two fp32 vectors fill one bf16 vector; only its first n lanes are written.
  at::vec::convert_from_float<BFloat16>(v, v).store(p, n);
}

inline double hsum(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](const Vec& a, const Vec& b) { return a + b; }, v);
}

// The scalars of the layer. A "run" is one row (channels_last: element i has channel i, `per_channel`)
// or one plane (channels_first: a single channel, its weight and bias broadcast).
struct Scalars {
  float alpha, shift;
};

template <bool kErf, typename T>
void forward_run(const T* x, T* y, int64_t len, const Scalars& p, const float* w, const float* b, bool per_channel) {
  const Vec alpha(p.alpha), shift(p.shift);
  for (int64_t i = 0; i < len; i += Vec::size()) {
    const int64_t n = std::min<int64_t>(Vec::size(), len - i);
    const Vec wv = per_channel ? Vec::loadu(w + i, n) : Vec(*w);
    const Vec bv = per_channel ? Vec::loadu(b + i, n) : Vec(*b);
    const Vec z = kErf ? at::vec::fmadd(alpha, load(x + i, n), shift) : alpha * load(x + i, n);
    store(at::vec::fmadd(wv, Squash<kErf>::value(z), bv), y + i, n);
  }
}

// Backward of one run: writes grad_x and adds the run's sums to gw/gb (per channel, or the single
// channel's scalars when not per_channel) and to the alpha/shift accumulators.
struct RunSums {
  double alpha = 0.0, shift = 0.0;
};

template <bool kErf, typename T>
void backward_run(const T* g, const T* x, T* gx, int64_t len, const Scalars& p, const float* w, bool per_channel,
                  float* gw, float* gb, RunSums& sums) {
  const Vec alpha(p.alpha), shift(p.shift);
  Vec acc_alpha(0.0f), acc_shift(0.0f), acc_w(0.0f), acc_b(0.0f);
  for (int64_t i = 0; i < len; i += Vec::size()) {
    const int64_t n = std::min<int64_t>(Vec::size(), len - i);
    const Vec xv = load(x + i, n), gv = load(g + i, n);  // lanes past n load as 0 and add nothing
    const Vec wv = per_channel ? Vec::loadu(w + i, n) : Vec(*w);
    const Vec z = kErf ? at::vec::fmadd(alpha, xv, shift) : alpha * xv;
    Vec slope;
    const Vec f = Squash<kErf>::value_and_slope(z, slope);
    const Vec gz = gv * wv * slope;  // dL/dz
    store(alpha * gz, gx + i, n);
    acc_alpha = at::vec::fmadd(gz, xv, acc_alpha);
    if constexpr (kErf) acc_shift = acc_shift + gz;
    if (per_channel) {
      at::vec::fmadd(gv, f, Vec::loadu(gw + i, n)).store(gw + i, n);
      (gv + Vec::loadu(gb + i, n)).store(gb + i, n);
    } else {
      acc_w = at::vec::fmadd(gv, f, acc_w);
      acc_b = acc_b + gv;
    }
  }
  sums.alpha += hsum(acc_alpha);
  sums.shift += hsum(acc_shift);
  if (!per_channel) {
    *gw += static_cast<float>(hsum(acc_w));
    *gb += static_cast<float>(hsum(acc_b));
  }
}

// Rows (channels_last) or planes (channels_first) per parallel task: about 32K elements each.
inline int64_t grain(int64_t len) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(len, 1)); }

// How many rows a thread sums in fp32 before adding them into its fp64 partials (accuracy of the
// weight and bias gradients over many rows; costs one pass over 2C floats per block).
constexpr int64_t kFlushRows = 256;

template <bool kErf, typename T>
void forward_impl(const at::Tensor& x, at::Tensor& y, const Scalars& p, const float* w, const float* b,
                  bool channels_first) {
  const int64_t C = x.size(1);
  const int64_t len = channels_first ? x.size(2) : x.size(1);
  const int64_t runs = x.numel() / std::max<int64_t>(len, 1);
  const T* xp = x.const_data_ptr<T>();
  T* yp = y.mutable_data_ptr<T>();
  at::parallel_for(0, runs, grain(len), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t c = channels_first ? r % C : 0;
      forward_run<kErf>(xp + r * len, yp + r * len, len, p, w + c, b + c, !channels_first);
    }
  });
}

// partials: (threads, 2C + 2) fp64, rows of [grad weight (C), grad bias (C), grad alpha, grad shift];
// the caller sums over threads.
template <bool kErf, typename T>
void backward_impl(const at::Tensor& g, const at::Tensor& x, at::Tensor& gx, at::Tensor& partials, const Scalars& p,
                   const float* w, bool channels_first) {
  const int64_t C = x.size(1);
  const int64_t len = channels_first ? x.size(2) : x.size(1);
  const int64_t runs = x.numel() / std::max<int64_t>(len, 1);
  const T* gp = g.const_data_ptr<T>();
  const T* xp = x.const_data_ptr<T>();
  T* gxp = gx.mutable_data_ptr<T>();
  double* part = partials.mutable_data_ptr<double>();
  at::parallel_for(0, runs, grain(len), [&](int64_t begin, int64_t end) {
    double* mine = part + at::get_thread_num() * (2 * C + 2);
    std::vector<float> block(2 * C, 0.0f);  // fp32 sums of up to kFlushRows rows
    auto flush = [&] {
      for (int64_t k = 0; k < 2 * C; ++k) mine[k] += block[k];
      std::fill(block.begin(), block.end(), 0.0f);
    };
    RunSums sums;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t c = channels_first ? r % C : 0;
      backward_run<kErf>(gp + r * len, xp + r * len, gxp + r * len, len, p, w + c, !channels_first,
                         block.data() + c, block.data() + C + c, sums);
      if ((r - begin + 1) % kFlushRows == 0) flush();
    }
    flush();
    mine[2 * C] += sums.alpha;
    mine[2 * C + 1] += sums.shift;
  });
}

// ---- dispatch and registration ------------------------------------------------------------------
void check_input(const at::Tensor& x, bool channels_first) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), "dyt_kernels: x must be a contiguous CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "dyt_kernels: x must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == (channels_first ? 3 : 2), "dyt_kernels: x must be (rows, C) or (N, C, S)");
}

void check_params(const at::Tensor& t, int64_t numel, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == numel, "dyt_kernels: ", name,
              " must be a contiguous float32 tensor of ", numel, " elements");
}

Scalars scalars(const at::Tensor& alpha, const at::Tensor& shift) {
  check_params(alpha, 1, "alpha");
  check_params(shift, 1, "shift");
  return {alpha.item<float>(), shift.item<float>()};
}

at::Tensor forward(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& shift, const at::Tensor& weight,
                   const at::Tensor& bias, bool erf, bool channels_first) {
  check_input(x, channels_first);
  check_params(weight, x.size(1), "weight");
  check_params(bias, x.size(1), "bias");
  at::Tensor y = at::empty_like(x);
  const Scalars p = scalars(alpha, shift);
  const float *w = weight.const_data_ptr<float>(), *b = bias.const_data_ptr<float>();
  if (x.scalar_type() == at::kFloat) {
    erf ? forward_impl<true, float>(x, y, p, w, b, channels_first)
        : forward_impl<false, float>(x, y, p, w, b, channels_first);
  } else {
    erf ? forward_impl<true, BFloat16>(x, y, p, w, b, channels_first)
        : forward_impl<false, BFloat16>(x, y, p, w, b, channels_first);
  }
  return y;
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& g, const at::Tensor& x, const at::Tensor& alpha,
                                            const at::Tensor& shift, const at::Tensor& weight, bool erf,
                                            bool channels_first) {
  check_input(x, channels_first);
  check_params(weight, x.size(1), "weight");
  TORCH_CHECK(g.sizes() == x.sizes() && g.scalar_type() == x.scalar_type() && g.is_contiguous(),
              "dyt_kernels: grad must be contiguous with x's shape and dtype");
  at::Tensor gx = at::empty_like(x);
  at::Tensor partials = at::zeros({at::get_num_threads(), 2 * x.size(1) + 2}, x.options().dtype(at::kDouble));
  const Scalars p = scalars(alpha, shift);
  const float* w = weight.const_data_ptr<float>();
  if (x.scalar_type() == at::kFloat) {
    erf ? backward_impl<true, float>(g, x, gx, partials, p, w, channels_first)
        : backward_impl<false, float>(g, x, gx, partials, p, w, channels_first);
  } else {
    erf ? backward_impl<true, BFloat16>(g, x, gx, partials, p, w, channels_first)
        : backward_impl<false, BFloat16>(g, x, gx, partials, p, w, channels_first);
  }
  return {gx, partials};
}

}  // namespace

TORCH_LIBRARY(dyt_kernels, m) {
  m.def("forward(Tensor x, Tensor alpha, Tensor shift, Tensor weight, Tensor bias, bool erf, bool channels_first) "
        "-> Tensor");
  m.def("backward(Tensor grad, Tensor x, Tensor alpha, Tensor shift, Tensor weight, bool erf, bool channels_first) "
        "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dyt_kernels, CPU, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
}
