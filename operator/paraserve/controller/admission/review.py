"""The validating admission webhook: the reconcile's own planner check, answered at `kubectl apply`.

It is an early warning only. The reconcile runs the same check and stays authoritative, so
the webhook fails open: on an unexpected error, or while the pool is not yet known, it admits.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import kopf
from prometheus_client import Counter

from paraserve.api import GROUP, PLURAL, VERSION, Finding
from paraserve.controller.bodies import plain
from paraserve.controller.reconciling.deployment_status import WAITING_CODES
from paraserve.controller.reconciling.reconcile import STATIC_CODES, Key, Reconciler

logger = logging.getLogger("paraserve.webhook")

#: The handler's id: the last segment of the webhook's URL path (kopf routes on it).
HANDLER_ID: Final = "validate-spec"
# The HTTP code of a refusal: a bad spec is Invalid; a spec the pool can never hold is
# Forbidden, as a ResourceQuota refusal is.
_INVALID: Final = 422
_FORBIDDEN: Final = 403


@dataclass
class PoolWatch:
    """Whether the Node and Pod indexes are loaded (empty before that is not "no nodes")."""

    known: bool = False


@dataclass(frozen=True)
class Review:
    """The webhook's answer: a refusal (or None to admit) and warnings kubectl prints."""

    refusal: Finding | None = None
    warnings: tuple[str, ...] = ()

    @property
    def http_code(self) -> int:
        code = self.refusal.code if self.refusal else ""
        return _INVALID if code in STATIC_CODES else _FORBIDDEN


def review(
    reconciler: Reconciler, key: Key, raw_spec: Mapping[str, Any], pool_known: bool
) -> Review:
    """Exactly the reconcile's verdict on a spec (Reconciler.judge); STATIC_CODES are refused
    even before the pool is known."""
    judgement = reconciler.judge(key, raw_spec)
    refusal, verdict = judgement.rejection, judgement.plan
    if refusal is not None and refusal.code in WAITING_CODES:
        # ConfigMapNotFound: created later (kubectl apply -f DIR has no order), it is a wait.
        return Review(warnings=(f"{refusal.code}: {refusal.message}",))
    if verdict is None:
        return Review(refusal=refusal)
    if refusal is not None and refusal.code not in STATIC_CODES and not pool_known:
        note = f"{refusal.code} not checked yet: the operator is still loading the node pool"
        return Review(warnings=(note,))
    if refusal is not None:
        return Review(refusal=refusal)
    # InsufficientFreeGPUs is a wait, not a refusal: say so at the prompt and admit.
    return Review(warnings=tuple(f"{w.code}: {w.message}" for w in verdict.warnings))


def spec_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> bool:
    """Only a new spec is checked, never a metadata-only update (labels, annotations, …)."""
    if old is None or new is None:
        return True
    return plain(old.get("spec") or {}) != plain(new.get("spec") or {})


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler, pool: PoolWatch) -> None:
    """Register the webhook's handlers on `registry` (they read the reconciler's indexes)."""
    reviews = Counter(
        "paraserve_operator_admission_reviews_total",
        "Admission reviews of InferenceDeployments: refused (by code), admitted, unchanged "
        "(spec not changed, not checked) or failed_open (the check itself failed).",
        ["result", "code"],
        registry=reconciler.metrics.registry,
    )

    # kopf runs watch handlers only once every index is loaded: the first node event says so.
    # Both handlers are coroutines: kopf would run plain functions in threads, while the
    # indexes they read are changed on the event loop.
    @kopf.on.event("v1", "nodes", id="webhook-pool-known", registry=registry)
    async def pool_known(**_: Any) -> None:
        pool.known = True

    @kopf.on.validate(
        GROUP,
        VERSION,
        PLURAL,
        id=HANDLER_ID,
        # Not DELETE, and no subresource: status and scale writes never reach the webhook.
        operations=["CREATE", "UPDATE"],
        ignore_failures=True,
        side_effects=False,
        registry=registry,
    )
    async def validate_spec(body: kopf.Body, warnings: list[str], **kwargs: Any) -> None:
        # `old` is None on CREATE; on UPDATE it is the stored object.
        old, new = kwargs.get("old"), kwargs.get("new")
        if body.metadata.get("deletionTimestamp") or not spec_changed(old, new):
            reviews.labels(result="unchanged", code="").inc()
            return
        key = (str(body.metadata.namespace or ""), str(body.metadata.name or ""))
        try:
            answer = review(reconciler, key, plain(body.get("spec") or {}), pool.known)
        except Exception:  # a bug here must never block a create: the reconcile still checks
            logger.exception("admission review of %s/%s failed; admitting", *key)
            reviews.labels(result="failed_open", code="").inc()
            return
        warnings.extend(answer.warnings)
        if answer.refusal is None:
            reviews.labels(result="admitted", code="").inc()
            return
        refusal = answer.refusal
        reviews.labels(result="refused", code=refusal.code).inc()
        raise kopf.AdmissionError(f"{refusal.code}: {refusal.message}", code=answer.http_code)
