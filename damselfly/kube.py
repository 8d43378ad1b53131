"""A small async Kubernetes REST client: get, list, server-side apply, status patch.

kopf brings the watches; the reconciler needs a handful of plain calls, typed,
with server-side apply (which kopf has no helper for). Credentials come from the
official client's loaders (in-cluster service account, or kubeconfig), so token
rotation and exec plugins behave as in every other Kubernetes tool.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from damselfly.errors import ServiceError

# kind -> plural, for the kinds the operator reads and writes.
PLURALS = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "Event": "events",
    "Pod": "pods",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "Deployment": "deployments",
    "StatefulSet": "statefulsets",
    "DaemonSet": "daemonsets",
    "P2PCluster": "p2pclusters",
    "ProxyRule": "proxyrules",
    "Lease": "leases",
}


def resource_path(
    api_version: str,
    kind: str,
    namespace: str,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{PLURALS[kind]}"
    if name is not None:
        path += f"/{name}"
    if subresource is not None:
        path += f"/{subresource}"
    return path


def object_path(obj: dict[str, Any], subresource: str | None = None) -> str:
    meta = obj["metadata"]
    return resource_path(
        obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"], subresource
    )


class ApiError(ServiceError):
    """A non-2xx answer; ``permanent`` when retrying the same request cannot help."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def permanent(self) -> bool:
        return self.status in (400, 403, 404, 409, 422)


@dataclass
class Credentials:
    server: str
    ssl_context: ssl.SSLContext | bool
    token: str | None
    refresh: Any  # the official client's Configuration, for rotating tokens


def load_credentials(kubeconfig: str | None = None) -> Credentials:
    """In-cluster service account, else kubeconfig (``kubeconfig`` first when given)."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if kubeconfig is not None:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    context: ssl.SSLContext | bool
    context = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.verify_ssl else False
    if cfg.cert_file:
        if not isinstance(context, ssl.SSLContext):
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.load_cert_chain(cfg.cert_file, cfg.key_file)
    return Credentials(cfg.host.rstrip("/"), context, None, cfg)


class Kube:
    """One aiohttp session to one API server."""

    def __init__(self, credentials: Credentials) -> None:
        self.creds = credentials
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=30),
                connector=aiohttp.TCPConnector(ssl=self.creds.ssl_context),
            )
        return self._session

    def _headers(self) -> dict[str, str]:
        cfg = self.creds.refresh
        if cfg is not None:
            # the client's key name changed across releases: "BearerToken" (v30+), before
            # "authorization"; the value already reads "Bearer <token>". The getter runs
            # the refresh hook (rotated in-cluster tokens, expiring exec credentials).
            for identifier in ("BearerToken", "authorization"):
                token = cfg.get_api_key_with_prefix(identifier)
                if token:
                    return {"Authorization": str(token)}
        if self.creds.token:
            return {"Authorization": f"Bearer {self.creds.token}"}
        return {}

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        session = self._ensure_session()
        headers = {"Accept": "application/json", **self._headers()}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        async with session.request(
            method, self.creds.server + path, params=params, data=data, headers=headers
        ) as resp:
            text = await resp.text()
            try:
                payload: dict[str, Any] = json.loads(text) if text else {}
            except json.JSONDecodeError:
                payload = {"message": text}
            if resp.status >= 300:
                raise ApiError(
                    resp.status,
                    str(payload.get("reason", resp.reason)),
                    str(payload.get("message", text)),
                )
            return payload

    async def stream(
        self, path: str, params: dict[str, str], idle_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        """A watch: one JSON event per line until the server ends the stream.

        No total timeout (a watch lasts minutes); ``idle_timeout`` bounds the silence
        between lines, so a dead connection is noticed (bookmarks keep it talking).
        """
        session = self._ensure_session()
        headers = {"Accept": "application/json", **self._headers()}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=idle_timeout)
        async with session.get(
            self.creds.server + path, params=params, headers=headers, timeout=timeout
        ) as resp:
            if resp.status >= 300:
                text = await resp.text()
                try:
                    payload = json.loads(text)
                except json.JSONDecodeError:
                    payload = {"message": text}
                raise ApiError(
                    resp.status,
                    str(payload.get("reason", resp.reason)),
                    str(payload.get("message", text)),
                )
            while True:
                line = await resp.content.readline()
                if not line:
                    return
                if line.strip():
                    event: dict[str, Any] = json.loads(line)
                    yield event

    async def delete(self, path: str) -> None:
        """Delete; an object already gone is fine."""
        try:
            await self.request("DELETE", path)
        except ApiError as exc:
            if exc.status != 404:
                raise

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self,
        path: str,
        label_selector: str | None = None,
        *,
        field_selector: str | None = None,
        cached: bool = False,
    ) -> list[dict[str, Any]]:
        """Items of a list; ``cached``: from the API server's watch cache (resourceVersion
        0), which spares etcd and may lag a moment: for reads that only explain."""
        params: dict[str, str] = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        if cached:
            params["resourceVersion"] = "0"
        result = await self.request("GET", path, params=params or None)
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    async def apply(
        self,
        obj: dict[str, Any],
        field_manager: str,
        *,
        dry_run: bool = False,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """Server-side apply: we own exactly the fields we send, and nothing else."""
        params = {"fieldManager": field_manager, "force": "true"}
        if dry_run:
            params["dryRun"] = "All"
        return await self.request(
            "PATCH",
            object_path(obj, subresource),
            params=params,
            body=obj,
            content_type="application/apply-patch+yaml",
        )

    async def patch_status(self, path: str, status: dict[str, Any]) -> dict[str, Any]:
        """Replace .status through the status subresource (spec is never written)."""
        return await self.request(
            "PATCH",
            path + "/status",
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    async def post_event(
        self,
        involved: dict[str, Any],
        type_: str,
        reason: str,
        message: str,
        component: str,
        now: str,
    ) -> None:
        meta = involved["metadata"]
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved["apiVersion"],
                "kind": involved["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": component,
        }
        await self.request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=event)
