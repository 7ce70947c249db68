"""Identity of the InferenceDeployment resource on the Kubernetes API."""

from typing import Final

from paraserve import __version__

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

#: The rank image of this release (images/worker.Dockerfile). A rank runs it when its spec
#: names no image and the operator was given none (--worker-image); the chart and the
#: manifests leave it to this, so it is defined here only.
WORKER_IMAGE_REPOSITORY: Final = "ghcr.io/paraserve/worker"
DEFAULT_WORKER_IMAGE: Final = f"{WORKER_IMAGE_REPOSITORY}:{__version__}"
