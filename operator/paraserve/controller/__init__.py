"""The operator: kopf handlers that turn an InferenceDeployment into a gang of rank pods."""
