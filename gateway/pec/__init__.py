"""PEC (Posta Elettronica Certificata) documents: pure parsers for what providers put in a mailbox.

Nothing here does I/O: callers hand in the bytes they fetched and get plain values back
(``PEC.md`` sections 1-4 describe the formats).
"""
