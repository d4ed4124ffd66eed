"""vgpa.bench.instructions without valgrind: callgrind's output parsed, dumps matched to the
driver's calls, the per-unit rows and files, the driver's calls run for every op at its quick size,
the missing-valgrind error. One run under valgrind (minutes: importing torch under it is slow)
only with VGPA_RUN_VALGRIND=1."""

import csv
import json
import os
import shutil

import pytest

from vgpa import _backend
from vgpa.bench import instructions as ins


def dump_text(part, trigger, ir, pid=4242):
    """A callgrind output file as valgrind 3.19 writes it (header, a cost line, the totals)."""
    return (f"# callgrind format\nversion: 1\ncreator: callgrind-3.19.0\npid: {pid}\ncmd:  python -m x\n"
            f"part: {part}\n\n\ndesc: I1 cache: \ndesc: D1 cache: \ndesc: LL cache: \n\n"
            f"desc: Timerange: Basic block 10 - 20\ndesc: Trigger: {trigger}\n\npositions: line\nevents: Ir\n"
            f"summary: {ir}\n\n\nob=(1) /x/_C.so\nfl=(1) ???\nfn=(1) f\n0 {ir}\n\ntotals: {ir}\n")


FWD = "--dump-after=vgpa::reprojection_error_forward_cpu(vgpa::ReprojectionErrorArgs const&)"
BWD = "--dump-after=vgpa::reprojection_error_backward_cpu(vgpa::ReprojectionErrorArgs const&) [clone .arch_x86_64_v3]"


def write_dumps(folder, dumps):
    """Files named as --callgrind-out-file=cg.out.%p names them: .N per dump, none at the end."""
    for part, trigger, ir in dumps:
        with open(os.path.join(folder, f"cg.out.4242.{part}"), "w") as f:
            f.write(dump_text(part, trigger, ir))
    with open(os.path.join(folder, "cg.out.4242"), "w") as f:
        f.write(dump_text(len(dumps) + 1, "Program termination", 0))


def record(phase, call, kernels, units=1000, size="1x2x10x50"):
    return {"phase": phase, "op": "reprojection_error", "call": call, "size": size, "unit": "pixels",
            "units": units, "kernels": kernels}


def test_parse_dump_reads_the_trigger_and_the_totals():
    dump = ins.parse_dump(dump_text(3, FWD, 123456))
    assert (dump.part, dump.totals, dump.kernel) == (3, {"Ir": 123456}, "reprojection_error_forward_cpu")
    assert ins.parse_dump(dump_text(1, BWD, 7)).kernel == "reprojection_error_backward_cpu"
    assert ins.parse_dump(dump_text(2, "Program termination", 0)).kernel is None
    no_totals = "\n".join(line for line in dump_text(1, FWD, 99).splitlines() if not line.startswith("totals"))
    assert ins.parse_dump(no_totals).totals == {"Ir": 99}  # summary: when there is no totals:
    with pytest.raises(ValueError, match="not a callgrind output"):
        ins.parse_dump("hello\n")


def test_read_dumps_orders_by_part_and_leaves_out_the_final_dump(tmp_path):
    write_dumps(tmp_path, [(part, FWD if part % 2 else BWD, 100 * part) for part in range(1, 12)])
    dumps = ins.read_dumps(str(tmp_path))
    assert [d.part for d in dumps] == list(range(1, 12))  # .10 and .11 after .9, not after .1
    assert [d.totals["Ir"] for d in dumps] == [100 * p for p in range(1, 12)]


def test_dumps_map_to_the_calls_in_order_and_only_measured_calls_become_rows(tmp_path):
    log = [record("setup", "", []),
           record("warm-up", "fwd", ["reprojection_error_forward_cpu"]),
           record("measure", "fwd", ["reprojection_error_forward_cpu"]),
           record("measure", "fwd+bwd", ["reprojection_error_forward_cpu", "reprojection_error_backward_cpu"])]
    write_dumps(tmp_path, [(1, FWD, 999), (2, FWD, 5000), (3, FWD, 5002), (4, BWD, 12500)])
    meta = {"valgrind": "valgrind-3.19.0", "commit": "abc", "torch": "2.x", "clone": ins.CLONE_NOTE}
    rows = ins.rows_from(log, ins.read_dumps(str(tmp_path)), meta)
    assert [(r["call"], r["kernel"], r["instructions"]) for r in rows] == [
        ("fwd", "vgpa::reprojection_error_forward_cpu", 5000),
        ("fwd+bwd", "vgpa::reprojection_error_forward_cpu", 5002),
        ("fwd+bwd", "vgpa::reprojection_error_backward_cpu", 12500)]
    assert [r["instructions_per_unit"] for r in rows] == [5.0, 5.002, 12.5]
    assert all(r["pixels"] == 1000 and r["valgrind"] == "valgrind-3.19.0" for r in rows)


