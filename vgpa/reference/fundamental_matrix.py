"""The fundamental-matrix estimator has no reference of its own: vgpa.fundamental_matrix runs the
plain-PyTorch solvers of vgpa.torch_math.fundamental_matrix on every backend, and only its RANSAC
scoring dispatches (its reference is vgpa.reference.epipolar). Their names, as importable here."""

from ..torch_math.fundamental_matrix import *  # noqa: F401,F403
