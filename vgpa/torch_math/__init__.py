"""Plain-PyTorch math that the ops (on every backend), scoring and training share with the
references in vgpa.reference: camera algebra and the pair and frame matrices every kernel gets
(``camera``), the DPO logits and loss after the per-sample errors (``dpo``), the
fundamental-matrix solvers (``fundamental_matrix``), the render's projection rows and z-buffer
keys (``render``), the point-cloud pixel selection (``point_cloud``), the RANSAC inlier limit
(``epipolar``), and which item of a flat packed or padded layout owns each row (``segments``)."""
