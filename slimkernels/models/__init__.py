"""Pretrained models in pure torch, used to measure what compression costs on real weights.

Weights are never bundled: each model reads them from an optional package and says how to install it.
"""
from .minilm import MiniLM, WordPieceTokenizer, calibration_batches, load_minilm

__all__ = ["MiniLM", "WordPieceTokenizer", "calibration_batches", "load_minilm"]
