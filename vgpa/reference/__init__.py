"""Pure-PyTorch references that state each op's math plainly: the oracle for every backend."""
