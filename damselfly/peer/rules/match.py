"""The peer's compiled rules: which URLs go through the cache, and how.

The rule model itself (Rule, RuleSet, the default filtered query keys, the digest)
is ``damselfly.api.ruleset``, shared with the operator.
"""

from __future__ import annotations

from dataclasses import dataclass

import re2

from damselfly.api.ruleset import Rule, RuleSet


@dataclass(frozen=True)
class RuleMatch:
    """What a matching rule tells the proxy to do with one request."""

    rule: Rule
    upstream_url: str
    filtered_query_params: tuple[str, ...]


class CompiledRules:
    """A rule set with its regexes compiled; immutable, swapped whole on reload."""

    def __init__(self, ruleset: RuleSet, default_filtered: tuple[str, ...]) -> None:
        self.ruleset = ruleset
        self.digest = ruleset.digest()
        self._compiled = [(re2.compile(rule.regex), rule) for rule in ruleset.rules]
        self._default_filtered = default_filtered

    def __len__(self) -> int:
        return len(self._compiled)

    def match(self, url: str) -> RuleMatch | None:
        """The first rule matching ``url`` (query ignored), or None."""
        scheme_host_path = url.split("?", 1)[0].split("#", 1)[0]
        for pattern, rule in self._compiled:
            if pattern.search(scheme_host_path):
                return RuleMatch(
                    rule=rule,
                    upstream_url=upstream_url(url, rule),
                    filtered_query_params=self._default_filtered
                    + tuple(rule.filtered_query_params),
                )
        return None


class RulesHolder:
    """The rules in force; replaced whole, so a request sees one set start to end."""

    def __init__(self, rules: CompiledRules) -> None:
        self.current = rules


def upstream_url(url: str, rule: Rule) -> str:
    """The URL to fetch upstream: scheme upgraded by useTLS, host by redirect.

    The path and query stay byte for byte as the client sent them: signed URLs
    must reach the origin unchanged.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"{url!r} is not an absolute URL")
    authority, slash, path_and_query = rest.partition("/")
    if rule.use_tls and scheme == "http":
        scheme = "https"
        if authority.endswith(":80"):
            authority = authority[:-3]
    if rule.redirect:
        authority = rule.redirect
    return f"{scheme}://{authority}{slash}{path_and_query}"
