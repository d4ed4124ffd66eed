// Shared by the <op>_bindings.cpp files: pybind11, named kernel arguments, and the one list of
// ops that vgpa._C (bindings.cpp) and vgpa._C_cuda_emu (emulation/module.cpp) bind.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "common.h"

// The CUDA emulation module (csrc/emulation, a test instrument) binds the *_cuda functions only.
#ifdef VGPA_CUDA_EMULATION_MODULE
#define VGPA_BIND_CPU 0
#else
#define VGPA_BIND_CPU 1
#endif

// The ops with compiled kernels, each bound by bind_<op> in csrc/<op>_bindings.cpp. Adding an op
// means one entry here; both modules bind every op listed.
#define VGPA_OPS(X) \
  X(diffusion_dpo_loss) \
  X(epipolar)           \
  X(normal_stability)   \
  X(render_points)      \
  X(reprojection_error)

namespace vgpa {

namespace py = pybind11;

#define VGPA_DECLARE_BIND(op) void bind_##op(py::module_& m);
VGPA_OPS(VGPA_DECLARE_BIND)
#undef VGPA_DECLARE_BIND

inline void bind_ops(py::module_& m) {
#define VGPA_CALL_BIND(op) bind_##op(m);
  VGPA_OPS(VGPA_CALL_BIND)
#undef VGPA_CALL_BIND
}

// ---------------------------------------------------------------------------------------------
// Named kernel arguments. The kernels take one argument struct of raw pointers, sizes and options
// (no torch type crosses the boundary, so vgpa._C does not depend on torch's C++ ABI). Each op
// names the fields of its struct once (ArgFields); each kernel binding takes keyword arguments
// only, the fields that kernel reads (KernelFields). An unknown or missing field, a value of the
// wrong type or a list of the wrong length raises TypeError naming the kernel and the field
// before the kernel runs, so a pointer can be neither missing nor put in another's place.

template <class Args>
class ArgFields {
 public:
  using Setter = std::function<void(Args&, py::handle)>;

  template <class T>
  ArgFields& add(const std::string& name, T Args::*member) {
    return add(name, [member](Args& a, py::handle value) { a.*member = py::cast<T>(value); });
  }

  // A fixed-length array field (strides) from a Python list of exactly N numbers.
  template <class T, size_t N>
  ArgFields& add(const std::string& name, T (Args::*member)[N]) {
    return add(name, [member, name](Args& a, py::handle value) {
      const auto list = py::cast<std::vector<T>>(value);
      if (list.size() != N)
        throw py::type_error("field '" + name + "' takes " + std::to_string(N) + " values, got " +
                             std::to_string(list.size()));
      for (size_t i = 0; i < N; ++i) (a.*member)[i] = list[i];
    });
  }

  // A field stored some other way (a slot of an array, a small struct).
  ArgFields& add(const std::string& name, Setter setter) {
    if (!setters_.emplace(name, std::move(setter)).second)
      throw std::logic_error("argument field '" + name + "' is named twice");
    return *this;
  }

  const Setter* find(const std::string& name) const {
    const auto it = setters_.find(name);
    return it == setters_.end() ? nullptr : &it->second;
  }

 private:
  std::map<std::string, Setter> setters_;
};

// The fields one kernel takes, from a space-separated list: "name" is required, "name?" may be
// left out (a pointer the kernel accepts as absent stays 0).
template <class Args>
class KernelFields {
 public:
  KernelFields(std::string kernel, std::shared_ptr<const ArgFields<Args>> fields, const std::string& spec)
      : kernel_(std::move(kernel)), fields_(std::move(fields)), spec_(spec) {
    std::istringstream words(spec);
    for (std::string word; words >> word;) {
      const bool optional = word.back() == '?';
      if (optional) word.pop_back();
      if (!fields_->find(word)) throw std::logic_error(kernel_ + ": no argument field '" + word + "'");
      (optional ? optional_ : required_).insert(word);
    }
  }

