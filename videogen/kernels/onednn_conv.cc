// oneDNN's 2-D convolution (NHWC activations, HWIO kernels, float32) as three XLA FFI
// handlers: forward, gradient of the input, gradient of the kernel. Compiled and loaded by
// videogen/kernels/onednn_conv.py; XLA:CPU's own convolution runs its backward pass at a
// quarter of the matmul peak on the tokenizer's widest maps, oneDNN's at 0.7 (BUILD_NOTES.md,
// issue 19).
#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = memory::format_tag;
using F32 = ffi::Buffer<ffi::F32>;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// XLA:CPU runs independent custom calls at the same time (the temporal taps' convolutions of
// one layer share a shape, so a primitive too): a stream per thread, and every call brings
// its own scratchpad (`User`), since a library-owned one would be shared between calls.
dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

dnnl::primitive_attr User() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// A convolution's shape: input [n, h, w, ci], kernel [kh, kw, ci, co], strides, padding.
struct Shape {
  int64_t n, h, w, ci, co, kh, kw, sh, sw, ph0, ph1, pw0, pw1;
  int64_t oh() const { return (h + ph0 + ph1 - kh) / sh + 1; }
  int64_t ow() const { return (w + pw0 + pw1 - kw) / sw + 1; }
  memory::desc src() const { return {{n, ci, h, w}, memory::data_type::f32, Tag::nhwc}; }
  memory::desc dst() const { return {{n, co, oh(), ow()}, memory::data_type::f32, Tag::nhwc}; }
  memory::desc hwio() const { return {{co, ci, kh, kw}, memory::data_type::f32, Tag::hwio}; }
  // oneDNN picks the kernel layout its fastest implementation wants; we reorder to it.
  memory::desc any() const { return {{co, ci, kh, kw}, memory::data_type::f32, Tag::any}; }
  memory::dims strides() const { return {sh, sw}; }
  std::array<int64_t, 13> key() const { return {n, h, w, ci, co, kh, kw, sh, sw, ph0, ph1, pw0, pw1}; }
  memory::dims lo() const { return {ph0, pw0}; }
  memory::dims hi() const { return {ph1, pw1}; }
};

// The convolution's shape from its input and kernel (forward), from the output gradient and
// kernel plus the input's height and width (input gradient), or from the input and output
// gradient plus the kernel's height and width (kernel gradient).
Shape MakeShape(const F32& x, const F32& k, int64_t sh, int64_t sw, int64_t ph0, int64_t ph1,
                int64_t pw0, int64_t pw1) {
  auto xd = x.dimensions();
  auto kd = k.dimensions();
  return {xd[0], xd[1], xd[2], xd[3], kd[3], kd[0], kd[1], sh, sw, ph0, ph1, pw0, pw1};
}

Shape InputGradShape(const F32& dy, const F32& k, int64_t h, int64_t w, int64_t sh, int64_t sw,
                     int64_t ph0, int64_t ph1, int64_t pw0, int64_t pw1) {
  auto kd = k.dimensions();
  return {dy.dimensions()[0], h, w, kd[2], kd[3], kd[0], kd[1], sh, sw, ph0, ph1, pw0, pw1};
}

Shape KernelGradShape(const F32& x, const F32& dy, int64_t kh, int64_t kw, int64_t sh,
                      int64_t sw, int64_t ph0, int64_t ph1, int64_t pw0, int64_t pw1) {
  auto xd = x.dimensions();
  return {xd[0], xd[1], xd[2], xd[3], dy.dimensions()[3], kh, kw, sh, sw, ph0, ph1, pw0, pw1};
}

dnnl::convolution_forward::primitive_desc Forward(const Shape& s) {
  return {Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
          s.src(), s.any(), s.dst(), s.strides(), s.lo(), s.hi(), User()};
}

// Building a primitive JIT-compiles its kernel (tens of ms): one per shape, kept.
template <typename Primitive, typename Make>
const std::pair<typename Primitive::primitive_desc, Primitive>& Cached(const Shape& s, Make make) {
  static std::map<std::array<int64_t, 13>, std::pair<typename Primitive::primitive_desc, Primitive>>
      cache;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(s.key());
  if (it == cache.end()) {
    typename Primitive::primitive_desc pd = make();
    it = cache.emplace(s.key(), std::make_pair(pd, Primitive(pd))).first;
  }
  return it->second;
}

