"""ProxyRule objects to the peer's RuleSet: one function for the operator and the peer.

The operator writes the result into the rules ConfigMap and reports its digest;
a peer in API-watch mode builds its rules from the same objects with the same
function, so "the peer runs the current rules" is a plain digest comparison.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from damselfly.api.ruleset import Rule, RuleSet, regex_error
from damselfly.api.v1alpha1 import ProxyRule
from damselfly.errors import describe_validation


@dataclass(frozen=True)
class RuleVerdict:
    """What happened to one ProxyRule when its cluster's rules were rendered."""

    rule: ProxyRule
    accepted: bool
    applied: bool
    reason: str
    message: str


@dataclass
class RenderedRules:
    ruleset: RuleSet
    verdicts: list[RuleVerdict] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return self.ruleset.digest()

    def yaml(self) -> str:
        return self.ruleset.to_yaml()


def peer_rule(rule: ProxyRule) -> Rule:
    """The peer's form of a ProxyRule; raises ValueError when the peer would refuse it."""
    error = regex_error(rule.spec.regex)
    if error:
        raise ValueError(error)
    try:
        return Rule.model_validate(rule.spec.rule_fields())
    except ValidationError as exc:
        raise ValueError(describe_validation(exc)) from None


def render_rules(cluster_name: str, rules: Iterable[ProxyRule]) -> RenderedRules:
    """The rules of ``cluster_name``, ordered by priority then name; bad ones left out."""
    mine = sorted(
        (r for r in rules if r.spec.cluster_ref.name == cluster_name),
        key=lambda r: (r.spec.priority, r.name),
    )
    accepted: list[Rule] = []
    verdicts: list[RuleVerdict] = []
    for rule in mine:
        try:
            converted = peer_rule(rule)
        except ValueError as exc:
            reason = "InvalidRegex" if "RE2" in str(exc) else "InvalidRule"
            verdicts.append(RuleVerdict(rule, False, False, reason, str(exc)))
            continue
        if rule.spec.disabled:
            verdicts.append(RuleVerdict(rule, True, False, "Disabled", "spec.disabled is true"))
            continue
        accepted.append(converted)
        verdicts.append(RuleVerdict(rule, True, True, "Applied", ""))
    return RenderedRules(RuleSet(rules=accepted), verdicts)


def parse_proxy_rules(
    raw_rules: Iterable[dict[str, Any]],
) -> tuple[list[ProxyRule], list[tuple[dict[str, Any], str]]]:
    """Raw API objects to ProxyRules; the ones that do not validate, with why."""
    rules: list[ProxyRule] = []
    invalid: list[tuple[dict[str, Any], str]] = []
    for raw in raw_rules:
        try:
            rules.append(ProxyRule.model_validate(raw))
        except ValidationError as exc:
            invalid.append((raw, describe_validation(exc)))
    return rules, invalid


def ruleset_from_objects(cluster_name: str, raw_rules: Iterable[dict[str, Any]]) -> RenderedRules:
    """The RuleSet a cluster's peers run, from raw ProxyRule objects as listed or watched."""
    rules, _ = parse_proxy_rules(raw_rules)
    return render_rules(cluster_name, rules)
