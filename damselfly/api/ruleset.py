"""Proxy rules as users write them: the rule, the rule set, its digest.

Field names follow Dragonfly's proxy rules (``regex``, ``useTLS``, ``redirect``,
``filteredQueryParams``) so its users can move their rules over unchanged.
Regexes are RE2: linear-time matching, safe on rules users write.

This is the contract between the operator (which renders a cluster's ProxyRules
into a rule set and reports its digest) and the peers (which run a rule set and
report the digest they run); the peer's compiled matcher is ``damselfly.peer.rules.match``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import re2
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

# Query keys that vary per request (signatures, expiry, tokens) without changing
# the object: left out of the cache key by default. "*" ends a prefix.
DEFAULT_FILTERED_QUERY_PARAMS: tuple[str, ...] = (
    # Amazon S3 (SigV4 and SigV2 query auth)
    "X-Amz-*",
    "AWSAccessKeyId",
    # Google Cloud Storage
    "X-Goog-*",
    "GoogleAccessId",
    # Alibaba OSS (also CloudFront's Expires/Signature)
    "OSSAccessKeyId",
    "Expires",
    "Signature",
    "SecurityToken",
    # Huawei OBS
    "AccessKeyId",
    "X-Obs-Date",
    "X-Obs-Security-Token",
    # Tencent COS
    "q-sign-*",
    "q-ak",
    "q-key-time",
    "q-header-list",
    "q-url-param-list",
    "q-signature",
    "x-cos-security-token",
    # containerd namespace
    "ns",
    # CloudFront
    "Policy",
    "Key-Pair-Id",
    # GitHub LFS / release asset URLs
    "actor_id",
    "key_id",
    "repo_id",
    "token",
)


def regex_error(regex: str) -> str | None:
    """Why RE2 rejects ``regex``, or None: the one RE2 check, for rule files and ProxyRules.

    Not a validator of ProxyRuleSpec: the operator must still read such a rule to
    report the reason in its status (CEL cannot check RE2)."""
    try:
        re2.compile(regex)
    except re2.error as exc:
        return f"regex {regex!r} is not valid RE2: {exc}"
    return None


class RuleFields(BaseModel):
    """The fields of one rule, declared once: names, keys, types, defaults, meaning.

    ``Rule`` (a rules file, the peer's form) and ``v1alpha1.ProxyRuleSpec`` (the
    custom resource) both take their rule fields from here, each adding only the
    constraints of its own format (``narrowed``); a field added here is in both,
    and in the rendered rule set, without touching another file.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    regex: str = Field(
        min_length=1,
        description="RE2 regex matched against scheme://host[:port]/path (no query).",
    )
    use_tls: bool = Field(
        default=False,
        alias="useTLS",
        description="Fetch upstream over https although the client spoke http.",
    )
    redirect: str | None = Field(
        default=None,
        description="Send matching requests to this host[:port] instead.",
    )
    filtered_query_params: list[str] | None = Field(
        default=None,
        alias="filteredQueryParams",
        description="Query keys left out of the cache key (added to the cluster's list); "
        "a trailing * matches a prefix.",
    )
    content_addressed: bool = Field(
        default=True,
        alias="contentAddressed",
        description="Treat a sha256 in the path (OCI blobs, LFS oids, HF CDN) as the "
        "object's digest and verify it.",
    )

    def rule_fields(self) -> dict[str, Any]:
        """The rule fields that are set, by name: what a ``Rule`` is built from."""
        return self.model_dump(include=set(RuleFields.model_fields), exclude_none=True)


def narrowed(name: str, **constraints: Any) -> Any:
    """Rule field ``name`` as declared in RuleFields, with ``constraints`` added (a
    ``default_factory`` given here replaces the declared default)."""
    base = RuleFields.model_fields[name]
    if "default_factory" in constraints:
        base = FieldInfo.merge_field_infos(base, default=PydanticUndefined)
    added: FieldInfo = Field(**constraints)
    return FieldInfo.merge_field_infos(base, added)


class Rule(RuleFields):
    """One proxy rule, as users write it (in a rules file or a peer's config)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    redirect: str | None = narrowed("redirect", min_length=1)
    filtered_query_params: list[str] = narrowed("filtered_query_params", default_factory=list)

    @field_validator("regex")
    @classmethod
    def _regex_compiles_in_re2(cls, value: str) -> str:
        error = regex_error(value)
        if error:
            raise ValueError(error)
        return value

    @field_validator("redirect")
    @classmethod
    def _redirect_is_a_host(cls, value: str | None) -> str | None:
        if value is not None and ("/" in value or " " in value):
            raise ValueError(f"redirect {value!r} must be a host or host:port, not a URL")
        return value


class RuleSet(BaseModel):
    """The rules file a peer watches: ``{rules: [...]}``, first match wins."""

    model_config = ConfigDict(extra="forbid")

    rules: list[Rule] = Field(default_factory=list)

    def digest(self) -> str:
        """Stable hash of the rule set, so operators can tell which set a peer runs."""
        canonical = json.dumps(
            self.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @classmethod
    def from_yaml(cls, text: str) -> RuleSet:
        data: Any = yaml.safe_load(text) if text.strip() else {}
        if data is None:
            data = {}
        if isinstance(data, list):  # a bare list of rules is accepted too
            data = {"rules": data}
        return cls.model_validate(data)

    def to_yaml(self) -> str:
        dumped = self.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        dumped.setdefault("rules", [])
        return yaml.safe_dump(dumped, sort_keys=False)
