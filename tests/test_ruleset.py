"""One rule model: the ProxyRule spec and the peer's rule share their fields."""

from __future__ import annotations

from damselfly.api.rules import peer_rule
from damselfly.api.ruleset import Rule, RuleFields, regex_error
from damselfly.api.v1alpha1 import ProxyRule, ProxyRuleSpec


def test_every_rule_field_is_in_the_spec_and_reaches_the_peer() -> None:
    assert set(RuleFields.model_fields) <= set(ProxyRuleSpec.model_fields)
    assert set(RuleFields.model_fields) == set(Rule.model_fields)
    spec = {
        "clusterRef": {"name": "c"},
        "regex": "/blobs/",
        "useTLS": True,
        "redirect": "mirror:5000",
        "filteredQueryParams": ["sig"],
        "contentAddressed": False,
    }
    rule = peer_rule(ProxyRule.model_validate({"metadata": {"name": "r"}, "spec": spec}))
    dumped = rule.model_dump(by_alias=True)
    assert dumped == {k: v for k, v in spec.items() if k != "clusterRef"}


def test_one_re2_check_for_both_forms() -> None:
    assert regex_error("a+") is None
    message = regex_error("(?<=x)y")
    assert message is not None
    assert "not valid RE2" in message
