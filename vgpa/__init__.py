"""vgpa: fused kernels for geometry-preference alignment of video diffusion models."""

from ._backend import BACKENDS, BackendUnavailableError, available_backends
from .ops.registry import specs as _op_specs
from .features import MatchFeaturesResult, match_features
from .pairs import adjacent_pairs, all_pairs, window_pairs
from .torch_math.camera import SingularCameraError
from . import metrics  # so that `import vgpa` alone gives vgpa.metrics.mvcs etc.
from . import geometry, scoring, video  # OpenCV is imported on first use, not here

# The ops' functions and result types: what the SPEC of each vgpa/ops/<op>.py exports.
_op_exports = {name: obj for spec in _op_specs() for name, obj in spec.exported().items()}
globals().update(_op_exports)

__version__ = "0.1.0"

__all__ = sorted([
    "BACKENDS",
    "BackendUnavailableError",
    "MatchFeaturesResult",
    "SingularCameraError",
    "adjacent_pairs",
    "all_pairs",
    "available_backends",
    "geometry",
    "match_features",
    "metrics",
    "scoring",
    "video",
    "window_pairs",
    *_op_exports,
])
del _op_exports
