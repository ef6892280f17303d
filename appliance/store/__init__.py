"""The mail store: one Maildir++ per account under `<data_dir>/mail/<domain>/<local>/`.

`maildir.py` holds the reading API (POP3, IMAP) and durable delivery (SMTP).
"""

from appliance.store.maildir import DeliveryError, Maildir, MailStore, MessageFile, QuotaExceeded

__all__ = ["DeliveryError", "MailStore", "Maildir", "MessageFile", "QuotaExceeded"]
