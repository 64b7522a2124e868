"""The pure layers stay pure: importing them pulls in no I/O or service library.

DESIGN.md: "A test proves the pure layers import no asyncio, socket, ssl, ldap3 or
prometheus_client."  Each module is imported in a fresh interpreter and the modules loaded are
checked, so a transitive import is caught too.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"asyncio", "socket", "ssl", "ldap3", "prometheus_client", "twisted", "selectors"}
PURE_MODULES = [
    "gateway.imap_proxy.framing",
    "gateway.imap_proxy.syntax",
    "gateway.imap_proxy.commands",
    "gateway.imap_proxy.responses",
    "gateway.imap_proxy.capabilities",
    "gateway.imap_proxy.mailbox",
    "gateway.imap_proxy.relay",
    "gateway.imap_proxy.actions",
    "gateway.imap_proxy.session",
    "gateway.imap_proxy.enforce",
    "gateway.imap_proxy.audit_trail",
    "gateway.imap_proxy.identity",
    "gateway.imap_proxy.identity_lookups",
    "gateway.imap_proxy.expunge_plan",
    "gateway.imap_proxy.sequence_set",
    "gateway.imap_proxy.bodystructure",
    "gateway.imap_proxy.receipt_identity",
    "gateway.pec.daticert",
    "gateway.smtp_proxy.rules",
    "gateway.smtp_proxy.message",
    "gateway.sends.receipts",
    "gateway.login",
    "gateway.access",
    "gateway.audit.events",
    "gateway.tally",
    "gateway.proxy_protocol",
    "policy",
]


#: Modules that parse messages with the standard library's email package, whose ``email.utils``
#: imports socket (for make_msgid's host name, never called here): that much is allowed, and
#: their own source must not import an I/O module.
EMAIL_PARSING = {"gateway.smtp_proxy.rules", "gateway.smtp_proxy.message"}
EMAIL_UTILS_IMPORTS = ["selectors", "socket"]


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_no_io(module):
    code = (f"import sys, json; import {module}; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    if module in EMAIL_PARSING:
        source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
        assert not any(f"import {m}" in source for m in FORBIDDEN), f"{module} imports an I/O module"
        loaded = [m for m in loaded if m not in EMAIL_UTILS_IMPORTS]
    assert loaded == [], f"{module} pulls in I/O modules"


def test_policy_imports_nothing_from_gateway():
    code = "import sys, policy; print([m for m in sys.modules if m == 'gateway' or m.startswith('gateway.')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
