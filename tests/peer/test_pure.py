"""Pure peer logic: rules, task ids, piece geometry, ranges, sizes, config errors."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import ValidationError

from damselfly.api.ruleset import DEFAULT_FILTERED_QUERY_PARAMS, Rule, RuleSet
from damselfly.config.load import ConfigError
from damselfly.config.peer import parse_config
from damselfly.config.units import parse_duration, parse_size
from damselfly.peer.net.ranges import ByteRange, UnsatisfiableRange, parse_range
from damselfly.peer.rules.match import CompiledRules, upstream_url
from damselfly.peer.rules.taskid import content_digest, filter_query, task_key
from damselfly.peer.store.pieces import MiB, piece_at, piece_length, pieces_covering
from damselfly.peer.transfer.origin import not_cacheable

OID = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393"
DEFAULTS = DEFAULT_FILTERED_QUERY_PARAMS


@pytest.mark.parametrize(
    ("size", "expected"),
    [(1, 4 * MiB), (1 << 30, 4 * MiB), (4 << 30, 16 * MiB), (1 << 40, 64 * MiB), (None, 4 * MiB)],
)
def test_piece_length(size: int | None, expected: int) -> None:
    assert piece_length(size) == expected


def test_last_piece_is_short_and_coverage_is_exact() -> None:
    size = 10 * MiB + 5
    assert piece_at(2, size, 4 * MiB).length == 2 * MiB + 5
    with pytest.raises(IndexError):
        piece_at(3, size, 4 * MiB)
    assert list(pieces_covering(0, 1, 4 * MiB)) == [0]
    assert list(pieces_covering(4 * MiB - 1, 4 * MiB + 1, 4 * MiB)) == [0, 1]
    assert list(pieces_covering(5, 5, 4 * MiB)) == []


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-0", 10, ByteRange(0, 0)),
        ("bytes=5-", 10, ByteRange(5, 9)),
        ("bytes=-3", 10, ByteRange(7, 9)),
        ("bytes=-30", 10, ByteRange(0, 9)),
        ("bytes=2-100", 10, ByteRange(2, 9)),
        ("bytes=0-1,4-5", 10, None),
        ("items=0-1", 10, None),
        ("bytes=5-2", 10, None),
        ("bytes=abc", 10, None),
        (None, 10, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0)])
def test_unsatisfiable_range(header: str, size: int) -> None:
    with pytest.raises(UnsatisfiableRange):
        parse_range(header, size)


def test_content_range_header() -> None:
    assert ByteRange(5, 9).content_range(10) == "bytes 5-9/10"


def test_filter_query_keeps_order_and_drops_signatures() -> None:
    url = (
        "http://s3:9000/bucket/obj?b=2&X-Amz-Signature=x&a=1"
        "&X-Amz-Credential=c&x-amz-date=d&Expires=1&versionId=7"
    )
    assert filter_query(url, DEFAULTS) == "http://s3:9000/bucket/obj?b=2&a=1&versionId=7"
    assert filter_query("http://h/p?", DEFAULTS) == "http://h/p"
    assert filter_query("http://h/p#frag", DEFAULTS) == "http://h/p"


def test_two_presigned_urls_of_one_object_share_a_task() -> None:
    one = task_key("http://s3/b/file.bin?X-Amz-Signature=aaa&X-Amz-Date=1", DEFAULTS)
    two = task_key("http://s3/b/file.bin?X-Amz-Signature=bbb&X-Amz-Date=2", DEFAULTS)
    other = task_key("http://s3/b/other.bin?X-Amz-Signature=aaa", DEFAULTS)
    assert one.task_id == two.task_id != other.task_id
    assert one.sha256 is None


def test_tag_and_application_separate_tasks() -> None:
    base = task_key("http://h/f", DEFAULTS)
    assert task_key("http://h/f", DEFAULTS, tag="t").task_id != base.task_id
    assert task_key("http://h/f", DEFAULTS, application="a").task_id != base.task_id


def test_content_addressed_urls_use_the_digest_across_hosts() -> None:
    lfs = task_key(f"http://s3-a/lfs/org/repo/{OID}?X-Amz-Signature=1", DEFAULTS)
    oci = task_key(f"https://registry/v2/library/x/blobs/sha256:{OID}", DEFAULTS)
    hf = task_key(f"https://cdn-lfs.example/repos/aa/bb/{OID}?Expires=1", DEFAULTS)
    assert lfs.task_id == oci.task_id == hf.task_id == OID
    assert lfs.sha256 == OID
    assert content_digest("http://h/blobs/sha256:XYZ") is None
    assert content_digest(f"http://h/{OID}/other") is None
    opted_out = task_key(f"http://h/{OID}", DEFAULTS, content_addressed=False)
    assert opted_out.sha256 is None
    assert opted_out.task_id != OID


def test_rule_matching_first_match_wins_and_ignores_query() -> None:
    rules = CompiledRules(
        RuleSet(
            rules=[
                Rule(regex=r"^https?://s3\.local/", filteredQueryParams=["session"]),
                Rule(regex=r"\.bin$", useTLS=True, redirect="mirror:8443"),
            ]
        ),
        DEFAULTS,
    )
    first = rules.match("http://s3.local/x.bin?session=1")
    assert first is not None
    assert first.rule.regex.startswith("^https?")
    assert "session" in first.filtered_query_params
    assert "X-Amz-*" in first.filtered_query_params
    second = rules.match("http://other/x.bin?a=b")
    assert second is not None
    assert second.upstream_url == "https://mirror:8443/x.bin?a=b"
    assert rules.match("http://other/x.bin.txt") is None
    # The regex sees no query: a query that looks like a match does not count.
    assert rules.match("http://other/x?f=.bin") is None


def test_upstream_url_keeps_signed_query_byte_for_byte() -> None:
    url = "http://h:80/p%2Fq?X-Amz-Signature=a%2Bb&z=1"
    assert (
        upstream_url(url, Rule(regex=".", useTLS=True))
        == "https://h/p%2Fq?X-Amz-Signature=a%2Bb&z=1"
    )
    assert upstream_url(url, Rule(regex=".")) == url


def test_bad_rules_are_rejected_with_the_reason() -> None:
    with pytest.raises(ValidationError, match="not valid RE2"):
        Rule(regex="(a")
    with pytest.raises(ValidationError, match="not valid RE2"):
        Rule(regex=r"(\w)\1")  # backreferences are not RE2
    with pytest.raises(ValidationError, match="host or host:port"):
        Rule(regex=".", redirect="http://x/")
    with pytest.raises(ValidationError, match="Extra inputs"):
        RuleSet.from_yaml("rules:\n- regex: a\n  usetls: true\n")


def test_ruleset_yaml_roundtrip_and_digest() -> None:
    text = "rules:\n- regex: 'lfs'\n  useTLS: true\n  filteredQueryParams: [sig]\n"
    ruleset = RuleSet.from_yaml(text)
    assert ruleset.rules[0].use_tls is True
    again = RuleSet.from_yaml(ruleset.to_yaml())
    assert again == ruleset
    assert again.digest() == ruleset.digest()
    assert RuleSet.from_yaml("").rules == []
    assert RuleSet(rules=[Rule(regex="b")]).digest() != ruleset.digest()


def test_sizes_and_durations() -> None:
    assert parse_size("100Gi") == 100 * 2**30
    assert parse_size("1.5M") == 1_500_000
    assert parse_size(42) == 42
    assert parse_duration("1h30m") == 5400
    assert parse_duration("24h") == 86400
    for bad in ("10Qi", "-1", "Gi"):
        with pytest.raises(ValueError, match="not a size"):
            parse_size(bad)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("1 hour")


def test_config_errors_name_key_and_value() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"proxy": {"port": 70000}, "storage": {"quota": "lots"}}, "peer.yaml")
    message = str(info.value)
    assert "proxy.port" in message
    assert "70000" in message
    assert "storage.quota" in message
    assert "'lots'" in message
    with pytest.raises(ConfigError, match="lowWatermarkPercent"):
        parse_config({"storage": {"lowWatermarkPercent": 95}})
    with pytest.raises(ConfigError, match="not a CIDR"):
        parse_config({"proxy": {"allowedClientCidrs": ["10.0.0.0/33"]}})
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config(["x"])


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("no-cache, max-age=0, must-revalidate", "no-cache"),
        ("private, max-age=600", "private"),
        ("No-Store", "no-store"),
        ("public, max-age=0", "max-age=0"),
        ("public, max-age=31536000, immutable", None),
        ("max-age=3600", None),
        (None, None),
    ],
)
def test_cache_control_that_forbids_keeping_a_response(
    header: str | None, expected: str | None
) -> None:
    assert not_cacheable(header) == expected


def test_errors_read_as_one_line() -> None:
    from damselfly.peer.net.httputil import describe_error
    from damselfly.peer.store.piecestore import StoreFull

    assert describe_error(StoreFull("object of 5 bytes does not fit")) == (
        "object of 5 bytes does not fit"
    )
    assert (
        describe_error(ConnectionResetError("peer\n reset")) == "ConnectionResetError: peer reset"
    )
    assert describe_error(OSError()) == "OSError"

    class ParsedMessageError(Exception):
        def __str__(self) -> str:
            return "<RawResponseMessage(version=HttpVersion(major=1, minor=0), code=200)>"

    assert describe_error(ParsedMessageError()) == "ParsedMessageError"


def test_no_object_can_take_the_task_id_of_a_url() -> None:
    """An object made of a URL's key text, fetched under its own sha256, stays its own entry."""
    victim = task_key("http://hub.example/org/model/resolve/main/config.json", DEFAULTS)
    forged = "\n".join((victim.cache_url, "", "")).encode()
    attacker = task_key(
        f"http://lfs.example/objects/{hashlib.sha256(forged).hexdigest()}", DEFAULTS
    )
    assert attacker.sha256 is not None
    assert attacker.task_id != victim.task_id


