"""The Kubernetes API calls the operator makes itself (kopf makes the watches and the finalizer patches).

The official client is synchronous; each call runs in a worker thread of the facade's own pool (sized
by ``--api-concurrency``: asyncio's default pool has only a few threads, too few for hundreds of
CacheLinks reconciled at once) with the configured request timeout, so no reconcile can hang on the API
server. Calls whose answer is not used skip the client's model decoding (``_preload_content=False``).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import functools
import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from cachelink_operator.models import GROUP, VERSION

PLURAL = "cachelinks"
POLICY_PLURAL = "cachelinkpolicies"


class Kube:
    """A thin async facade over the API calls the reconciler needs."""

    def __init__(self, api: k8s.ApiClient, timeout_s: float, concurrency: int = 16) -> None:
        self.core = k8s.CoreV1Api(api)
        self.custom = k8s.CustomObjectsApi(api)
        self.coordination = k8s.CoordinationV1Api(api)
        self.certificates = k8s.CertificatesV1Api(api)
        self.timeout = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="kube-api")

    def close(self) -> None:
        """Let the worker threads go once their calls (each bounded by the timeout) end."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        call = functools.partial(fn, *args, _request_timeout=self.timeout, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def _send(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        """A call whose answer is not needed: the body is drained in the worker thread (so the
        connection goes back to the pool at once), never decoded into models."""

        def call() -> None:
            response = fn(*args, _request_timeout=self.timeout, _preload_content=False, **kwargs)
            response.drain_conn()
            response.release_conn()

        await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch ``status`` of a CacheLink (a missing object is ignored: it is gone)."""
        try:
            await self._send(
                self.custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": dict(status)},
            )
        except ApiException as error:
            if error.status != 404:
                raise

    async def patch_policy_status(self, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch ``status`` of a CacheLinkPolicy."""
        try:
            await self._send(
                self.custom.patch_cluster_custom_object_status,
                GROUP,
                VERSION,
                POLICY_PLURAL,
                name,
                {"status": dict(status)},
            )
        except ApiException as error:
            if error.status != 404:
                raise

    async def get_cachelink(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The CacheLink as the API server has it now (None: gone)."""
        return await self._get(
            self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
        )

    async def get_policy(self, name: str) -> dict[str, Any] | None:
        """The CacheLinkPolicy as the API server has it now (None: gone)."""
        return await self._get(self.custom.get_cluster_custom_object, GROUP, VERSION, POLICY_PLURAL, name)

    async def _get(self, fn: Any, *args: Any) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self._run(fn, *args)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return found

    async def post_event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about ``obj`` (cluster-scoped objects: in namespace ``default``)."""
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        at = datetime.datetime.now(datetime.UTC)
        body = k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=namespace),
            involved_object=k8s.V1ObjectReference(
                api_version=obj.get("apiVersion"),
                kind=obj.get("kind"),
                name=meta["name"],
                namespace=meta.get("namespace"),
                uid=meta.get("uid"),
            ),
            type=type_,
            reason=reason,
            message=message[:1024],
            source=k8s.V1EventSource(component="cachelink-operator"),
            reporting_component="cachelink-operator",
            reporting_instance="cachelink-operator",
            first_timestamp=at,
            last_timestamp=at,
            count=1,
        )
        await self._send(self.core.create_namespaced_event, namespace, body)

    async def list_pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Pods of a namespace matching ``labels``, as plain API objects (camelCase dicts)."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        response = await self._run(
            self.core.list_namespaced_pod, namespace, label_selector=selector, _preload_content=False
        )
        items: list[dict[str, Any]] = json.loads(response.data)["items"]
        return items

    async def list_cachelink_uids(self) -> list[str]:
        """UIDs of every CacheLink of the cluster (including those being deleted)."""
        found = await self._run(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        return [str(item["metadata"]["uid"]) for item in found.get("items", [])]

    async def read_secret(self, namespace: str, name: str, key: str) -> bytes:
        """One key of a Secret, decoded."""
        secret = await self._run(self.core.read_namespaced_secret, name, namespace)
        return base64.b64decode((secret.data or {})[key])

    async def node_addresses(self, node: str) -> list[str]:
        """The InternalIP and ExternalIP addresses of ``node`` (none when there is no such node)."""
        try:
            found = await self._run(self.core.read_node, node)
        except ApiException as error:
            if error.status == 404:
                return []
            raise
        wanted = ("InternalIP", "ExternalIP")
        return [a.address for a in (found.status.addresses or []) if a.type in wanted]

    async def decide_certificate_request(
        self, body: Mapping[str, Any], condition: str, reason: str, message: str
    ) -> None:
        """Add an ``Approved`` or ``Denied`` condition to a CertificateSigningRequest (409: changed since)."""
        updated = json.loads(json.dumps(body))
        status = updated.setdefault("status", {})
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status.setdefault("conditions", []).append(
            {"type": condition, "status": "True", "reason": reason, "message": message, "lastUpdateTime": now}
        )
        name = updated["metadata"]["name"]
        await self._send(self.certificates.replace_certificate_signing_request_approval, name, updated)

    async def issue_certificate(self, body: Mapping[str, Any], cert_pem: bytes) -> None:
        """Set the signed certificate of an approved CertificateSigningRequest."""
        updated = json.loads(json.dumps(body))
        updated.setdefault("status", {})["certificate"] = base64.b64encode(cert_pem).decode()
        name = updated["metadata"]["name"]
        await self._send(self.certificates.replace_certificate_signing_request_status, name, updated)

    async def apply_config_map(
        self, namespace: str, name: str, data: Mapping[str, str], owner: Mapping[str, Any]
    ) -> None:
        """Create or replace an owned ConfigMap (rank tables)."""
        body = k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(
                name=name,
                namespace=namespace,
                owner_references=[_owner_ref(owner)],
                labels={"app.kubernetes.io/managed-by": "cachelink-operator"},
            ),
            data=dict(data),
        )
        try:
            await self._send(self.core.create_namespaced_config_map, namespace, body)
        except ApiException as error:
            if error.status != 409:
                raise
            await self._send(self.core.replace_namespaced_config_map, name, namespace, body)

    async def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str | None]) -> None:
        """Merge-patch a pod's annotations (None removes one); a vanished pod is ignored."""
        try:
            await self._send(
                self.core.patch_namespaced_pod,
                name,
                namespace,
                {"metadata": {"annotations": dict(annotations)}},
            )
        except ApiException as error:
            if error.status != 404:
                raise


def _owner_ref(owner: Mapping[str, Any]) -> k8s.V1OwnerReference:
    meta = owner["metadata"]
    return k8s.V1OwnerReference(
        api_version=f"{GROUP}/{VERSION}",
        kind="CacheLink",
        name=meta["name"],
        uid=meta["uid"],
        controller=True,
        block_owner_deletion=True,
    )
