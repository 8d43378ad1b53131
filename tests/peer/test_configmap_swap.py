"""ConfigMap-dir mode: kubelet's atomic ``..data`` symlink swap, done with real symlinks.

kubelet writes a ConfigMap volume as ``..<timestamp>/`` directories, a ``..data``
symlink to the current one, and ``rules.yaml -> ..data/rules.yaml``; an update
writes a new timestamp dir, points ``..data_tmp`` at it and renames it over
``..data`` (one atomic rename), then removes the old dir. A kubelet cannot run
here, so this test performs exactly those filesystem steps.
"""

from __future__ import annotations

import os
from pathlib import Path

from damselfly.api.ruleset import RuleSet
from damselfly.config.peer import PeerConfig
from damselfly.peer.metrics import PeerMetrics
from damselfly.peer.rules.filesource import RulesSource
from damselfly.peer.rules.match import CompiledRules, RulesHolder


def kubelet_write(volume: Path, version: int, rules_yaml: str) -> None:
    """One ConfigMap version, written and published the way kubelet's AtomicWriter does."""
    stamp = f"..2026_01_01_00_00_{version:02d}.{version}"
    (volume / stamp).mkdir()
    (volume / stamp / "rules.yaml").write_text(rules_yaml)
    old = os.readlink(volume / "..data") if (volume / "..data").is_symlink() else None
    os.symlink(stamp, volume / "..data_tmp")
    os.rename(volume / "..data_tmp", volume / "..data")  # the atomic swap
    if not (volume / "rules.yaml").is_symlink():
        os.symlink("..data/rules.yaml", volume / "rules.yaml")
    if old is not None:
        for child in (volume / old).iterdir():
            child.unlink()
        (volume / old).rmdir()


def source_for(volume: Path, tmp_path: Path) -> RulesSource:
    config = PeerConfig.model_validate({"rules": {"file": str(volume)}})
    holder = RulesHolder(CompiledRules(RuleSet(), ()))
    state = tmp_path / "state"
    state.mkdir()
    return RulesSource(config, holder, PeerMetrics(), state)


def test_symlink_swap_is_picked_up_whole_and_a_bad_version_keeps_the_last_good(
    tmp_path: Path,
) -> None:
    volume = tmp_path / "config"
    volume.mkdir()
    kubelet_write(volume, 1, "rules:\n  - regex: /v1/\n")
    source = source_for(volume, tmp_path)
    source.load_initial()
    assert [r.regex for r in source.holder.current.ruleset.rules] == ["/v1/"]
    assert source.poll_file() is False  # unchanged

    kubelet_write(volume, 2, "rules:\n  - regex: /v2/\n    filteredQueryParams: [sig]\n")
    assert source.poll_file() is True
    rules = source.holder.current.ruleset.rules
    assert [(r.regex, r.filtered_query_params) for r in rules] == [("/v2/", ["sig"])]
    assert len(list(volume.glob("..2026*"))) == 1  # the old version is gone

    good = source.holder.current.digest
    kubelet_write(volume, 3, "rules:\n  - regex: '(?<=x)y'\n")  # RE2 rejects lookbehind
    assert source.poll_file() is False
    assert source.holder.current.digest == good
    assert source.status.last_error is not None
    assert "RE2" in source.status.last_error

    kubelet_write(volume, 4, "rules: []\n")
    assert source.poll_file() is True
    assert len(source.holder.current) == 0
    effective = (tmp_path / "state" / "effective.yaml").read_text()
    assert f'rulesHash: "{source.holder.current.digest}"' in effective
