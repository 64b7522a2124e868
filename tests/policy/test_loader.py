"""Loader: every kind of mistake is refused as `<file>: <key>: <problem>`; never a half policy."""

import copy
from pathlib import Path

import pytest

from policy import PolicyError, Rights, load_policy, parse_policy

BASE = {
    "offices": {"legale": {"groups": ["legale"], "members": ["carla"]}, "acquisti": {"groups": ["acquisti"]}},
    "mailboxes": {"protocollo": {
        "delimiter": "/", "default_rights": "", "send": ["legale"],
        "rules": [
            {"office": "legale", "folders": "*", "rights": "lr"},
            {"office": "legale", "folders": "Ufficio Legale/*", "rights": "lrswi"},
            {"office": "acquisti", "folders": "Acquisti/*", "rights": "lrswi"},
        ],
    }},
}
MB = "mailboxes.protocollo"
DELETE = object()


def _set(data, path, value):
    *parents, last = path
    for p in parents:
        data = data[p]
    if value is DELETE:
        del data[last]
    else:
        data[last] = value


ERRORS = [
    # path to change, new value (DELETE removes the key), message after "p.toml: "
    (('mailboxes', 'protocollo', 'rules', 2, 'rights'), 'lrz',
     "mailboxes.protocollo.rules[2].rights: unknown right 'z' (RFC 4314 letters: lrswipkxtea)"),
    (('mailboxes', 'protocollo', 'rules', 0, 'rights'), 'all',
     "mailboxes.protocollo.rules[0].rights: 'all' is not a shorthand: list the RFC 4314 letters you mean (lrswipkxtea)"),
    (('mailboxes', 'protocollo', 'rules', 1, 'office'), 'legal',
     "mailboxes.protocollo.rules[1].office: unknown office 'legal' (offices: acquisti, legale)"),
    (('mailboxes', 'protocollo', 'rules', 1, 'folders'), '',
     'mailboxes.protocollo.rules[1].folders: empty folder pattern (use "*" for every folder)'),
    (('mailboxes', 'protocollo', 'rules', 1, 'folders'), 'Ufficio Legale//x',
     "mailboxes.protocollo.rules[1].folders: 'Ufficio Legale//x' contains the delimiter '/' twice in a row (an empty level)"),
    (('mailboxes', 'protocollo', 'rules', 1, 'folders'), 'Ufficio Legale/',
     "mailboxes.protocollo.rules[1].folders: 'Ufficio Legale/' ends with the delimiter '/'; write 'Ufficio Legale/*' for its subfolders"),
    (('mailboxes', 'protocollo', 'rules', 1, 'folders'), '*',
     "mailboxes.protocollo.rules[1].folders: same office 'legale' and folders '*' as mailboxes.protocollo.rules[0]: merge the two rules"),
    (('mailboxes', 'protocollo', 'rules', 2), {'office': 'legale', 'folders': '*', 'rights': ''},
     "mailboxes.protocollo.rules[2].folders: same office 'legale' and folders '*' as mailboxes.protocollo.rules[0]: merge the two rules"),
    (('mailboxes', 'protocollo', 'rules', 1, 'folder'), 'x',
     "mailboxes.protocollo.rules[1].folder: unknown key (did you mean 'folders'?)"),
    (('mailboxes', 'protocollo', 'rules', 1, 'righs'), 'x',
     "mailboxes.protocollo.rules[1].righs: unknown key (did you mean 'rights'?)"),
    (('mailboxes', 'protocollo', 'rules', 1, 'rights'), DELETE,
     'mailboxes.protocollo.rules[1].rights: missing (required)'),
    (('mailboxes', 'protocollo', 'rules', 1, 'office'), DELETE,
     'mailboxes.protocollo.rules[1].office: missing (required)'),
    (('mailboxes', 'protocollo', 'rules', 1, 'rights'), 7,
     'mailboxes.protocollo.rules[1].rights: must be a string, not an integer'),
    (('mailboxes', 'protocollo', 'rules', 1, 'folders'), ['a', 'b'],
     'mailboxes.protocollo.rules[1].folders: must be a string, not an array'),
    (('mailboxes', 'protocollo', 'rules', 1), 'lr',
     'mailboxes.protocollo.rules[1]: must be a table, not a string'),
    (('mailboxes', 'protocollo', 'rules'), {'office': 'legale'},
     'mailboxes.protocollo.rules: must be an array of tables ([[mailboxes.protocollo.rules]]), not a table'),
    (('mailboxes', 'protocollo', 'default_rights'), 'lrx',
     "mailboxes.protocollo.default_rights: 'x' (delete mailbox) may never be a default: a PEC is a legal record; grant x, t or e to an office in an explicit rule"),
    (('mailboxes', 'protocollo', 'default_rights'), 'lrte',
     "mailboxes.protocollo.default_rights: 't' (delete messages), 'e' (expunge) may never be a default: a PEC is a legal record; grant x, t or e to an office in an explicit rule"),
    (('mailboxes', 'protocollo', 'default_rights'), 'lrq',
     "mailboxes.protocollo.default_rights: unknown right 'q' (RFC 4314 letters: lrswipkxtea)"),
    (('mailboxes', 'protocollo', 'delimiter'), '//',
     "mailboxes.protocollo.delimiter: must be exactly one character, not '//'"),
    (('mailboxes', 'protocollo', 'delimiter'), '*',
     "mailboxes.protocollo.delimiter: '*' cannot be a hierarchy delimiter"),
    (('mailboxes', 'protocollo', 'send'), ['legale', 'vendite'],
     "mailboxes.protocollo.send[1]: unknown office 'vendite' (offices: acquisti, legale)"),
    (('mailboxes', 'protocollo', 'send'), ['legale', 'legale'],
     "mailboxes.protocollo.send[1]: 'legale' is already listed at mailboxes.protocollo.send[0]"),
    (('mailboxes', 'protocollo', 'send'), 'legale',
     'mailboxes.protocollo.send: must be an array of strings, not a string'),
    (('mailboxes', 'protocollo', 'sender'), ['legale'],
     "mailboxes.protocollo.sender: unknown key (did you mean 'send'?)"),
    (('mailboxes', 'pro#tocollo'), {},
     'mailboxes."pro#tocollo": a mailbox name must be non-empty and must not contain \'#\''),
    (('mailboxes',), {},
     'mailboxes: at least one mailbox is required'),
    (('mailboxes',), DELETE,
     'mailboxes: missing (required table)'),
    (('offices', 'legale', 'group'), ['x'],
     "offices.legale.group: unknown key (did you mean 'groups'?)"),
    (('offices', 'legale', 'groups'), ['legale', 3],
     'offices.legale.groups[1]: must be a string, not an integer'),
    (('offices', 'legale', 'groups'), ['legale', 'Legale'],
     "offices.legale.groups[1]: 'Legale' is already listed at offices.legale.groups[0]"),
    (('offices', 'legale', 'members'), ['carla', ''],
     'offices.legale.members[1]: must not be empty'),
    (('offices', 'legale'), ['carla'],
     'offices.legale: must be a table, not an array'),
    (('office',), {},
     "office: unknown key (did you mean 'offices'?)"),
    (('offices', 'legale', 'send_to_allow'), ['tribunale'],
     "offices.legale.send_to_allow: 'tribunale' is not an address pattern (like '*@pec.tribunale.*')"),
    (('offices', 'legale', 'send_to_deny'), 'x@y',
     'offices.legale.send_to_deny: must be an array of strings, not a string'),
]

