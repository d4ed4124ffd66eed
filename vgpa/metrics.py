"""Scores of the VideoGPA recipe built on vgpa's fused ops."""

from .ops.reprojection_error import mvcs
