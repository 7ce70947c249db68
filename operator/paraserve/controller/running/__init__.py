"""The operator process: flags, leader election, watches, the work queue, every call to the API."""
