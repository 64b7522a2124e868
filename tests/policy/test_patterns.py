"""IMAP LIST wildcards (RFC 3501 §6.3.8), INBOX folding, specificity ordering, overlap."""

import pytest

from policy.patterns import Specificity, matches, overlap, pattern_problem, specificity

MATCHES = [
    # pattern, folder, delimiter, expected
    ("*", "INBOX", "/", True),
    ("*", "Ufficio Legale/Pratiche/2024", "/", True),
    ("%", "Ricevute", "/", True),
    ("%", "Ufficio Legale/Pratiche", "/", False),           # % does not cross the delimiter
    ("%/%", "Ufficio Legale/Pratiche", "/", True),
    ("%/%", "Ufficio Legale/Pratiche/2024", "/", False),
    ("Ufficio Legale/*", "Ufficio Legale/Pratiche/2024", "/", True),
    ("Ufficio Legale/*", "Ufficio Legale", "/", False),     # the parent itself is not matched
    ("Ufficio Legale/*", "Ufficio Legale/", "/", True),     # * matches zero characters
    ("Ufficio Legale*", "Ufficio Legale 2", "/", True),
    ("Ufficio Legale/%", "Ufficio Legale/Pratiche/2024", "/", False),
    ("Acq%", "Acquisti", "/", True),
    ("Acq%", "acquisti", "/", False),                       # other names are case-sensitive
    ("*/Fatture", "Acquisti/2024/Fatture", "/", True),
    ("%/Fatture", "Acquisti/2024/Fatture", "/", False),
    ("Ricevute", "Ricevute", "/", True),
    ("Ricevute", "Ricevute2", "/", False),
    ("Ricevute", "Ricevut", "/", False),
    # INBOX is case-insensitive, also as the first level (RFC 3501 §5.1)
    ("INBOX", "inbox", "/", True),
    ("inbox", "INBOX", "/", True),
    ("Inbox/Archivio", "INBOX/Archivio", "/", True),
    ("INBOX/*", "inbox/Archivio/2024", "/", True),
    ("INBOX/Archivio", "INBOX/archivio", "/", False),       # only the INBOX level folds
    ("INBOX", "\u0131nbox", "/", False),                    # dotless ı is not INBOX
    ("INBOX", "INBOXES", "/", False),
    # Unicode human names, compared after NFC normalisation
    ("Contabilità", "Contabilità", "/", True),
    ("Contabilità", "Contabilita\u0300", "/", True),        # decomposed à
    ("Contabilit%", "Contabilità", "/", True),
    ("Contabilità/*", "Contabilità/Fatture Ελληνικά", "/", True),
    ("Contabilita", "Contabilità", "/", False),
    # delimiter "." (Courier-style providers)
    ("INBOX.%", "INBOX.Ricevute", ".", True),
    ("INBOX.%", "INBOX.Ricevute.2024", ".", False),
    ("INBOX.*", "inbox.Ricevute.2024", ".", True),
    ("%", "Ufficio Legale/Pratiche", ".", True),            # "/" is an ordinary character here
    ("Acquisti.%", "Acquisti.Ordini", ".", True),
    ("Acquisti/%", "Acquisti.Ordini", ".", False),
    # regex metacharacters are literal
    ("Pratiche (2024) [a]+", "Pratiche (2024) [a]+", "/", True),
    ("a.b", "axb", "/", False),
    ("**", "a/b", "/", True),
]


@pytest.mark.parametrize("pattern,folder,delimiter,expected", MATCHES)
def test_matches(pattern, folder, delimiter, expected):
    assert matches(pattern, folder, delimiter) is expected


# Each list is in strictly decreasing specificity.
ORDERINGS = [
    ["Ufficio Legale/Pratiche", "Ufficio Legale/Prat%", "Ufficio Legale/%", "Ufficio Legale/*",
     "Uff*", "%/%", "*"],
    ["INBOX", "INBO%", "INBO*", "%"],
    ["ab", "ab*", "a*"],            # exact beats a wildcard with as many literals
    ["%", "*"],
    ["a%b", "a*b"],
]


@pytest.mark.parametrize("ordered", ORDERINGS, ids=lambda o: " > ".join(o))
def test_specificity_ordering(ordered):
    keys = [specificity(p) for p in ordered]
    assert all(a > b for a, b in zip(keys, keys[1:])), [str(k) for k in keys]


@pytest.mark.parametrize("a,b", [("A*", "*Z"), ("a%", "%b"), ("Acquisti/%", "Contabil%/%")])
def test_equal_specificity(a, b):
    assert specificity(a) == specificity(b)


@pytest.mark.parametrize("pattern,expected", [
    ("INBOX", Specificity(True, 5, True)),
    ("Ufficio Legale/*", Specificity(False, 15, False)),
    ("%/%", Specificity(False, 1, True)),
])
def test_specificity_values(pattern, expected):
    assert specificity(pattern) == expected


@pytest.mark.parametrize("a,b,delimiter,witness", [
    ("A*", "*Z", "/", "AZ"),
    ("%", "*", "/", "x"),
    ("%/x", "a/%", "/", "a/x"),
    ("Acquisti/%", "Ufficio/*", "/", None),
    ("a%", "%/b", "/", None),              # % cannot cross the delimiter
    ("a%", "%.b", "/", "a.b"),
    ("a%", "%.b", ".", None),
    ("inbox/%", "INBOX/*", "/", "INBOX/x"),
])
def test_overlap(a, b, delimiter, witness):
    found = overlap(a, b, delimiter)
    assert found == witness
    if found is not None:
        assert matches(a, found, delimiter) and matches(b, found, delimiter)


@pytest.mark.parametrize("pattern,delimiter,problem", [
    ("", "/", "empty folder pattern (use \"*\" for every folder)"),
    ("Acquisti//Ordini", "/", "'Acquisti//Ordini' contains the delimiter '/' twice in a row (an empty level)"),
    ("/Acquisti", "/", "'/Acquisti' starts with the delimiter '/' (folder names are relative)"),
    ("Acquisti/", "/", "'Acquisti/' ends with the delimiter '/'; write 'Acquisti/*' for its subfolders"),
    ("INBOX..x", ".", "'INBOX..x' contains the delimiter '.' twice in a row (an empty level)"),
    ("a\tb", "/", "'a\\tb' contains the control character '\\t'"),
    ("Acquisti//Ordini", ".", None),
    ("Ufficio Legale/*", "/", None),
])
def test_pattern_problem(pattern, delimiter, problem):
    assert pattern_problem(pattern, delimiter) == problem
