// vgpa._C_cuda_emu: the CUDA kernels of csrc/*.cu built against the host emulation of the CUDA
// execution model (cuda_runtime.h here). A test instrument, not a user backend: the tests run
// backend "cuda" through it on CPU tensors when there is no GPU (VGPA_CUDA_EMULATION=1).
#include "../bindings.h"

#include <array>
#include <string>

namespace py = pybind11;

namespace vgpa {
namespace emulation {
enum class Schedule : int;
void set_schedule(Schedule schedule, uint64_t seed);
Schedule schedule();
uint64_t schedule_seed();
}  // namespace emulation
namespace emulation_selftest {
void run(const std::string& name, const std::array<unsigned, 3>& grid, const std::array<unsigned, 3>& block,
         size_t dynamic_shared, uintptr_t in, uintptr_t out, int64_t n);
}  // namespace emulation_selftest
}  // namespace vgpa

PYBIND11_MODULE(_C_cuda_emu, m) {
  m.doc() = "vgpa's CUDA kernels on the host emulation of the CUDA execution model (a test instrument)";
  m.attr("SCHEDULES") = py::make_tuple("ascending", "descending", "random");
  m.def(
      "set_schedule",
      [](const std::string& name, uint64_t seed) {
        int code = name == "ascending" ? 0 : name == "descending" ? 1 : name == "random" ? 2 : -1;
        if (code < 0) throw std::invalid_argument("schedule must be 'ascending', 'descending' or 'random', got " + name);
        vgpa::emulation::set_schedule(static_cast<vgpa::emulation::Schedule>(code), seed);
      },
      py::arg("name"), py::arg("seed") = 0,
      "Order of blocks, threads and barrier releases for the following launches.");
  m.def("schedule", [] {
    static const char* names[] = {"ascending", "descending", "random"};
    return py::make_tuple(names[static_cast<int>(vgpa::emulation::schedule())], vgpa::emulation::schedule_seed());
  });
  m.def("selftest_launch", &vgpa::emulation_selftest::run, py::arg("kernel"), py::arg("grid"), py::arg("block"),
        py::arg("dynamic_shared"), py::arg("input"), py::arg("output"), py::arg("n"),
        "Launches one of the deliberately broken (or correct twin) kernels of csrc/emulation/selftest.cu.");
  vgpa::bind_ops(m);  // every op of VGPA_OPS (bindings.h)
}
