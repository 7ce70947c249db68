"""The end-to-end suite: paraserve installed on a cluster with (fake) GPU nodes."""
