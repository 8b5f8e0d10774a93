"""Calibration text for users who have none: English sentences from the docstrings of Python's standard
library, which ships with every Python (so nothing is downloaded).

    sentences = slimkernels.compress.calibration_text(256)
    batches = [tokenizer(sentences[i:i + 8], padding=True, return_tensors="pt") for i in range(0, 256, 8)]
    slimkernels.sparsify_(model, SparsityConfig(method="wanda"), calibration=[dict(b) for b in batches])

The sentences are prose: docstrings split at sentence ends, kept when they read like English (a capital
first, a period last, 6 to 40 words, no code punctuation, mostly letters), at most a few per source
file so that many topics come in. The choice is deterministic for a given Python installation and
seed. It is technical English, not the model's own domain: calibrating on text like the model's real
inputs is better when you have it.
"""
from __future__ import annotations

import ast
import os
import random
import re
import sysconfig
import warnings
from functools import lru_cache

__all__ = ["calibration_text"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE_MARKS = re.compile(r">>>|==|\(\)|[_`{}\[\]=\\<>|#*~^@$]|::|https?:|\.py\b|\w\.\w|\bNone\b|\bTrue\b|\bFalse\b")
_SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3", "ensurepip"}
PER_FILE = 4  # sentences taken from one source file at most


def _prose(sentence: str) -> bool:
    words = sentence.split()
    if not 6 <= len(words) <= 40 or not sentence[0].isupper() or not sentence.endswith("."):
        return False
    if _CODE_MARKS.search(sentence):
        return False
    letters = sum(ch.isalpha() for ch in sentence)
    return letters >= 0.75 * sum(not ch.isspace() for ch in sentence)


def _sentences(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escape sequences in old sources
                tree = ast.parse(f.read())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                for paragraph in re.split(r"\n\s*\n", doc):
                    text = " ".join(paragraph.split())
                    out.extend(s for s in _SENTENCE_END.split(text) if _prose(s))
    return out


@lru_cache(maxsize=4)
def _source_files(root: str) -> tuple[str, ...]:
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS and not d.startswith("."))
        files.extend(os.path.join(directory, n) for n in sorted(names) if n.endswith(".py") and not n.startswith("test"))
    return tuple(files)


def calibration_text(n: int = 256, seed: int = 0) -> list[str]:
    """`n` distinct English sentences from the standard library's docstrings (fewer if the installation
    has fewer; ValueError for n < 1). Deterministic for a given Python installation and seed."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"calibration_text: n must be a positive int, got {n!r}")
    files = list(_source_files(sysconfig.get_paths()["stdlib"]))
    random.Random(seed).shuffle(files)
    seen: set[str] = set()
    out: list[str] = []
    for path in files:
        found = [s for s in dict.fromkeys(_sentences(path)) if s not in seen]
        for sentence in found[:PER_FILE]:
            seen.add(sentence)
            out.append(sentence)
            if len(out) == n:
                return out
    return out
