"""Development tools of vgpa (the GPU-proof checks, the wheel inspection): run from a source
checkout, never installed."""
