"""Importing another mail server's installation: `appliance import hmailserver`.

`source.py` reads hMailServer's tables (from its MySQL/MariaDB database, or from the JSON the
Windows-side export script writes) into plain rows; `plan.py` turns them into a manifest and a
report; `mail.py` copies the messages into the Maildir++ store. Nothing here writes to the
source: the database is only read, its data directory only opened for reading.
"""
