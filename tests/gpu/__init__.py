"""The CUDA tests (pytest -m gpu). A package, so that its conftest.py does not shadow tests/conftest.py."""
