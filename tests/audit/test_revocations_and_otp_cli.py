"""Revocations kept beside the audit trail (SQLite and the real PostgreSQL, shared by instances)."""

from __future__ import annotations

from gateway.revocations import Revocations, open_revocation_store
from tests.audit.conftest import Trail


def test_revocations_are_shared_by_instances_and_survive_reopening(backend, tmp_path):
    backend.open()  # the gateway opens the audit store first: it creates the schema
    trail = Trail(tmp_path, backend.audit_table())
    first = Revocations(open_revocation_store(trail.config, trail.vault))
    second = Revocations(open_revocation_store(trail.config, trail.vault))
    try:
        made = first.revoke("Alice", "root (as it-mario)", "left the company")
        assert made is not None and made.person == "Alice" and first.is_revoked("alice")
        assert first.revoke("ALICE", "root", None) is None  # one person, whatever the case
        assert not second.is_revoked("alice")  # until it re-reads the table...
        assert second.refresh() == {"alice"}  # ...which says who is new, so their sessions end
        assert second.is_revoked("alice") and second.get("alice").revoked_by == "root (as it-mario)"
        assert second.refresh() == set()
        lifted = second.lift("alice")
        assert lifted is not None and lifted.reason == "left the company"
        assert second.lift("alice") is None
        first.refresh()
        assert not first.is_revoked("alice")
        first.revoke("bruno", "root")
    finally:
        first.store.close()
        second.store.close()
    reopened = Revocations(open_revocation_store(trail.config, trail.vault))
    try:
        assert [r.person for r in reopened.all()] == ["bruno"]
    finally:
        reopened.store.close()

