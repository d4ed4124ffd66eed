"""Every layer that handles all ops knows every op of the registry (vgpa/ops/registry.py): an op
registers once, with the SPEC of its vgpa/ops/<op>.py, and each check here fails, naming the op
and the layer, where a layer does not know it: its files, the C++ list of compiled ops, the
sanitizer's tests, the Triton probes and decision rule, the emulation and thread-count tests,
the bench, the instruction counts and the exports of ``vgpa``."""

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import vgpa
import vgpa.ops
from vgpa import _build_config
from vgpa.bench import instructions, run
from vgpa.ops import registry
from vgpa_tools.gpu_proof import probes, sanitize, triton_rules, triton_variants

import test_cpu_threads
import test_cuda_emulation

REPO = Path(__file__).resolve().parents[1]
SPECS = registry.specs()
NAMES = [spec.name for spec in SPECS]
COMPILED = [spec.name for spec in SPECS if spec.compiled]


def _by_name(specs):
    return pytest.mark.parametrize("spec", specs, ids=lambda spec: spec.name)


def test_every_module_of_vgpa_ops_belongs_to_exactly_one_op():
    assert NAMES == sorted(NAMES) and len(NAMES) >= 5
    modules = {info.name for info in pkgutil.iter_modules(vgpa.ops.__path__)} - {"registry"}
    claimed = [module for spec in SPECS for module in spec.modules]
    assert sorted(claimed) == sorted(modules)


@_by_name(SPECS)
def test_op_has_its_files(spec):
    op = spec.name
    paths = [f"vgpa/ops/{op}.py", f"vgpa/reference/{op}.py", f"kernels/{op}.py", f"tests/test_{op}.py",
             f"bench/bench_{op}.py", f"vgpa_tools/gpu_proof/probes/{op}.py"]
    if spec.compiled:
        paths += [f"csrc/{op}.h", f"csrc/{op}.cpp", f"csrc/{op}.cu", f"csrc/{op}_bindings.cpp"]
    assert [path for path in paths if not (REPO / path).is_file()] == []


def test_every_cuda_kernel_source_is_a_compiled_op():
    sources = {path.stem for path in (REPO / "csrc").glob("*.cu")} - {"cuda_runtime_info"}
    assert sorted(sources) == COMPILED


def test_the_cpp_list_of_ops_binds_every_compiled_op():
    header = (REPO / "csrc" / "bindings.h").read_text()
    (body,) = re.findall(r"#define VGPA_OPS\(X\)((?:.*\\\n)*.*\n)", header)
    assert sorted(re.findall(r"\bX\((\w+)\)", body)) == COMPILED


def test_the_sanitizer_runs_the_tests_of_every_compiled_op():
    assert sanitize.op_tests() == [f"tests/test_{op}.py" for op in COMPILED]


@_by_name(SPECS)
def test_probes_call_every_function_of_the_op_that_takes_a_backend(spec):
    functions = probes.functions_with_backends(spec)
    assert functions, f"{spec.name}: no function of {spec.modules} takes a backend"
    assert probes.probed_functions(probes.probe_module(spec.name).probes()) == functions


def test_the_decision_rule_knows_every_triton_kernel():
    modules = {name.split(":")[0] for name in triton_variants.triton_kernels()}
    assert sorted(modules) == [f"{triton_variants.KERNEL_PACKAGE}.{op}" for op in NAMES]
    decides = {op: triton_rules.makes_decisions(triton_variants.Variant(f"vgpa.kernels.{op}:k", (), (), (), ()))
               for op in NAMES}
    assert decides == {spec.name: spec.no_decisions is None for spec in SPECS}
    with pytest.raises(KeyError, match="no op 'unregistered'"):
        triton_rules.makes_decisions(triton_variants.Variant("vgpa.kernels.unregistered:k", (), (), (), ()))


def test_cuda_and_triton_exempt_the_same_ops_from_the_decision_rule():
    exempt = {f"{spec.name}.cu" for spec in SPECS if spec.no_decisions is not None}
    assert exempt == set(_build_config.NO_DECISION_SOURCES)


@pytest.mark.parametrize("module", [test_cuda_emulation, test_cpu_threads], ids=lambda m: m.__name__)
def test_emulation_and_thread_count_tests_cover_every_compiled_op(module):
    marked = set()
    for name, test in vars(module).items():
        if name.startswith("test_"):
            marked.update(arg for mark in getattr(test, "pytestmark", []) if mark.name == "op" for arg in mark.args)
    assert sorted(marked) == COMPILED


def test_the_bench_runs_every_op():
    assert run.OPS == run.PIPELINES + tuple(NAMES)
    for op in NAMES:
        assert importlib.import_module(f"vgpa.bench.bench_{op}").ENTRY.op == op


@_by_name([spec for spec in SPECS if spec.instructions is not None])
def test_instruction_counts_take_entry_points_the_op_declares(spec):
    counts = spec.instructions
    header = (REPO / "csrc" / f"{spec.name}.h").read_text()
    undeclared = [kernel for kernel in counts.kernels
                  if not re.search(rf"\bvoid {kernel}\(const {counts.args}& args\);", header)]
    assert undeclared == [] and counts.small_sizes >= 1


def test_instruction_counts_take_every_op_whose_spec_asks():
    assert instructions.OPS == tuple(spec.name for spec in SPECS if spec.instructions is not None)


@_by_name(SPECS)
def test_vgpa_exports_what_the_op_exports(spec):
    exported = spec.exported()
    assert exported
    assert {name: getattr(vgpa, name, None) for name in exported} == exported
    assert set(exported) <= set(vgpa.__all__)


def test_vgpa_all_names_each_attribute_once():
    assert vgpa.__all__ == sorted(set(vgpa.__all__))
    assert [name for name in vgpa.__all__ if not hasattr(vgpa, name)] == []
