// oneDNN's 2-D and 3-D convolution (channels-last activations [n, (t,) h, w, c], kernels
// [(kt,) kh, kw, ci, co], float32) as three XLA FFI handlers: forward, gradient of the input,
// gradient of the kernel. Compiled and loaded by videogen/kernels/onednn_conv.py; XLA:CPU's
// own convolution runs its backward pass at a quarter of the matmul peak on the tokenizer's
// widest maps, oneDNN's at 0.7 (BUILD_NOTES.md, issue 19).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <new>
#include <stdexcept>
#include <string>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = memory::format_tag;
using F32 = ffi::Buffer<ffi::F32>;
using Ints = ffi::Span<const int64_t>;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// XLA:CPU runs independent custom calls at the same time (and a model's layers share shapes,
// so primitives too): a stream per thread, and every call brings its own scratchpad
// (`User`), since a library-owned one would be shared between calls.
dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

dnnl::primitive_attr User() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// A convolution over d = 2 or 3 spatial dimensions: input [n, size..., ci], kernel
// [window..., ci, co], and per spatial dimension a stride and zero padding before / after.
struct Shape {
  int64_t n, ci, co;
  memory::dims size, window, strides, lo, hi;

  size_t d() const { return size.size(); }
  memory::dims out() const {
    memory::dims o(d());
    for (size_t i = 0; i < d(); ++i) o[i] = (size[i] + lo[i] + hi[i] - window[i]) / strides[i] + 1;
    return o;
  }
  static memory::dims Join(memory::dims head, const memory::dims& tail) {
    head.insert(head.end(), tail.begin(), tail.end());
    return head;
  }
  Tag activations() const { return d() == 2 ? Tag::nhwc : Tag::ndhwc; }
  memory::desc src() const { return {Join({n, ci}, size), memory::data_type::f32, activations()}; }
  memory::desc dst() const { return {Join({n, co}, out()), memory::data_type::f32, activations()}; }
  // The kernel as XLA holds it (HWIO / DHWIO), and in whatever layout oneDNN's fastest
  // implementation wants (we reorder between the two).
  memory::desc user_weights() const {
    return {Join({co, ci}, window), memory::data_type::f32, d() == 2 ? Tag::hwio : Tag::dhwio};
  }
  memory::desc any_weights() const { return {Join({co, ci}, window), memory::data_type::f32, Tag::any}; }
  std::vector<int64_t> key() const {
    std::vector<int64_t> k = {n, ci, co};
    for (const memory::dims* v : {&size, &window, &strides, &lo, &hi}) k.insert(k.end(), v->begin(), v->end());
    return k;
  }
};

memory::dims Dims(Ints values) { return memory::dims(values.begin(), values.end()); }

// Spatial extent of a channels-last buffer: its dimensions between batch and channels.
memory::dims Spatial(const F32& buffer) {
  auto dims = buffer.dimensions();
  return memory::dims(dims.begin() + 1, dims.end() - 1);
}

// Spatial extent of a kernel [window..., ci, co].
memory::dims Window(const F32& kernel) {
  auto dims = kernel.dimensions();
  return memory::dims(dims.begin(), dims.end() - 2);
}

int64_t Last(const F32& buffer) { return buffer.dimensions().back(); }
int64_t SecondLast(const F32& buffer) { return buffer.dimensions()[buffer.dimensions().size() - 2]; }

// Building a primitive JIT-compiles its kernel (tens of ms): one per shape, kept.
template <typename Primitive, typename Make>
const std::pair<typename Primitive::primitive_desc, Primitive>& Cached(const Shape& s, Make make) {
  static std::map<std::vector<int64_t>, std::pair<typename Primitive::primitive_desc, Primitive>>
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

dnnl::convolution_forward::primitive_desc Forward(const Shape& s) {
  return {Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
          s.src(), s.any_weights(), s.dst(), s.strides, s.lo, s.hi, User()};
}

// A backward primitive of the convolution `s` (its forward's description is oneDNN's hint).
template <typename Primitive>
const std::pair<typename Primitive::primitive_desc, Primitive>& Backward(const Shape& s) {
  return Cached<Primitive>(s, [&] {
    return typename Primitive::primitive_desc(Engine(), dnnl::algorithm::convolution_direct,
                                              s.src(), s.any_weights(), s.dst(), s.strides,
                                              s.lo, s.hi, Forward(s), User());
  });
}

// What a call needs only while it runs (oneDNN's scratchpad, a kernel in oneDNN's layout):
// one buffer per thread and purpose, grown as needed and kept, so a call allocates nothing.
// (Allocated afresh, large ones are mapped and faulted in on every call; most of a step's
// page faults were XLA's own temporaries, which videogen/allocator.py keeps.) A thread runs
// one call at a time, so its buffers are free again when the next one starts.
enum Slot { kScratchpad, kWeights, kSlots };

memory Temporary(const memory::desc& desc, Slot slot) {
  struct Buffer {
    void* data = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local Buffer buffers[kSlots];
  Buffer& buffer = buffers[slot];
  const size_t bytes = (std::max<size_t>(desc.get_size(), 1) + 63) / 64 * 64;
  if (buffer.size < bytes) {
    std::free(buffer.data);
    buffer.data = std::aligned_alloc(64, bytes);
    if (buffer.data == nullptr) throw std::bad_alloc();
    buffer.size = bytes;
  }
  return memory(desc, Engine(), buffer.data);
}

// `user` in the layout `wanted`, reordered if they differ.
memory InLayout(memory user, const memory::desc& wanted) {
  if (wanted == user.get_desc()) return user;
  memory out = Temporary(wanted, kWeights);
  dnnl::reorder(user, out).execute(Stream(), user, out);
  return out;
}

// Runs `primitive` on `args` with a scratchpad of its own and waits for it.
template <typename Primitive, typename Desc>
void Run(const Primitive& primitive, const Desc& pd, std::unordered_map<int, memory> args) {
  args.insert({DNNL_ARG_SCRATCHPAD, Temporary(pd.scratchpad_desc(), kScratchpad)});
  primitive.execute(Stream(), args);
  Stream().wait();
}

// y from x and the kernel.
ffi::Error ForwardBody(F32 x, F32 k, ffi::ResultBuffer<ffi::F32> y, Ints strides, Ints lo,
                       Ints hi) {
  Shape s{x.dimensions()[0], Last(x), Last(k), Spatial(x), Window(k), Dims(strides), Dims(lo),
          Dims(hi)};
  const auto& [pd, primitive] =
      Cached<dnnl::convolution_forward>(s, [&] { return Forward(s); });
  memory src(s.src(), Engine(), x.typed_data());
  memory dst(s.dst(), Engine(), y->typed_data());
  memory weights = InLayout(memory(s.user_weights(), Engine(), k.typed_data()), pd.weights_desc());
  Run(primitive, pd, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst}});
  return ffi::Error::Success();
}