@pytest.mark.parametrize("path,value,message", ERRORS, ids=[m.split(":")[0] for _, _, m in ERRORS])
def test_errors_name_file_and_key(path, value, message):
    data = copy.deepcopy(BASE)
    _set(data, path, value)
    before = copy.deepcopy(data)
    with pytest.raises(PolicyError) as exc:
        parse_policy(data, "p.toml")
    assert str(exc.value) == f"p.toml: {message}"
    assert exc.value.source == "p.toml" and exc.value.key == message.split(": ")[0]
    assert isinstance(exc.value, ValueError)
    assert data == before  # the input is never modified


def test_inbox_duplicates_fold_case():
    data = copy.deepcopy(BASE)
    data["mailboxes"]["protocollo"]["rules"] += [
        {"office": "acquisti", "folders": "INBOX", "rights": "lr"},
        {"office": "acquisti", "folders": "inbox", "rights": ""},
    ]
    with pytest.raises(PolicyError, match=r"rules\[4\]\.folders: same office 'acquisti' and folders 'inbox' "
                                          r"as mailboxes\.protocollo\.rules\[3\]"):
        parse_policy(data, "p.toml")


def test_same_pattern_for_different_offices_is_fine():
    data = copy.deepcopy(BASE)
    data["mailboxes"]["protocollo"]["rules"].append({"office": "acquisti", "folders": "*", "rights": "l"})
    assert len(parse_policy(data, "p.toml").mailboxes["protocollo"].rules) == 4


