"""Shared fixtures: throwaway PKI, a real slapd and a real Dovecot for the whole session, a
fresh PEC mailbox (seeded with :func:`gateway.demo.pec_samples.sample_mailbox`) per test, and a
simulated PEC provider submission server that delivers its receipts into that mailbox."""

from __future__ import annotations

import secrets

import pytest

from gateway.demo.pec_samples import Gestore, make_gestore, sample_mailbox
from tests.fixtures.dovecot import DovecotServer
from tests.fixtures.pec_provider import PecProvider
from tests.fixtures.pki import Pki, make_pki
from tests.fixtures.slapd import SlapdServer


class PecMailbox(tuple):
    """``(address, password)`` of a seeded mailbox; ``.folders`` holds the exact seeded bytes."""

    folders: dict[str, list[bytes]]

    def __new__(cls, address: str, password: str, folders: dict[str, list[bytes]]):
        self = super().__new__(cls, (address, password))
        self.folders = folders
        return self

    @property
    def address(self) -> str:
        return self[0]

    @property
    def password(self) -> str:
        return self[1]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def slapd():
    with SlapdServer() as server:
        yield server


@pytest.fixture(scope="session")
def dovecot(pki: Pki):
    with DovecotServer(pki) as server:
        yield server


@pytest.fixture(scope="session")
def pec_gestore() -> Gestore:
    """One throwaway provider signing key for the session (RSA key generation is the slow part)."""
    return make_gestore()


@pytest.fixture
def pec_mailbox(dovecot: DovecotServer, pec_gestore: Gestore) -> PecMailbox:
    """A new, uniquely named mailbox on the session Dovecot, seeded with ``sample_mailbox()``."""
    address = f"pec-{secrets.token_hex(4)}@pec.example.it"
    password = secrets.token_urlsafe(12)
    folders = sample_mailbox(address, gestore=pec_gestore)
    dovecot.add_mailbox(address, password, folders)
    return PecMailbox(address, password, folders)


@pytest.fixture
def pec_provider(dovecot: DovecotServer, pki: Pki, pec_gestore: Gestore,
                 pec_mailbox: PecMailbox):
    """A PEC provider's submission server (implicit TLS, ``localhost`` certificate) on a free
    port, knowing ``pec_mailbox`` and delivering that mailbox's receipts into its INBOX.
    Other settings: construct :class:`tests.fixtures.pec_provider.PecProvider` directly."""
    with PecProvider(dovecot, pki, pec_gestore) as provider:
        provider.add_mailbox(pec_mailbox.address, pec_mailbox.password)
        yield provider
