"""Real inference engines for the tests: their cached installs and a tiny locally made model."""
