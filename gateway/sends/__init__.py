"""PEC sends: the record of every submission, its state and its receipts."""