  Args parse(const py::kwargs& given) const {
    Args a{};
    std::set<std::string> seen;
    for (const auto& item : given) {
      const std::string name = py::cast<std::string>(item.first);
      if (!required_.count(name) && !optional_.count(name))
        throw py::type_error(kernel_ + ": unexpected field '" + name + "' (fields: " + spec_ + ")");
      try {
        (*fields_->find(name))(a, item.second);
      } catch (const py::cast_error&) {
        throw py::type_error(kernel_ + ": field '" + name + "' has the wrong type (" +
                             std::string(py::str(py::type::of(item.second))) + ")");
      } catch (const py::type_error& e) {
        throw py::type_error(kernel_ + ": " + e.what());
      }
      seen.insert(name);
    }
    for (const auto& name : required_)
      if (!seen.count(name)) throw py::type_error(kernel_ + ": missing field '" + name + "' (fields: " + spec_ + ")");
    return a;
  }

  const std::string& kernel() const { return kernel_; }
  std::string doc() const { return "Keyword arguments only: " + spec_ + " ('?': may be left out, 0)."; }

 private:
  std::string kernel_;
  std::shared_ptr<const ArgFields<Args>> fields_;
  std::string spec_;
  std::set<std::string> required_, optional_;
};

template <class Args>
void def_cpu_kernel(py::module_& m, const std::string& name, void (*kernel)(const Args&),
                    std::shared_ptr<ArgFields<Args>> fields, const std::string& spec) {
  KernelFields<Args> signature(name + "_cpu", std::move(fields), spec);
  m.def(
      signature.kernel().c_str(),
      [kernel, signature](const py::kwargs& given) {
        const Args a = signature.parse(given);
        py::gil_scoped_release release;
        kernel(a);
      },
      signature.doc().c_str());
}

// CUDA kernels also take stream= (a cudaStream_t as an integer; 0 in the emulation).
template <class Args>
void def_cuda_kernel(py::module_& m, const std::string& name, void (*kernel)(const Args&, uintptr_t),
                     std::shared_ptr<ArgFields<Args>> fields, const std::string& spec) {
  KernelFields<Args> signature(name + "_cuda", std::move(fields), spec);
  m.def(
      signature.kernel().c_str(),
      [kernel, signature](py::kwargs given) {
        if (!given.contains("stream")) throw py::type_error(signature.kernel() + ": missing field 'stream'");
        const uintptr_t stream = py::cast<uintptr_t>(given["stream"]);
        PyDict_DelItemString(given.ptr(), "stream");
        kernel(signature.parse(given), stream);
      },
      (signature.doc() + " Also stream=.").c_str());
}

// Binds kernel NAME as NAME_cpu (vgpa._C) and NAME_cuda (where CUDA is compiled in: vgpa._C
// with nvcc, and the emulation module), both taking the fields of SPEC by name.
#if VGPA_BIND_CPU
#define VGPA_BIND_CPU_KERNEL(m, name, fields, spec) ::vgpa::def_cpu_kernel(m, #name, &name##_cpu, fields, spec)
#else
#define VGPA_BIND_CPU_KERNEL(m, name, fields, spec) ((void)0)
#endif
#ifdef VGPA_WITH_CUDA
#define VGPA_BIND_CUDA_KERNEL(m, name, fields, spec) ::vgpa::def_cuda_kernel(m, #name, &name##_cuda, fields, spec)
#else
#define VGPA_BIND_CUDA_KERNEL(m, name, fields, spec) ((void)0)
#endif
#define VGPA_BIND_KERNEL(m, name, fields, spec)    \
  do {                                           \
    VGPA_BIND_CPU_KERNEL(m, name, fields, spec);  \
    VGPA_BIND_CUDA_KERNEL(m, name, fields, spec); \
  } while (0)

}  // namespace vgpa