// A backward primitive of the convolution `s` (its forward's description is oneDNN's hint).
template <typename Primitive>
const std::pair<typename Primitive::primitive_desc, Primitive>& Backward(const Shape& s) {
  return Cached<Primitive>(s, [&] {
    return typename Primitive::primitive_desc(Engine(), dnnl::algorithm::convolution_direct,
                                              s.src(), s.any(), s.dst(), s.strides(), s.lo(),
                                              s.hi(), Forward(s), User());
  });
}

// `user` (HWIO) in the layout `wanted`, reordered if they differ.
memory InLayout(memory user, const memory::desc& wanted) {
  if (wanted == user.get_desc()) return user;
  memory out(wanted, Engine());
  dnnl::reorder(user, out).execute(Stream(), user, out);
  return out;
}

// Runs `primitive` on `args` with a scratchpad of its own and waits for it.
template <typename Primitive, typename Desc>
void Run(const Primitive& primitive, const Desc& pd, std::unordered_map<int, memory> args) {
  args.insert({DNNL_ARG_SCRATCHPAD, memory(pd.scratchpad_desc(), Engine())});
  primitive.execute(Stream(), args);
  Stream().wait();
}

ffi::Error ForwardImpl(F32 x, F32 k, ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw,
                       int64_t ph0, int64_t ph1, int64_t pw0, int64_t pw1) {
  Shape s = MakeShape(x, k, sh, sw, ph0, ph1, pw0, pw1);
  const auto& [pd, primitive] =
      Cached<dnnl::convolution_forward>(s, [&] { return Forward(s); });
  memory src(s.src(), Engine(), x.typed_data());
  memory dst(s.dst(), Engine(), y->typed_data());
  memory weights = InLayout(memory(s.hwio(), Engine(), k.typed_data()), pd.weights_desc());
  Run(primitive, pd, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst}});
  return ffi::Error::Success();
}

// dx from dy and the kernel; `h` and `w` are the input's (strides map several sizes to one).
ffi::Error InputGradImpl(F32 dy, F32 k, ffi::ResultBuffer<ffi::F32> dx, int64_t h, int64_t w,
                         int64_t sh, int64_t sw, int64_t ph0, int64_t ph1, int64_t pw0,
                         int64_t pw1) {
  Shape s = InputGradShape(dy, k, h, w, sh, sw, ph0, ph1, pw0, pw1);
  const auto& [pd, primitive] = Backward<dnnl::convolution_backward_data>(s);
  memory diff_dst(s.dst(), Engine(), dy.typed_data());
  memory diff_src(s.src(), Engine(), dx->typed_data());
  memory weights = InLayout(memory(s.hwio(), Engine(), k.typed_data()), pd.weights_desc());
  Run(primitive, pd,
      {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DIFF_SRC, diff_src}});
  return ffi::Error::Success();
}

// dk from x and dy; `kh` and `kw` are the kernel's window.
ffi::Error KernelGradImpl(F32 x, F32 dy, ffi::ResultBuffer<ffi::F32> dk, int64_t kh, int64_t kw,
                          int64_t sh, int64_t sw, int64_t ph0, int64_t ph1, int64_t pw0,
                          int64_t pw1) {
  Shape s = KernelGradShape(x, dy, kh, kw, sh, sw, ph0, ph1, pw0, pw1);
  const auto& [pd, primitive] = Backward<dnnl::convolution_backward_weights>(s);
  memory src(s.src(), Engine(), x.typed_data());
  memory diff_dst(s.dst(), Engine(), dy.typed_data());
  memory user(s.hwio(), Engine(), dk->typed_data());
  memory diff_weights =
      pd.diff_weights_desc() == s.hwio() ? user : memory(pd.diff_weights_desc(), Engine());
  Run(primitive, pd,
      {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, diff_weights}});
  if (diff_weights != user) {
    dnnl::reorder(diff_weights, user).execute(Stream(), diff_weights, user);
    Stream().wait();
  }
  return ffi::Error::Success();
}

}  // namespace

#define CONV_ATTRS                                                                        \
  .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("ph0").Attr<int64_t>("ph1")     \
      .Attr<int64_t>("pw0").Attr<int64_t>("pw1")

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvForward, ForwardImpl,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvInputGrad, InputGradImpl,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>()
                                  .Attr<int64_t>("h").Attr<int64_t>("w") CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvKernelGrad, KernelGradImpl,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>()
                                  .Attr<int64_t>("kh").Attr<int64_t>("kw") CONV_ATTRS);
