"""vgpa: fused kernels for geometry-preference alignment of video diffusion models."""

from ._backend import BACKENDS, BackendUnavailableError, available_backends
from .ops.diffusion_dpo_loss import DiffusionDPOLoss, DiffusionDPOLossResult, diffusion_dpo_loss
from .ops.epipolar import ransac_inlier_count, sampson_distance
from .features import MatchFeaturesResult, match_features
from .ops.fundamental_matrix import FundamentalMatrixResult, fundamental_matrix
from .ops.normal_stability import (DepthToNormalsResult, NormalStabilityResult, depth_to_normals,
                                   normal_stability)
from .ops.point_cloud import PointCloud, point_cloud, point_map_cloud
from .ops.reprojection_error import ReprojectionErrorResult, reprojection_error, unproject_depth
from .pairs import adjacent_pairs, all_pairs, window_pairs
from .ops.render_points import (RenderConsistencyResult, RenderPointsResult, render_consistency,
                                render_points)
from . import metrics  # so that `import vgpa` alone gives vgpa.metrics.mvcs etc.
from . import geometry, scoring, video  # OpenCV is imported on first use, not here

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "DepthToNormalsResult",
    "DiffusionDPOLoss",
    "DiffusionDPOLossResult",
    "FundamentalMatrixResult",
    "MatchFeaturesResult",
    "NormalStabilityResult",
    "PointCloud",
    "RenderConsistencyResult",
    "RenderPointsResult",
    "ReprojectionErrorResult",
    "adjacent_pairs",
    "all_pairs",
    "available_backends",
    "depth_to_normals",
    "diffusion_dpo_loss",
    "fundamental_matrix",
    "geometry",
    "match_features",
    "metrics",
    "normal_stability",
    "point_cloud",
    "point_map_cloud",
    "ransac_inlier_count",
    "render_consistency",
    "render_points",
    "reprojection_error",
    "sampson_distance",
    "scoring",
    "unproject_depth",
    "video",
    "window_pairs",
]
