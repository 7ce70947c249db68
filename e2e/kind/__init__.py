"""kind with fake GPUs: the Docker engine, the node image built offline, the cluster."""
