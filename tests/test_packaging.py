"""What the README and pyproject promise about installs is what CI checks."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ci_tests_the_oldest_declared_torch():
    pyproject = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'"torch>=([0-9.]+)"', pyproject).group(1)
    ci = (ROOT / ".ci" / "run").read_text()
    oldest = re.search(r"^oldest_torch=([0-9.]+)$", ci, re.M).group(1)
    assert oldest.split(".")[:2] == floor.split(".")[:2], (floor, oldest)


def test_readme_test_command_reuses_the_install():
    readme = (ROOT / "README.md").read_text()
    assert "pip install -r tests/requirements.txt && pytest tests" in readme
    assert "python -m pip install -q -r tests/requirements.txt && pytest tests" in (ROOT / ".ci" / "run").read_text()
