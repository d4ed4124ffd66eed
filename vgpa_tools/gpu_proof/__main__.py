"""python -m vgpa_tools.gpu_proof COMMAND

  cuda      regenerate docs/gpu_resources_cuda.csv (nvcc resource report of every CUDA kernel)
  triton    regenerate docs/gpu_resources_triton.csv (every Triton variant, sm_80 and sm_90)
  sanitize  the C++ and emulated CUDA kernels under AddressSanitizer, with their tests
"""

import sys


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("cuda", "triton", "sanitize"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "cuda":
        from . import cuda_kernels as module
    elif command == "triton":
        from . import triton_kernels as module
    else:
        from . import sanitize as module
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
