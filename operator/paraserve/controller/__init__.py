"""The operator: turns an InferenceDeployment into a gang of rank pods and keeps its status.

Four rooms, one job each: reconciling/ (pure decisions and the objects they render),
running/ (the process and every call to the API), admission/ (the webhook),
measurement/ (scraping ranks into status.measured).
"""
