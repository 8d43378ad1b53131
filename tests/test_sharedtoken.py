"""The shared token file: what is sent, what is accepted, and rotation without a restart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from damselfly.sharedtoken import ENV_VAR, RECHECK_SECONDS, SharedToken, TokenFileError

OLD = "old-token-0123456789abcdef"
NEW = "new-token-0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str) -> None:
    """Replace the file as kubelet does: a new file renamed over the old one."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text)
    os.replace(fresh, path)


def test_the_first_line_is_sent_and_every_line_accepted(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"{NEW}\n\n  {OLD}  \n")
    token = SharedToken(path)
    assert token.headers() == {"Authorization": f"Bearer {NEW}"}
    assert token.accepts(f"Bearer {NEW}")
    assert token.accepts(f"bearer {OLD}")
    for wrong in (None, "", NEW, f"Basic {NEW}", f"Bearer {NEW}x", f"Bearer {NEW[:-1]}", "Bearer "):
        assert not token.accepts(wrong), wrong


def test_a_rotated_file_is_read_again_and_a_bad_edit_keeps_the_last_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "token"
    path.write_text(OLD)
    clock = Clock()
    token = SharedToken(path, clock)
    write(path, f"{OLD}\n{NEW}\n")
    assert not token.accepts(f"Bearer {NEW}")  # not looked at again yet
    clock.now += RECHECK_SECONDS
    assert token.accepts(f"Bearer {NEW}")
    assert token.headers()["Authorization"] == f"Bearer {OLD}"
    write(path, f"{NEW}\n")
    clock.now += RECHECK_SECONDS
    assert token.headers()["Authorization"] == f"Bearer {NEW}"
    assert not token.accepts(f"Bearer {OLD}")
    write(path, "")  # a botched edit
    clock.now += RECHECK_SECONDS
    assert token.accepts(f"Bearer {NEW}")
    assert "shared token file kept as it was" in caplog.text
    path.unlink()  # mid-swap
    clock.now += RECHECK_SECONDS
    assert token.accepts(f"Bearer {NEW}")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "is empty"),
        ("\n \n", "is empty"),
        (f"{NEW}\nshort\n", "line 2 of the shared token file"),
        (f"{NEW[:8]} {NEW[8:]}\n", "line 1 of the shared token file"),
        ("tab\tinside-0123456789abcdef", "line 1"),
    ],
)
def test_an_unusable_file_says_which_and_why(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "token"
    path.write_text(text)
    with pytest.raises(TokenFileError, match=says):
        SharedToken(path)


def test_the_environment_names_the_file_or_nothing_is_checked(tmp_path: Path) -> None:
    assert SharedToken.from_env({}) is None
    assert SharedToken.from_env({ENV_VAR: " "}) is None
    path = tmp_path / "token"
    path.write_text(NEW)
    token = SharedToken.from_env({ENV_VAR: str(path)})
    assert token is not None
    assert token.accepts(f"Bearer {NEW}")
    with pytest.raises(TokenFileError, match=f"cannot read the shared token file {tmp_path}/none"):
        SharedToken.from_env({ENV_VAR: str(tmp_path / "none")})
