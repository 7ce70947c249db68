"""Which watches the API server filters for the operator."""

import kopf

from paraserve.controller.running import watches


def test_services_are_watched_only_if_ours_and_configmaps_all() -> None:
    settings = kopf.OperatorSettings()
    watches.watch_only_ours(settings)
    selectors = settings.watching.label_selectors
    assert selectors[("v1", "services")] == "app.kubernetes.io/managed-by=paraserve-operator"
    # model.architectureFrom names the user's own ConfigMap, which carries no label of ours.
    assert ("v1", "configmaps") not in selectors
