"""The worker-thread piece fetcher dials origins under the same link-local rule as the rest.

Nothing here may leave the machine even if the guard regresses: ``connect`` is
replaced by one that fails the test instead of dialling.
"""

from __future__ import annotations

import socket

import pytest

from damselfly.peer.transfer.rangefetch import connect_guarded


class Dialled(Exception):
    pass


@pytest.fixture
def no_dialling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_sock: socket.socket, address: object) -> None:
        raise Dialled(f"tried to connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.usefixtures("no_dialling")
@pytest.mark.parametrize("host", ["169.254.169.254", "fe80::1", "::ffff:169.254.169.254"])
def test_link_local_origins_are_refused_before_dialling(host: str) -> None:
    with pytest.raises(OSError, match="link-local"):
        connect_guarded(host, 80, allow_link_local=False, connect_timeout=1)


@pytest.mark.usefixtures("no_dialling")
def test_link_local_is_dialled_only_when_the_config_allows_it() -> None:
    with pytest.raises(Dialled):
        connect_guarded("169.254.169.254", 80, allow_link_local=True, connect_timeout=1)
