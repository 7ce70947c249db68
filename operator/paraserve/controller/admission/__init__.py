"""The validating admission webhook: the check, its server and its registration."""
