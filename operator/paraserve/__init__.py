"""paraserve: plans, deploys and measures parallel LLM inference on Kubernetes."""

__version__ = "0.1.0"