def test_a_kernel_reached_twice_in_one_call_is_numbered():
    log = [record("measure", "ransac fwd", ["reprojection_error_forward_cpu"] * 2)]
    dumps = [ins.parse_dump(dump_text(p, FWD, 10 * p)) for p in (1, 2)]
    assert [r["kernel"] for r in ins.rows_from(log, dumps, {})] == [
        "vgpa::reprojection_error_forward_cpu", "vgpa::reprojection_error_forward_cpu #2"]


def test_dumps_that_do_not_match_the_calls_are_an_error():
    log = [record("measure", "fwd+bwd", ["reprojection_error_forward_cpu", "reprojection_error_backward_cpu"])]
    swapped = [ins.parse_dump(dump_text(1, BWD, 1)), ins.parse_dump(dump_text(2, FWD, 1))]
    with pytest.raises(RuntimeError, match="do not match"):
        ins.rows_from(log, swapped, {})
    with pytest.raises(RuntimeError, match="do not match"):
        ins.rows_from(log, swapped[:1], {})


def test_results_files_and_tables(tmp_path):
    meta = {"valgrind": "valgrind-3.19.0", "commit": "abc", "torch": "2.x", "clone": ins.CLONE_NOTE}
    rows = ins.rows_from([record("measure", "fwd", ["reprojection_error_forward_cpu"], units=400)],
                         [ins.parse_dump(dump_text(1, FWD, 1000))], meta)
    csv_path, json_path = ins.write_results(rows, str(tmp_path / "out"), meta)
    with open(csv_path) as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == list(ins.FIELDS)
    assert (read[0]["instructions"], read[0]["instructions_per_unit"], read[0]["commit"]) == ("1000", "2.5", "abc")
    assert ins.load_rows(json_path) == rows
    with open(json_path) as f:
        assert json.load(f)["meta"] == meta
    assert "2.50" in ins.format_table(rows)
    faster = [dict(rows[0], instructions_per_unit=2.0)]
    assert "0.800" in ins.compare(rows, faster)


def test_the_entry_points_are_the_extension_s_cpu_functions():
    extension = _backend.extension()
    if extension is None:
        pytest.skip(f"vgpa._C is not built: {_backend.extension_error()}")
    for op, kernels in ins.KERNELS.items():
        for kernel in kernels:
            assert kernel.endswith("_cpu") and hasattr(extension, kernel), (op, kernel)
    defined = ins.defined_functions(extension.__file__)
    if defined is None:
        pytest.skip("no nm to list the library's functions")
    names = ins.entry_functions(list(ins.OPS), defined)  # raises where a signature is not in vgpa._C
    assert len(names) >= sum(len(k) for k in ins.KERNELS.values())
    assert not [n for n in names if "_omp_fn" in n or ".cold" in n]


def test_entry_functions_take_the_clones_of_a_cloned_entry_point():
    fwd, bwd = (ins.signature("epipolar", k) for k in ins.KERNELS["epipolar"][:2])
    ransac = ins.signature("epipolar", "ransac_inlier_count_cpu")
    assert fwd == "vgpa::sampson_distance_forward_cpu(vgpa::EpipolarArgs const&)"
    defined = {fwd, f"{fwd} [clone ._omp_fn.0]", f"{fwd} [clone .cold]",
               bwd, f"{bwd} [clone .arch_x86_64_v3]", f"{bwd} [clone .arch_x86_64_v4]", f"{bwd} [clone .default]",
               f"{bwd} [clone .resolver]", ransac}
    assert ins.entry_functions(["epipolar"], defined) == [
        fwd, f"{bwd} [clone .arch_x86_64_v3]", f"{bwd} [clone .arch_x86_64_v4]", f"{bwd} [clone .default]", ransac]
    assert ins.entry_functions(["epipolar"], None) == [fwd, bwd, ransac]
    with pytest.raises(RuntimeError, match="signature changed"):
        ins.entry_functions(["epipolar"], defined - {ransac})


def test_valgrind_command_collects_and_dumps_only_in_the_entry_points():
    functions = ins.entry_functions(["reprojection_error"], None)
    command = ins.valgrind_command("/usr/bin/valgrind", "/usr/bin/python3", functions, ["reprojection_error"],
                                   "small", "/tmp/x")
    assert command[:3] == ["/usr/bin/valgrind", "--tool=callgrind", "--collect-atstart=no"]
    for name in functions:
        assert f"--toggle-collect={name}" in command and f"--dump-after=*{name}" in command
    assert "--callgrind-out-file=/tmp/x/cg.out.%p" in command
    assert command[command.index("/usr/bin/python3"):][:4] == ["/usr/bin/python3", "-m", "vgpa.bench.instructions",
                                                               "--driver"]


def test_the_python_run_under_valgrind_is_a_binary_not_a_launcher_script():
    python = ins.real_python()
    assert os.path.isabs(python) and ins.is_elf(python)


