"""Scores of the VideoGPA recipe built on vgpa's fused ops."""
