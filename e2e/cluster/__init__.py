"""Local Kubernetes control plane built from Go modules, with fake GPU nodes, for tests."""
