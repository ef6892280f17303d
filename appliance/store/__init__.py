"""The mail store: one Maildir++ per account under `<data_dir>/mail/<domain>/<local>/`.

`maildir.py` reads one Maildir (POP3, IMAP); `delivery.py` is the one way a message file is
written into a Maildir (SMTP delivery, IMAP APPEND and COPY); `folders.py` makes, renames and
deletes an account's folders; `mailstore.py` holds the quota and delivery's entry point;
`durable.py` the fsync-and-rename primitives that the queue spool and the IMAP index use too.
"""

from appliance.store.delivery import DeliveryError
from appliance.store.maildir import Maildir, MessageFile
from appliance.store.mailstore import MailStore, QuotaExceeded

__all__ = ["DeliveryError", "MailStore", "Maildir", "MessageFile", "QuotaExceeded"]
