"""Imports every backend module so that each registers its implementations."""
from . import cpu, cuda, reference, torch_impl, triton  # noqa: F401
