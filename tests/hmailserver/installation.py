"""An hMailServer installation for the import tests: its table rows and its data directory.

The rows use hMailServer's table and column names (tests/hmailserver/schema.sql); the same
rows go into MariaDB and into the JSON export, so both import paths read the same installation.
Passwords are stored as hMailServer stores them: accountpwencryption 3 is a 6-hex-digit salt
followed by hex SHA-256(salt + password), 2 is hex MD5(password), 1 Blowfish (here only an
opaque hex string: the import never decrypts it), 0 plain text.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = (Path(__file__).parent / "schema.sql").read_text()
SCHEMA_POSTGRESQL = (Path(__file__).parent / "schema-postgresql.sql").read_text()
SMTP, POP3, IMAP = 1, 3, 5
SEEN, DELETED, FLAGGED, ANSWERED, DRAFT = 1, 2, 4, 8, 16
PASSWORDS = {
    "alice@example.test": "Alice-0ld-Passw0rd",
    "bob@example.test": "B0b-md5-secret",
    "erin@example.test": "Erin-Disabled-1",
}
AD_USER = "hmgt"
AD_PASSWORD = "Hmgt!Passw0rd1"


def salted_sha256(password: str, salt: str) -> str:
    return salt + hashlib.sha256((salt + password).encode()).hexdigest()


def md5_hex(password: str) -> str:
    return hashlib.md5(password.encode(), usedforsecurity=False).hexdigest()


def when(day: int, hour: int = 9) -> datetime.datetime:
    return datetime.datetime(2024, 3, day, hour, 15, 0)


@dataclass
class Installation:
    data_dir: Path
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    next_message: int = 1

    def rows(self, table: str) -> list[dict[str, Any]]:
        return self.tables.setdefault(table, [])

    def add_message(
        self, account_id: int, address: str, folder_id: int, uid: int, flags: int, day: int, body: str
    ) -> dict[str, Any]:
        """A message in the data directory (`<domain>/<local>/<2 chars>/{GUID}.eml`, CRLF) and its row."""
        local, _, domain = address.partition("@")
        name = "{" + str(uuid.UUID(int=self.next_message * 7919 + account_id)).upper() + "}.eml"
        # hMailServer's directories keep the case the account was created with (Windows ignores it).
        directory = self.data_dir / domain / (local.capitalize() if local == "bob" else local) / name[1:3]
        directory.mkdir(parents=True, exist_ok=True)
        text = (
            f"From: sender{uid}@remote.test\r\nTo: {address}\r\nSubject: message {uid} of folder {folder_id}\r\n"
            f"Date: Fri, {day:02d} Mar 2024 09:15:00 +0000\r\nMessage-ID: <m{self.next_message}@remote.test>\r\n"
            f"\r\n{body}\r\n"
        ).encode()
        (directory / name).write_bytes(text)
        row = {
            "messageid": self.next_message,
            "messageaccountid": account_id,
            "messagefolderid": folder_id,
            "messagefilename": name,
            "messagetype": 2,
            "messagefrom": f"sender{uid}@remote.test",
            "messagesize": len(text),
            "messageflags": flags,
            "messagecreatetime": when(day),
            "messageuid": uid,
        }
        self.next_message += 1
        self.rows("hm_messages").append(row)
        return row

    def export_json(self, path: Path) -> None:
        """The tables as the Windows-side export script writes them."""

        def plain(value: Any) -> Any:
            return value.isoformat() if isinstance(value, datetime.datetime) else value

        tables = {
            name: [{k: plain(v) for k, v in row.items()} for row in rows]
            for name, rows in self.tables.items()
        }
        path.write_text(
            json.dumps({"format": "hmailserver-tables", "version": 1, "tables": tables}, indent=1)
        )


def build(data_dir: Path, ports: dict[str, int]) -> Installation:
    """Two domains (one with a domain alias), local accounts with each password encoding, AD
    accounts in two AD domains, a disabled account, an alias, a distribution list, forwarding,
    vacation, and a folder tree with messages and flags; `ports` {"imaps": n, "smtp": n}."""
    inst = Installation(data_dir)
    loopback = int(ipaddress.IPv4Address("127.0.0.1"))
    inst.rows("hm_settings").extend(
        [
            {"settingname": "hostname", "settingstring": "mail.example.test", "settinginteger": 0},
            {"settingname": "usegreylisting", "settingstring": "", "settinginteger": 1},
            {"settingname": "maxmessagesize", "settingstring": "", "settinginteger": 40960},  # KB
        ]
    )
    inst.rows("hm_tcpipports").extend(
        [
            {
                "portprotocol": SMTP,
                "portnumber": ports["smtp"],
                "portaddress1": loopback,
                "portconnectionsecurity": 0,
            },
            {
                "portprotocol": IMAP,
                "portnumber": ports["imaps"],
                "portaddress1": loopback,
                "portconnectionsecurity": 1,
            },
        ]
    )
    inst.rows("hm_domains").extend(
        [
            {
                "domainid": 1,
                "domainname": "example.test",
                "domainactive": 1,
                "domainmaxmessagesize": 20480,
                "domainmaxsize": 5000,
                "domaindkimselector": "hm2024",
                "domaindkimprivatekeyfile": "C:\\hMailServer\\dkim\\example.pem",
            },
            {"domainid": 2, "domainname": "second.test", "domainactive": 1},
        ]
    )
    inst.rows("hm_domain_aliases").append({"dadomainid": 1, "daalias": "example.org"})

    def account(account_id: int, address: str, domain_id: int, **columns: Any) -> None:
        inst.rows("hm_accounts").append(
            {"accountid": account_id, "accountaddress": address, "accountdomainid": domain_id, **columns}
        )

    account(1, "alice@example.test", 1, accountpwencryption=3, accountmaxsize=100,
            accountpassword=salted_sha256(PASSWORDS["alice@example.test"], "a1b2c3"),
            accountpersonfirstname="Alice", accountpersonlastname="Liddell", accountadminlevel=2)  # fmt: skip
    account(2, "bob@example.test", 1, accountpwencryption=2, accountpassword=md5_hex(PASSWORDS["bob@example.test"]),
            accountforwardenabled=1, accountforwardaddress="carol@second.test", accountforwardkeeporiginal=1,
            accountvacationmessageon=1, accountvacationsubject="Away until Monday",
            accountvacationmessage="I am away.")  # fmt: skip
    account(3, "carol@second.test", 2, accountpwencryption=0, accountpassword="plain-text-pw")
    account(4, "dave@second.test", 2, accountpwencryption=1, accountpassword="9f3c2a7be01d44c8")
    account(5, "erin@example.test", 1, accountactive=0, accountpwencryption=3,
            accountpassword=salted_sha256(PASSWORDS["erin@example.test"], "0f0f0f"))  # fmt: skip
    account(
        6, "gt@example.test", 1, accountisad=1, accountaddomain="cloudtech.local", accountadusername=AD_USER
    )
    account(7, "frank@second.test", 2, accountisad=1, accountaddomain="OTHERAD", accountadusername="frank")
    inst.rows("hm_aliases").append(
        {"aliasdomainid": 1, "aliasname": "info@example.test", "aliasvalue": "alice@example.test"}
    )
    # An alias to an account deleted long ago: the manifest's checks refuse it, so it is left out.
    inst.rows("hm_aliases").append(
        {"aliasdomainid": 1, "aliasname": "old@example.test", "aliasvalue": "gone@example.test"}
    )
    inst.rows("hm_distributionlists").append(
        {
            "distributionlistid": 1,
            "distributionlistdomainid": 1,
            "distributionlistaddress": "team@example.test",
        }
    )
    inst.rows("hm_distributionlistsrecipients").extend(
        [
            {"distributionlistrecipientlistid": 1, "distributionlistrecipientaddress": "alice@example.test"},
            {"distributionlistrecipientlistid": 1, "distributionlistrecipientaddress": "bob@example.test"},
        ]
    )
    inst.rows("hm_rules").append({"ruleaccountid": 1, "rulename": "Move newsletters"})
    inst.rows("hm_securityranges").append({"rangename": "Internet", "rangelowerip1": 0, "rangeupperip1": 1})

    def folder(folder_id: int, account_id: int, name: str, parent: int = -1, subscribed: int = 1) -> None:
        inst.rows("hm_imapfolders").append(
            {
                "folderid": folder_id,
                "folderaccountid": account_id,
                "folderparentid": parent,
                "foldername": name,
                "folderissubscribed": subscribed,
                "foldercreationtime": when(1),
            }
        )

    folder(1, 1, "INBOX")
    folder(2, 1, "Sent Items")
    folder(3, 1, "Projects")
    folder(4, 1, "2024", parent=3)
    folder(5, 1, "Über", subscribed=0)
    folder(6, 2, "INBOX")
    folder(7, 6, "INBOX")
    alice = "alice@example.test"
    # hMailServer's UID order is not the message id order: UIDs decide.
    inst.add_message(1, alice, 1, 7, SEEN, 3, "third by uid")
    inst.add_message(1, alice, 1, 2, SEEN | ANSWERED, 1, "first by uid")
    inst.add_message(1, alice, 1, 5, FLAGGED, 2, "second by uid")
    inst.add_message(1, alice, 2, 1, SEEN, 4, "sent")
    inst.add_message(1, alice, 4, 3, DRAFT, 5, "a draft in Projects/2024")
    inst.add_message(1, alice, 4, 4, SEEN | DELETED, 6, "deleted, not expunged")
    inst.add_message(1, alice, 5, 1, 0, 7, "umlaut folder")
    inst.add_message(2, "bob@example.test", 6, 1, 0, 8, "for bob")
    inst.add_message(6, "gt@example.test", 7, 1, SEEN, 9, "for the AD user")
    queued = inst.add_message(1, alice, 0, 0, 0, 10, "still in the queue")
    queued["messageaccountid"] = 0
    return inst
