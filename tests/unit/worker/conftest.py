"""The worker's tests need torch (the `worker` extra); without it they are skipped."""

import warnings

import pytest

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
pytest.importorskip("torch")
