"""One reconcile of one deployment: pure decisions and the objects they render."""
