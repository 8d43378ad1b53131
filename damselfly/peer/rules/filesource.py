"""Where a peer's rules come from, and swapping them in without a restart.

The rules file (or a mounted ConfigMap directory holding ``rules.yaml``) is
polled; kubelet swaps ConfigMap contents through an atomic ``..data`` symlink,
so reading the file by path always sees one whole version. A new version is
validated (``api.ruleset.RuleSet``), compiled, and replaces the old rules in one
assignment; a version that fails leaves the last good rules in force. The
effective config (``effective.yaml``) is written afterwards from the same model,
as a record for people: it is not on the way from a rule set to the proxy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml
from pydantic import ValidationError

from damselfly.api.ruleset import RuleSet
from damselfly.config.peer import PeerConfig
from damselfly.errors import InputError, describe_validation
from damselfly.peer.metrics import PeerMetrics
from damselfly.peer.rules.match import CompiledRules, RulesHolder

log = logging.getLogger(__name__)


class RulesRejected(InputError):
    """A rules version that cannot be used; the message says why."""


def rules_path(configured: str) -> Path:
    path = Path(configured)
    return path / "rules.yaml" if path.is_dir() else path


def render_effective(config: PeerConfig, ruleset: RuleSet, source: str) -> str:
    """The effective config: the rules in force, every field of the model (defaults
    included), and the proxy settings they apply under."""
    rendered_at = datetime.now(UTC).isoformat(timespec="seconds")
    body = {
        "proxy": config.proxy.model_dump(
            mode="json",
            by_alias=True,
            include={"port", "connect_ports", "default_filtered_query_params"},
        ),
        "rules": ruleset.model_dump(mode="json", by_alias=True)["rules"],
    }
    return (
        f"# The effective proxy config of this peer, rendered by damselfly at {rendered_at}\n"
        f"# from {source}. Do not edit: it is rewritten whenever the rules change.\n"
        f"rulesHash: {json.dumps(ruleset.digest())}\n" + yaml.safe_dump(body, sort_keys=False)
    )


def parse_rules(text: str, source: str) -> RuleSet:
    try:
        return RuleSet.from_yaml(text)
    except yaml.YAMLError as exc:
        raise RulesRejected(f"{source}: not valid YAML: {exc}") from exc
    except ValidationError as exc:
        raise RulesRejected(describe_validation(exc, source)) from exc


@dataclass
class RulesStatus:
    hash: str
    count: int
    source: str
    loaded_at: float
    last_error: str | None = None
    last_error_at: float | None = None


class RulesSource:
    """Loads rules into a RulesHolder and keeps them current."""

    def __init__(
        self, config: PeerConfig, holder: RulesHolder, metrics: PeerMetrics, state_dir: Path
    ) -> None:
        self.config = config
        self.holder = holder
        self.metrics = metrics
        self.effective_path = state_dir / "effective.yaml"
        self._seen_digest: str | None = None
        self.status = RulesStatus(holder.current.digest, len(holder.current), "none", time.time())

    def apply(self, ruleset: RuleSet, source: str) -> None:
        """Compile and swap in ``ruleset`` (validated, so it compiles), then record it."""
        defaults = tuple(self.config.proxy.default_filtered_query_params)
        compiled = CompiledRules(ruleset, defaults)
        self.holder.current = compiled
        self._write_effective(render_effective(self.config, ruleset, source))
        self.status = RulesStatus(compiled.digest, len(compiled), source, time.time())
        self.metrics.rule_reloads.inc()
        self.metrics.set_rules(compiled.digest, len(compiled))
        log.info(
            "rules loaded",
            extra={"source": source, "rules": len(compiled), "hash": compiled.digest},
        )

    def _write_effective(self, text: str) -> None:
        """Keep the rendered config on disk for people to read. It is a record, not the
        rules: a full disk or a lost volume must not keep a new rules version out."""
        tmp = self.effective_path.with_suffix(".tmp")
        try:
            tmp.write_text(text)
            tmp.replace(self.effective_path)
        except OSError as exc:
            log.warning(
                "cannot write the effective config; the rules apply all the same",
                extra={"path": str(self.effective_path), "error": exc.strerror or str(exc)},
            )

    def reject(self, error: str) -> None:
        self.status.last_error = error
        self.status.last_error_at = time.time()
        self.metrics.rule_reload_failures.inc()
        log.error("rules rejected; keeping the last good set", extra={"error": error})

    def load_initial(self) -> None:
        """Rules at start-up: the file when configured (and valid), else the inline list."""
        self.apply(RuleSet(rules=self.config.rules.rules), "config")
        if self.config.rules.file is not None:
            self.poll_file()

    def poll_file(self) -> bool:
        """Apply the rules file if it changed; True when a new version went in."""
        assert self.config.rules.file is not None
        path = rules_path(self.config.rules.file)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as exc:
            self.reject(f"{path}: cannot read: {exc.strerror}")
            return False
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._seen_digest:
            return False
        self._seen_digest = digest
        try:
            self.apply(parse_rules(data.decode("utf-8", errors="replace"), str(path)), str(path))
        except RulesRejected as exc:
            self.reject(str(exc))
            return False
        return True

    async def watch(self) -> None:
        if self.config.rules.file is None:
            return
        while True:
            await asyncio.sleep(self.config.rules.watch_interval)
            try:
                self.poll_file()
            except Exception:
                log.exception("rules watch failed")
