"""Identity of the InferenceDeployment resource on the Kubernetes API."""

from typing import Final

GROUP: Final = "paraserve.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "InferenceDeployment"
LIST_KIND: Final = "InferenceDeploymentList"
PLURAL: Final = "inferencedeployments"
SINGULAR: Final = "inferencedeployment"
SHORT_NAMES: Final = ("infd",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

#: Node label (MiB) published by NVIDIA GPU feature discovery; the default GPU memory.
GPU_MEMORY_LABEL: Final = "nvidia.com/gpu.memory"
DEFAULT_GPU_RESOURCE: Final = "nvidia.com/gpu"