def test_metadata_addresses_count_as_link_local() -> None:
    from damselfly.peer.net.access import is_link_local

    for address in ("169.254.169.254", "fe80::1%eth0", "::ffff:169.254.169.254", "fd00:ec2::254"):
        assert is_link_local(address), address
    for address in ("10.0.0.1", "fd00:ec2::253", "127.0.0.1", "example.com"):
        assert not is_link_local(address), address


def test_parent_addresses_pass_the_egress_guard_only_when_they_are_one_peer() -> None:
    from damselfly.peer.net.access import parent_refusal

    for address in ("10.244.1.7", "127.0.0.1", "192.168.3.4", "fd12::7", "::1"):
        assert parent_refusal(address, allow_link_local=False) is None, address
    refused = {
        "169.254.169.254": "link-local",
        "::ffff:169.254.169.254": "link-local",
        "fe80::1%eth0": "link-local",
        "fd00:ec2::254": "link-local",
        "0.0.0.0": "not the address of one host",
        "::": "not the address of one host",
        "224.0.0.251": "not the address of one host",
        "255.255.255.255": "not the address of one host",
        "metadata.google.internal": "not an IP address",
        "": "not an IP address",
    }
    for address, why in refused.items():
        refusal = parent_refusal(address, allow_link_local=False)
        assert refusal is not None, address
        assert why in refusal, (address, refusal)
    assert parent_refusal("169.254.169.254", allow_link_local=True) is None


def test_disk_space_rules() -> None:
    import errno
    import sqlite3

    from damselfly.peer.store.gc import StoredTask, select_lru
    from damselfly.peer.store.space import is_disk_full, shortfall

    tasks = [
        StoredTask("old", True, 10.0, 30),
        StoredTask("busy", True, 5.0, 30),
        StoredTask("new", True, 20.0, 30),
    ]
    assert select_lru(tasks, frozenset({"busy"}), 60, "disk") == [("old", "disk")]
    assert select_lru(tasks, frozenset({"busy"}), 0, "disk") == [("old", "disk"), ("new", "disk")]
    assert select_lru(tasks, frozenset(), 90, "disk") == []

    assert shortfall(free=100, pending=10, incoming=50, min_free=40) == 0
    assert shortfall(free=100, pending=10, incoming=60, min_free=40) == 10

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = OSError(errno.ENOSPC, "full")
    assert is_disk_full(wrapped)
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
    assert is_disk_full(full)
    assert not is_disk_full(sqlite3.OperationalError("database is locked"))
