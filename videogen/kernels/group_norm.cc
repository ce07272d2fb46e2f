// Per-frame group normalisation of channels-last video (no affine transform) as two XLA FFI
// handlers: the normalised values, and the input gradient. Compiled and loaded by
// videogen/kernels/group_norm.py, which defines the gradients of both.
//
// XLA:CPU computes the tokenizer's group norms at about 2 GFLOP/s, 21% of a 17x64x64 train
// step (BUILD_NOTES.md, issue 19): its reductions over (h, w, channels of a group) of a
// channels-last map run as several strided passes. Here each thread takes whole frames: a
// frame [h*w, c] is at most a few hundred KB at the tokenizer's shapes, so it stays in the
// core's cache between the pass that sums it and the pass that writes the result, and both
// passes run along contiguous channels.
//
// Buffers: x, y, dy, dx [frames, positions, channels]. Sums are per channel in double, then
// per group, so E[x^2] - E[x]^2 loses nothing that XLA's two-pass float variance keeps.
#include <cmath>
#include <cstdint>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using F32 = ffi::Buffer<ffi::F32>;

namespace {

struct Extent {
  int64_t frames, positions, channels, groups;
  int64_t width() const { return channels / groups; }
  int64_t frame_size() const { return positions * channels; }
};

// The Python side reshapes to [frames, positions, channels] and checks the groups; this
// guards against a caller that did not.
ffi::Error Read(const F32& x, int64_t groups, Extent* e) {
  auto dims = x.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("group norm wants [frames, positions, channels]");
  *e = Extent{dims[0], dims[1], dims[2], groups};
  if (groups <= 0 || e->channels % groups) return ffi::Error::InvalidArgument("channels not divisible by groups");
  return ffi::Error::Success();
}

// One frame's group statistics, broadcast back to its channels.
struct Stats {
  std::vector<float> mean, rstd;  // per channel
  std::vector<double> sum_x, sum_xx, sum_g, sum_gx;

  explicit Stats(int64_t channels)
      : mean(channels), rstd(channels), sum_x(channels), sum_xx(channels), sum_g(channels), sum_gx(channels) {}

  // Mean and 1/sqrt(var + epsilon) of each group of frame x; with a gradient g, also
  // sum_g / sum_gx per channel (zeroed and filled here).
  void Compute(const float* x, const float* g, const Extent& e, float epsilon) {
    for (auto* v : {&sum_x, &sum_xx, &sum_g, &sum_gx}) std::fill(v->begin(), v->end(), 0.0);
    for (int64_t p = 0; p < e.positions; ++p) {
      const float* row = x + p * e.channels;
      for (int64_t c = 0; c < e.channels; ++c) {
        sum_x[c] += row[c];
        sum_xx[c] += static_cast<double>(row[c]) * row[c];
      }
      if (g == nullptr) continue;
      const float* grad = g + p * e.channels;
      for (int64_t c = 0; c < e.channels; ++c) {
        sum_g[c] += grad[c];
        sum_gx[c] += static_cast<double>(grad[c]) * row[c];
      }
    }
    const double count = static_cast<double>(e.positions * e.width());
    for (int64_t group = 0; group < e.groups; ++group) {
      const int64_t first = group * e.width(), last = first + e.width();
      double s = 0.0, ss = 0.0;
      for (int64_t c = first; c < last; ++c) s += sum_x[c], ss += sum_xx[c];
      const double m = s / count;
      const double var = std::max(ss / count - m * m, 0.0);
      for (int64_t c = first; c < last; ++c) {
        mean[c] = static_cast<float>(m);
        rstd[c] = static_cast<float>(1.0 / std::sqrt(var + epsilon));
      }
    }
  }
};

ffi::Error ForwardImpl(F32 x, ffi::ResultBuffer<ffi::F32> y, int64_t groups, float epsilon) {
  Extent e;
  if (ffi::Error error = Read(x, groups, &e); error.failure()) return error;
#pragma omp parallel
  {
    Stats stats(e.channels);
#pragma omp for schedule(static)
    for (int64_t f = 0; f < e.frames; ++f) {
      const float* in = x.typed_data() + f * e.frame_size();
      float* out = y->typed_data() + f * e.frame_size();
      stats.Compute(in, nullptr, e, epsilon);
      const float* m = stats.mean.data();
      const float* r = stats.rstd.data();
      for (int64_t p = 0; p < e.positions; ++p) {
        const float* row = in + p * e.channels;
        float* o = out + p * e.channels;
        for (int64_t c = 0; c < e.channels; ++c) o[c] = (row[c] - m[c]) * r[c];
      }
    }
  }
  return ffi::Error::Success();
}

// dx = rstd * (dy - mean(dy) - x̂ * mean(dy * x̂)), means over each group of a frame, with
// mean(dy * x̂) = rstd * (mean(dy * x) - mean(x) * mean(dy)).
ffi::Error InputGradImpl(F32 x, F32 dy, ffi::ResultBuffer<ffi::F32> dx, int64_t groups, float epsilon) {
  Extent e;
  if (ffi::Error error = Read(x, groups, &e); error.failure()) return error;
  const double count = static_cast<double>(e.positions * e.width());
#pragma omp parallel
  {
    Stats stats(e.channels);
    std::vector<float> shift(e.channels), slope(e.channels);
#pragma omp for schedule(static)
    for (int64_t f = 0; f < e.frames; ++f) {
      const int64_t offset = f * e.frame_size();
      const float* in = x.typed_data() + offset;
      const float* grad = dy.typed_data() + offset;
      float* out = dx->typed_data() + offset;
      stats.Compute(in, grad, e, epsilon);
      const float* m = stats.mean.data();
      const float* r = stats.rstd.data();
      for (int64_t group = 0; group < e.groups; ++group) {
        const int64_t first = group * e.width(), last = first + e.width();
        double s = 0.0, sx = 0.0;
        for (int64_t c = first; c < last; ++c) s += stats.sum_g[c], sx += stats.sum_gx[c];
        const double mean_g = s / count;
        const double mean_gxhat = r[first] * (sx / count - m[first] * mean_g);
        for (int64_t c = first; c < last; ++c) {
          // dx = r * dy - shift - (x - m) * slope.
          shift[c] = static_cast<float>(r[first] * mean_g);
          slope[c] = static_cast<float>(r[first] * r[first] * mean_gxhat);
        }
      }
      const float* a = shift.data();
      const float* b = slope.data();
      for (int64_t p = 0; p < e.positions; ++p) {
        const float* row = in + p * e.channels;
        const float* g = grad + p * e.channels;
        float* o = out + p * e.channels;
        for (int64_t c = 0; c < e.channels; ++c) o[c] = r[c] * g[c] - a[c] - (row[c] - m[c]) * b[c];
      }
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GroupNormForward, ForwardImpl,
                              ffi::Ffi::Bind().Arg<F32>().Ret<F32>().Attr<int64_t>("groups").Attr<float>(
                                  "epsilon"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(GroupNormInputGrad, InputGradImpl,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>().Attr<int64_t>("groups").Attr<float>(
                                  "epsilon"));
