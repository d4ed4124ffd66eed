"""Wheel tooling: the inspection of a built wheel (inspect_wheel); scripts/build_wheels.sh builds,
repairs and inspects."""