// dx from dy and the kernel; `size` is the input's spatial extent (strides map several sizes
// to one output size).
ffi::Error InputGradBody(F32 dy, F32 k, ffi::ResultBuffer<ffi::F32> dx, Ints size, Ints strides,
                         Ints lo, Ints hi) {
  Shape s{dy.dimensions()[0], SecondLast(k), Last(k), Dims(size), Window(k), Dims(strides),
          Dims(lo), Dims(hi)};
  const auto& [pd, primitive] = Backward<dnnl::convolution_backward_data>(s);
  memory diff_dst(s.dst(), Engine(), dy.typed_data());
  memory diff_src(s.src(), Engine(), dx->typed_data());
  memory weights = InLayout(memory(s.user_weights(), Engine(), k.typed_data()), pd.weights_desc());
  Run(primitive, pd,
      {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DIFF_SRC, diff_src}});
  return ffi::Error::Success();
}

// dk from x and dy; `window` is the kernel's spatial extent.
ffi::Error KernelGradBody(F32 x, F32 dy, ffi::ResultBuffer<ffi::F32> dk, Ints window,
                          Ints strides, Ints lo, Ints hi) {
  Shape s{x.dimensions()[0], Last(x), Last(dy), Spatial(x), Dims(window), Dims(strides),
          Dims(lo), Dims(hi)};
  const auto& [pd, primitive] = Backward<dnnl::convolution_backward_weights>(s);
  memory src(s.src(), Engine(), x.typed_data());
  memory diff_dst(s.dst(), Engine(), dy.typed_data());
  memory user(s.user_weights(), Engine(), dk->typed_data());
  memory diff_weights =
      pd.diff_weights_desc() == s.user_weights() ? user : Temporary(pd.diff_weights_desc(), kWeights);
  Run(primitive, pd,
      {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, diff_weights}});
  if (diff_weights != user) {
    dnnl::reorder(diff_weights, user).execute(Stream(), diff_weights, user);
    Stream().wait();
  }
  return ffi::Error::Success();
}

// oneDNN reports failures (and a failed allocation) by throwing; XLA wants an error back.
template <typename... Args>
ffi::Error Guarded(ffi::Error (*body)(Args...), Args... args) {
  try {
    return body(std::move(args)...);
  } catch (const std::exception& error) {
    return ffi::Error::Internal(std::string("oneDNN convolution failed: ") + error.what());
  }
}

ffi::Error ForwardImpl(F32 x, F32 k, ffi::ResultBuffer<ffi::F32> y, Ints strides, Ints lo, Ints hi) {
  return Guarded(ForwardBody, x, k, y, strides, lo, hi);
}
ffi::Error InputGradImpl(F32 dy, F32 k, ffi::ResultBuffer<ffi::F32> dx, Ints size, Ints strides, Ints lo,
                         Ints hi) {
  return Guarded(InputGradBody, dy, k, dx, size, strides, lo, hi);
}
ffi::Error KernelGradImpl(F32 x, F32 dy, ffi::ResultBuffer<ffi::F32> dk, Ints window, Ints strides, Ints lo,
                          Ints hi) {
  return Guarded(KernelGradBody, x, dy, dk, window, strides, lo, hi);
}

}  // namespace

#define CONV_ATTRS .Attr<Ints>("strides").Attr<Ints>("lo").Attr<Ints>("hi")

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvForward, ForwardImpl,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvInputGrad, InputGradImpl,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>().Attr<Ints>("size")
                                  CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvKernelGrad, KernelGradImpl,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>().Attr<Ints>("window")
                                  CONV_ATTRS);
