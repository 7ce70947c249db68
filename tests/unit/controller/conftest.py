"""Shared by the controller's tests: `fake_cluster` (beside this file) is importable from each
room's tests, as pytest puts a conftest's folder on the path."""