@pytest.mark.skipif(_backend.extension() is None, reason="vgpa._C is not built")
def test_the_driver_runs_every_op_at_its_quick_size(tmp_path):
    log_path = tmp_path / "calls.json"
    log = ins.run_driver(list(ins.OPS), "quick", str(log_path), verbose=False)
    with open(log_path) as f:
        assert json.load(f) == log
    measured = [r for r in log if r["phase"] == "measure"]
    warmed = [r for r in log if r["phase"] == "warm-up"]
    what = lambda records: [(r["op"], r["call"], r["kernels"]) for r in records]  # noqa: E731
    assert what(warmed) == what(measured)
    reached = {(r["op"], r["call"]): r["kernels"] for r in measured}
    assert reached[("reprojection_error", "fwd")] == ["reprojection_error_forward_cpu"]
    assert reached[("reprojection_error", "fwd+bwd")] == ["reprojection_error_forward_cpu",
                                                          "reprojection_error_backward_cpu"]
    assert "normal_stability_backward_cpu" in reached[("normal_stability", "fwd+bwd")]
    assert "render_consistency_cpu" in reached[("render_points", "fwd")]
    assert "render_points_resolve_cpu" in reached[("render_points", "render+mse fwd")]
    assert "ransac_inlier_count_cpu" in reached[("epipolar", "ransac fwd")]
    assert "sampson_distance_backward_cpu" in reached[("epipolar", "sampson fwd+bwd")]
    for r in measured:
        assert r["kernels"] and set(r["kernels"]) <= set(ins.KERNELS[r["op"]]), r
        assert r["units"] > 0 and r["size"]
    assert _backend.launch_compiled.__name__ == "launch_compiled"  # the recorder is removed
    # every call's outputs are digested, and a second run gives the same bits
    assert all(len(r["digest"]) == 64 for r in measured)
    assert "bitwise equal" in ins.check_outputs(log, ins.run_driver(list(ins.OPS), "quick", verbose=False))


def test_digest_sees_every_bit_of_every_output():
    import dataclasses

    import torch

    @dataclasses.dataclass
    class Result:
        value: torch.Tensor
        extra: tuple

    x = torch.linspace(0, 1, 7)
    base = ins.digest(Result(x, (x.double(), None)))
    assert ins.digest(Result(x.clone(), (x.double(), None))) == base
    flipped = x.clone()
    flipped.view(torch.int32)[3] ^= 1  # one bit of one element
    assert ins.digest(Result(flipped, (x.double(), None))) != base
    assert ins.digest(Result(x, (x.float(), None))) != base  # same values, another dtype
    assert ins.digest(Result(x.view(7, 1), (x.double(), None))) != base  # another shape


def test_outputs_that_differ_between_the_clones_are_an_error():
    record = {"phase": "measure", "op": "render_points", "call": "fwd", "size": "1x4x8x8", "digest": "a" * 64}
    assert "bitwise equal" in ins.check_outputs([record], [dict(record)])
    with pytest.raises(RuntimeError, match="differ from this CPU's clone.*render_points"):
        ins.check_outputs([record], [dict(record, digest="b" * 64)])
    with pytest.raises(RuntimeError, match="other calls"):
        ins.check_outputs([record], [dict(record, call="fwd+bwd")])
    # the 8-point fit's MKL math is not vgpa's: left out, and said so
    fit = dict(record, op="epipolar", call="fwd")
    assert "not compared: epipolar fwd" in ins.check_outputs([record, fit], [record, dict(fit, digest="c" * 64)])


def test_small_sizes_are_the_entry_s_smallest_cpu_sizes():
    sizes = ins.sizes_of("reprojection_error", "small")
    assert [s.label for s in sizes] == ["1x10x64x64", "1x10x128x128"]
    assert sizes[0].x == 9 * 64 * 64
    assert len(ins.sizes_of("epipolar", "quick")) == 1


def test_a_missing_valgrind_is_a_clear_error(capsys):
    with pytest.raises(ins.ValgrindNotFound, match="valgrind not found.*--valgrind PATH"):
        ins.find_valgrind("/nonexistent/valgrind")
    with pytest.raises(ins.ValgrindNotFound, match="valgrind not found"):
        ins.find_valgrind("no-such-valgrind-binary")
    assert ins.main(["--valgrind", "/nonexistent/valgrind", "--ops", "epipolar"]) == 2
    assert "valgrind not found" in capsys.readouterr().err


@pytest.mark.skipif(os.environ.get("VGPA_RUN_VALGRIND") != "1" or shutil.which("valgrind") is None,
                    reason="a run under valgrind takes minutes: set VGPA_RUN_VALGRIND=1 (and install valgrind)")
def test_a_run_under_valgrind(tmp_path):
    out = tmp_path / "out"
    assert ins.main(["--ops", "reprojection_error", "--sizes", "quick", "--out", str(out)]) == 0
    rows = ins.load_rows(str(out / "instructions.json"))
    assert [(r["call"], r["kernel"]) for r in rows] == [
        ("fwd", "vgpa::reprojection_error_forward_cpu"), ("fwd+bwd", "vgpa::reprojection_error_forward_cpu"),
        ("fwd+bwd", "vgpa::reprojection_error_backward_cpu")]
    assert all(r["instructions"] > r["pixels"] for r in rows)
    # the forward counted twice (alone, then before the backward) is the same work
    assert abs(rows[0]["instructions"] - rows[1]["instructions"]) < 0.01 * rows[0]["instructions"]
