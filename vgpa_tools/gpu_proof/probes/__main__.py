"""python -m vgpa_tools.gpu_proof.probes OUT: the probe run, written to OUT as JSON (the GPU-proof
check runs it in a subprocess when its own process imported triton without the interpreter)."""

import json
import sys
from pathlib import Path

from . import run_probes

if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(run_probes().to_json()))