def test_parsed_values():
    p = parse_policy(BASE, "p.toml")
    mb = p.mailboxes["protocollo"]
    assert p.source == "p.toml" and mb.delimiter == "/" and mb.default_rights == Rights()
    assert [r.source_key for r in mb.rules] == [f"{MB}.rules[{i}]" for i in range(3)]
    assert mb.rules[1].rights.render() == "lrswi" and mb.send_offices == ("legale",)
    assert p.offices["legale"].groups == frozenset({"legale"})
    with pytest.raises(TypeError):
        p.mailboxes["x"] = mb  # read-only mappings: a loaded policy is never edited in place


def test_defaults_when_keys_are_omitted():
    p = parse_policy({"offices": {}, "mailboxes": {"m": {}}}, "p.toml")
    mb = p.mailboxes["m"]
    assert (mb.delimiter, mb.default_rights, mb.rules, mb.send_offices) == ("/", Rights(), (), ())


def test_quoted_names_in_keys():
    data = {"offices": {"ufficio legale": {"members": ["a"]}},
            "mailboxes": {"pec.legale": {"rules": [{"office": "ufficio legale", "folders": "*", "rights": "lz"}]}}}
    with pytest.raises(PolicyError) as exc:
        parse_policy(data, "p.toml")
    assert str(exc.value).startswith('p.toml: mailboxes."pec.legale".rules[0].rights: unknown right \'z\'')


@pytest.mark.parametrize("content,message", [
    (b"[offices\n", "not valid TOML: "),
    (b"\xff\xfe", "not UTF-8 (byte 0)"),
    (b"[offices]\n[mailboxes.m]\ndefault_rights = 'e'\n",
     "mailboxes.m.default_rights: 'e' (expunge) may never be a default"),
])
def test_load_policy_errors(tmp_path: Path, content, message):
    f = tmp_path / "policy.toml"
    f.write_bytes(content)
    with pytest.raises(PolicyError) as exc:
        load_policy(f)
    assert str(exc.value).startswith(f"{f}: {message}")


def test_missing_file(tmp_path: Path):
    with pytest.raises(PolicyError) as exc:
        load_policy(tmp_path / "nope.toml")
    assert str(exc.value) == f"{tmp_path / 'nope.toml'}: file not found"


def test_a_failed_reload_leaves_the_last_good_policy(tmp_path: Path):
    f = tmp_path / "policy.toml"
    f.write_text("[offices.a]\nmembers=['x']\n[mailboxes.m]\n[[mailboxes.m.rules]]\noffice='a'\nfolders='*'\nrights='lr'\n")
    current = load_policy(f)
    f.write_text(f.read_text().replace("rights='lr'", "rights='lr'\n[[mailboxes.m.rules]]\noffice='b'\nfolders='*'\nrights='l'"))
    try:
        current = load_policy(f)
    except PolicyError as exc:
        assert "mailboxes.m.rules[1].office: unknown office 'b'" in str(exc)
    assert len(current.mailboxes["m"].rules) == 1


def test_office_recipient_patterns():
    data = copy.deepcopy(BASE)
    data["offices"]["legale"].update(send_to_allow=["*@PEC.Tribunale.*"], send_to_deny=["avversario@pec.example.it"])
    office = parse_policy(data, "p.toml").offices["legale"]
    assert office.send_to_allow == ("*@pec.tribunale.*",) and office.send_to_deny == ("avversario@pec.example.it",)
    assert parse_policy(BASE, "p.toml").offices["acquisti"].send_to_allow == ()
