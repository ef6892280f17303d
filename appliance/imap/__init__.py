"""The IMAP server: IMAP4rev1 (RFC 3501) with the extensions today's clients use.

`IMAPServer` (server.py) opens the listeners: "imap" (port 143, STARTTLS) or "imaps" (port 993,
implicit TLS, RFC 8314). Each connection runs a `Session` (session.py: the command loop and the
state machine) over the shared transport (`appliance.connection`) (bounded reads, idle timeout, STARTTLS that
drops pipelined bytes). Commands are read by syntax.py, dispatched through commands.py to
session.py, folders.py, selected.py and idle.py; FETCH items are in fetch.py, responses in
responses.py. Folders live in mailboxes.py (an account's tree), index.py (one folder's UIDs and
flags, synced with the Maildir++ store) and view.py (a session's selected folder); message
parsing (ENVELOPE, BODYSTRUCTURE, sections) in message.py, SEARCH in search.py.

Extensions: LITERAL+ (RFC 7888), SASL-IR (RFC 4959), ID (RFC 2971), ENABLE (RFC 5161), IDLE
(RFC 2177), NAMESPACE (RFC 2342), UNSELECT (RFC 3691), UIDPLUS (RFC 4315), MOVE (RFC 6851),
CHILDREN (RFC 3348), SPECIAL-USE (RFC 6154).
"""
