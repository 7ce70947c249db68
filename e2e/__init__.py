"""End-to-end suite and the clusters it runs on."""
