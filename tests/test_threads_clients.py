"""Threading scenarios with raw mail written the way real clients write it.

Each scenario runs through `parse -> lookup -> resolve -> match` against a small in-memory
desk that keeps the store's semantics (see `ThreadContext`): a case owns the Message-IDs
its mail carries or mentions and the Outlook conversation keys it has seen; our own
acknowledgements carry a signed Message-ID, the case tag and a per-customer reply address.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from mailcare.mail import Address, Mail, parse
from mailcare.threads import (
    CaseView,
    Lookup,
    Match,
    ThreadContext,
    conversation_key,
    forwarded_sender,
    lookup,
    match,
)
from mailcare.tokens import message_id, reply_address

SUPPORT = "assistenza@examplenet.it"
SECRET = b"client-scenario-secret"
NOW = 1_717_400_000.0
AGENTS = frozenset({"luca.bianchi@examplenet.it"})
CUSTOMER = "mario.rossi@cliente.it"

# Outlook Thread-Index values: one conversation (root, then a reply adding 5 bytes).
OUTLOOK_ROOT = "Adq1jD6RXy6KQcPZS36aDBHS4/Sltg=="
OUTLOOK_REPLY = "Adq1jD6RXy6KQcPZS36aDBHS4/SltgAAobLD"


@dataclass
class Desk:
    """A support desk reduced to what threading needs: cases, ids, keys, participants."""

    cases: dict[int, CaseView] = field(default_factory=dict)
    owners: dict[str, int] = field(default_factory=dict)
    thread_keys: dict[str, int] = field(default_factory=dict)

    def resolve(self, wanted: Lookup) -> ThreadContext:
        known = {m: self.owners[m] for m in wanted.message_ids if m in self.owners}
        thread_case = self.thread_keys.get(wanted.thread_index or "")
        subject = tuple(
            sorted(
                (
                    n
                    for n, v in self.cases.items()
                    if wanted.subject_key
                    and v.subject_key == wanted.subject_key
                    and wanted.sender in v.participants
                ),
                reverse=True,
            )
        )
        named = {*known.values(), *wanted.token_cases, *wanted.own_cases, *subject}
        named.update(n for n in (wanted.tag_case, thread_case) if n is not None)
        return ThreadContext(
            known_ids=known,
            cases={n: self.cases[n] for n in named if n in self.cases},
            thread_index_case=thread_case,
            subject_cases=subject,
        )

    def receive(self, raw: bytes) -> tuple[Mail, Match, int]:
        mail = parse(raw)
        wanted = lookup(mail, case_tag="EX", support_address=SUPPORT, secret=SECRET)
        result = match(
            mail,
            self.resolve(wanted),
            case_tag="EX",
            support_address=SUPPORT,
            secret=SECRET,
            reopen_days=14,
            now=NOW,
            agents=AGENTS,
        )
        number = result.case if result.case is not None else self._open(mail)
        people = {a.addr for a in mail.cc} | ({mail.sender.addr} if mail.sender else set())
        self._own(number, (mail.message_id, *mail.in_reply_to, *mail.references), people)
        if wanted.thread_index:
            self.thread_keys.setdefault(wanted.thread_index, number)
        return mail, result, number

    def acknowledge(self, number: int, mail: Mail) -> tuple[str, str, str]:
        """Our ack: (Message-ID, Reply-To, Subject) as compose would write them."""
        ack_id = message_id(SECRET, "examplenet.it", number, "ack", mail.message_id)
        self._own(number, (ack_id, mail.message_id), set())
        token = reply_address(SUPPORT, SECRET, number, self.cases[number].customer)
        return ack_id, token, f"[EX #{number}] {mail.subject}"

    def _open(self, mail: Mail) -> int:
        number = 1042 + len(self.cases)
        self.cases[number] = CaseView(
            number=number,
            state="new",
            customer=mail.sender.addr if mail.sender else "",
            owner=None,
            participants=frozenset(),
            subject_key=mail.subject_key,
            closed_at=None,
        )
        return number

    def _own(self, number: int, ids: tuple[str, ...], people: set[str]) -> None:
        for mid in ids:
            self.owners.setdefault(mid, number)
        view = self.cases[number]
        self.cases[number] = replace(view, participants=view.participants | people)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


# -- Outlook (Italian): R:, Thread-Index, Thread-Topic, no References ------------------------


def outlook_first() -> bytes:
    return crlf(
        "From: Rossi Mario <Mario.Rossi@cliente.it>\n"
        "To: Assistenza ExampleNet <assistenza@examplenet.it>\n"
        "Subject: =?Windows-1252?Q?Problema_con_la_fattura_di_maggio_=96_urgente?=\n"
        "Thread-Topic: =?Windows-1252?Q?Problema_con_la_fattura_di_maggio_=96_urgente?=\n"
        f"Thread-Index: {OUTLOOK_ROOT}\n"
        "Date: Mon, 3 Jun 2024 08:12:44 +0000\n"
        "Message-ID: <AM6PR07MB5432A1B2C3D4E5F6A7B8C9D0@AM6PR07MB5432.eurprd07.prod.outlook.com>\n"
        "Accept-Language: it-IT, en-US\n"
        "Content-Language: it-IT\n"
        "X-MS-Has-Attach:\n"
        "X-MS-TNEF-Correlator:\n"
        "MIME-Version: 1.0\n"
        'Content-Type: text/plain; charset="Windows-1252"\n'
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n"
        "Buongiorno,\n"
        "la fattura di maggio riporta un importo sbagliato.\n"
        "\n"
        "Cordiali saluti\n"
        "Mario Rossi\n"
    )


def outlook_reply_to_ack(ack_id: str, token: str, ack_subject: str) -> bytes:
    """Outlook answering our ack: it writes to Reply-To, keeps In-Reply-To, no References."""
    return crlf(
        "From: Rossi Mario <Mario.Rossi@cliente.it>\n"
        f"To: Assistenza ExampleNet <{token}>\n"
        f"Subject: R: {ack_subject}\n"
        f"Thread-Topic: {ack_subject}\n"
        "Thread-Index: AQHatY0xq0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5\n"
        "Date: Mon, 3 Jun 2024 09:01:10 +0000\n"
        "Message-ID: <AM6PR07MB5432FFEE00112233@AM6PR07MB5432.eurprd07.prod.outlook.com>\n"
        f"In-Reply-To: <{ack_id}>\n"
        "Content-Language: it-IT\n"
        "MIME-Version: 1.0\n"
        'Content-Type: text/plain; charset="iso-8859-1"\n'
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n"
        "Allego il numero cliente: 55123.\n"
        "\n"
        "________________________________\n"
        "Da: Assistenza ExampleNet <assistenza@examplenet.it>\n"
        "Inviato: luned=EC 3 giugno 2024 10:13\n"
        "A: Rossi Mario <Mario.Rossi@cliente.it>\n"
        f"Oggetto: {ack_subject}\n"
    )


def outlook_reply_to_own_sent_item() -> bytes:
    """From Sent Items: `R:` inside an encoded-word, same conversation, no ids at all."""
    return crlf(
        "From: Rossi Mario <Mario.Rossi@cliente.it>\n"
        "To: Assistenza ExampleNet <assistenza@examplenet.it>\n"
        "Subject: =?Windows-1252?Q?R:_Problema_con_la_fattura_di_maggio_=96_urgente?=\n"
        "Thread-Topic: =?Windows-1252?Q?Problema_con_la_fattura_di_maggio_=96_urgente?=\n"
        f"Thread-Index: {OUTLOOK_REPLY}\n"
        "Date: Mon, 3 Jun 2024 11:30:00 +0000\n"
        "Message-ID: <AM6PR07MB5432AABBCCDD9988@AM6PR07MB5432.eurprd07.prod.outlook.com>\n"
        "MIME-Version: 1.0\n"
        'Content-Type: text/plain; charset="Windows-1252"\n'
        "\n"
        "Dimenticavo: il numero della fattura =E8 2024/118.\n"
    )


def test_outlook_italian_conversation_stays_in_one_case() -> None:
    desk = Desk()
    first, opened, number = desk.receive(outlook_first())
    assert opened.matched_by == "new" and number == 1042
    assert first.subject == "Problema con la fattura di maggio – urgente"
    assert first.thread_index is not None
    ack_id, token, ack_subject = desk.acknowledge(number, first)

    _, answer, joined = desk.receive(outlook_reply_to_ack(ack_id, token, ack_subject))
    assert (joined, answer.matched_by) == (number, "token")
    assert answer.token is not None and answer.token.valid

    # Thread-Index without References: the conversation key finds the case.
    follow_up, by_index, again = desk.receive(outlook_reply_to_own_sent_item())
    assert follow_up.references == () and follow_up.in_reply_to == ()
    assert conversation_key(follow_up.thread_index or "") == conversation_key(OUTLOOK_ROOT)
    assert (again, by_index.matched_by) == (number, "thread-index")


def test_outlook_reply_without_thread_index_falls_back_to_the_subject() -> None:
    desk = Desk()
    first, _, number = desk.receive(outlook_first())
    raw = outlook_reply_to_own_sent_item().replace(
        f"Thread-Index: {OUTLOOK_REPLY}\r\n".encode(), b""
    )
    mail, result, joined = desk.receive(raw)
    assert mail.subject.startswith("R: ") and mail.subject_key == first.subject_key
    assert (joined, result.matched_by) == (number, "subject")


def test_outlook_subject_fallback_never_serves_a_stranger() -> None:
    desk = Desk()
    desk.receive(outlook_first())
    raw = (
        outlook_reply_to_own_sent_item()
        .replace(f"Thread-Index: {OUTLOOK_REPLY}\r\n".encode(), b"")
        .replace(b"Mario.Rossi@cliente.it", b"someone@elsewhere.example")
    )
    _, result, joined = desk.receive(raw)
    assert result.matched_by == "new" and joined != 1042


# -- Gmail: Re:, In-Reply-To and References, reply-all from a Cc'd colleague ---------------


def gmail_first() -> bytes:
    return crlf(
        "MIME-Version: 1.0\n"
        "Date: Tue, 4 Jun 2024 14:02:11 +0200\n"
        "Message-ID: <CAF3k9dG0x+Yw2Lk1h5rTz8QmXz1vWc0=Jq7nY4x6bA@mail.gmail.com>\n"
        "Subject: Router non si connette\n"
        "From: Giulia Verdi <giulia.verdi@gmail.com>\n"
        "To: assistenza@examplenet.it\n"
        "Cc: Paolo Verdi <paolo.verdi@gmail.com>\n"
        'Content-Type: multipart/alternative; boundary="000000000000a1b2c3061a9f0e11"\n'
        "\n"
        "--000000000000a1b2c3061a9f0e11\n"
        'Content-Type: text/plain; charset="UTF-8"\n'
        "\n"
        "Buonasera, da ieri il router non si connette pi=C3=B9.\n"
        "\n"
        "--000000000000a1b2c3061a9f0e11\n"
        'Content-Type: text/html; charset="UTF-8"\n'
        "\n"
        '<div dir="ltr">Buonasera, da ieri il router non si connette più.</div>\n'
        "\n"
        "--000000000000a1b2c3061a9f0e11--\n"
    )


def gmail_reply(sender: str, first_id: str, ack_id: str, token: str, subject: str) -> bytes:
    return crlf(
        "MIME-Version: 1.0\n"
        "Date: Tue, 4 Jun 2024 15:40:02 +0200\n"
        f"References: <{first_id}> <{ack_id}>\n"
        f"In-Reply-To: <{ack_id}>\n"
        f"Message-ID: <CAF3k9dH{len(sender)}Zq+Re1Lk1h5rTz8QmXz1vWc0@mail.gmail.com>\n"
        f"Subject: Re: {subject}\n"
        f"From: {sender}\n"
        f"To: Assistenza ExampleNet <{token}>\n"
        "Cc: Giulia Verdi <giulia.verdi@gmail.com>, Paolo Verdi <paolo.verdi@gmail.com>\n"
        'Content-Type: text/plain; charset="UTF-8"\n'
        "\n"
        "Ho riavviato il router ma non cambia nulla.\n"
        "\n"
        "Il giorno mar 4 giu 2024 alle ore 14:05 Assistenza ExampleNet <\n"
        "assistenza@examplenet.it> ha scritto:\n"
        "\n"
        "> Abbiamo ricevuto la sua richiesta.\n"
    )


def test_gmail_reply_and_reply_all_from_a_cc_colleague() -> None:
    desk = Desk()
    first, _, number = desk.receive(gmail_first())
    ack_id, token, subject = desk.acknowledge(number, first)
    giulia = "Giulia Verdi <giulia.verdi@gmail.com>"
    _, reply, joined = desk.receive(gmail_reply(giulia, first.message_id, ack_id, token, subject))
    assert (joined, reply.matched_by) == (number, "token")

    # Paolo (Cc'd on the first mail) replies to all: the token was Giulia's, so it does not
    # verify for him; he is a participant, so the subject tag is trusted.
    paolo = "Paolo Verdi <paolo.verdi@gmail.com>"
    _, other, same = desk.receive(gmail_reply(paolo, first.message_id, ack_id, token, subject))
    assert (same, other.matched_by, other.new_participant) == (number, "tag", False)
    assert other.token is not None and not other.token.valid


def test_gmail_reply_from_someone_never_involved_joins_by_our_message_id() -> None:
    desk = Desk()
    first, _, number = desk.receive(gmail_first())
    ack_id, token, subject = desk.acknowledge(number, first)
    outsider = "Anna Neri <anna.neri@gmail.com>"
    _, result, joined = desk.receive(
        gmail_reply(outsider, first.message_id, ack_id, token, subject)
    )
    # The tag alone would not do (M14); our signed Message-ID in In-Reply-To does.
    assert (joined, result.matched_by, result.new_participant) == (number, "own-message-id", True)


# -- Apple Mail: follow-up to one's own message, References and In-Reply-To -----------------


def apple_first() -> bytes:
    return crlf(
        "From: Francesca Galli <f.galli@icloud.com>\n"
        'Content-Type: text/plain; charset="utf-8"\n'
        "Content-Transfer-Encoding: quoted-printable\n"
        "Mime-Version: 1.0 (Mac OS X Mail 16.0 \\(3774.600.62\\))\n"
        "Subject: Disdetta contratto\n"
        "Message-Id: <8F0E2C1A-4B7D-4E59-9C3B-2A1F6D7E8B90@icloud.com>\n"
        "Date: Wed, 5 Jun 2024 09:15:27 +0200\n"
        "To: assistenza@examplenet.it\n"
        "X-Mailer: Apple Mail (2.3774.600.62)\n"
        "\n"
        "Vorrei disdire il contratto 7781.\n"
    )


def apple_follow_up() -> bytes:
    return crlf(
        "From: Francesca Galli <f.galli@icloud.com>\n"
        "Content-Type: multipart/alternative;\n"
        '\tboundary="Apple-Mail=_5C3D2B1A-0F9E-4D8C-B7A6-958473625140"\n'
        "Mime-Version: 1.0 (Mac OS X Mail 16.0 \\(3774.600.62\\))\n"
        "Subject: Re: Disdetta contratto\n"
        "Date: Wed, 5 Jun 2024 09:48:03 +0200\n"
        "References: <8F0E2C1A-4B7D-4E59-9C3B-2A1F6D7E8B90@icloud.com>\n"
        "To: assistenza@examplenet.it\n"
        "In-Reply-To: <8F0E2C1A-4B7D-4E59-9C3B-2A1F6D7E8B90@icloud.com>\n"
        "Message-Id: <D41C7B2E-9A3F-4C88-8E1D-6F2B0A9C3E47@icloud.com>\n"
        "X-Mailer: Apple Mail (2.3774.600.62)\n"
        "\n"
        "--Apple-Mail=_5C3D2B1A-0F9E-4D8C-B7A6-958473625140\n"
        "Content-Transfer-Encoding: quoted-printable\n"
        "Content-Type: text/plain;\n"
        "\tcharset=utf-8\n"
        "\n"
        "Dimenticavo: il codice cliente =C3=A8 C-0042.\n"
        "\n"
        "> Il giorno 5 giu 2024, alle ore 09:15, Francesca Galli <f.galli@icloud.com> ha =\n"
        "scritto:\n"
        ">=20\n"
        "> Vorrei disdire il contratto 7781.\n"
        "\n"
        "--Apple-Mail=_5C3D2B1A-0F9E-4D8C-B7A6-958473625140\n"
        "Content-Transfer-Encoding: 7bit\n"
        "Content-Type: text/html;\n"
        "\tcharset=us-ascii\n"
        "\n"
        "<html><body>Dimenticavo: il codice cliente &egrave; C-0042.</body></html>\n"
        "--Apple-Mail=_5C3D2B1A-0F9E-4D8C-B7A6-958473625140--\n"
    )


def test_apple_mail_follow_up_joins_by_references() -> None:
    desk = Desk()
    _, _, number = desk.receive(apple_first())
    mail, result, joined = desk.receive(apple_follow_up())
    assert mail.in_reply_to == ("8F0E2C1A-4B7D-4E59-9C3B-2A1F6D7E8B90@icloud.com",)
    assert (joined, result.matched_by, result.new_participant) == (number, "references", False)


def test_apple_mail_follow_up_arriving_first_is_met_by_its_parent() -> None:
    desk = Desk()
    _, _, number = desk.receive(apple_follow_up())
    _, result, joined = desk.receive(apple_first())
    assert (joined, result.matched_by) == (number, "references")
    assert "Message-ID" in result.reason


# -- a phone client that drops In-Reply-To but keeps the tag -------------------------------


def phone_reply(sender: str, subject: str) -> bytes:
    return crlf(
        f"From: {sender}\n"
        "To: assistenza@examplenet.it\n"
        f"Subject: Re: {subject}\n"
        "Date: Thu, 6 Jun 2024 07:55:31 +0200\n"
        "Message-ID: <a8c3e1f0-0d1b-4c8e-9f4a-1e2d3c4b5a69@smartphone.cliente.it>\n"
        "User-Agent: K-9 Mail for Android\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "\n"
        "Ancora nessuna risposta?\n"
        "--\n"
        "Inviato dal mio dispositivo Android con K-9 Mail.\n"
    )


def test_phone_reply_without_ids_joins_by_tag() -> None:
    desk = Desk()
    first, _, number = desk.receive(outlook_first())
    _, _, subject = desk.acknowledge(number, first)
    mail, result, joined = desk.receive(
        phone_reply("Mario Rossi <mario.rossi@cliente.it>", subject)
    )
    assert mail.in_reply_to == () and mail.references == ()
    assert (joined, result.matched_by) == (number, "tag")


def test_m14_phone_reply_with_a_guessed_tag_from_a_stranger_opens_a_new_case() -> None:
    desk = Desk()
    first, _, number = desk.receive(outlook_first())
    _, _, subject = desk.acknowledge(number, first)
    _, result, joined = desk.receive(phone_reply("Eva <eva@attacker.example>", subject))
    assert joined != number
    assert (result.matched_by, result.linked_case) == ("new:stranger-tag", number)


# -- an agent forwarding a customer mail in ----------------------------------------------


def agent_forward_inline_outlook() -> bytes:
    return crlf(
        "From: Luca Bianchi <luca.bianchi@examplenet.it>\n"
        "To: assistenza@examplenet.it\n"
        "Subject: I: Richiesta preventivo fibra\n"
        "Thread-Topic: Richiesta preventivo fibra\n"
        "Thread-Index: AQHatZ9kR1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6\n"
        "Date: Fri, 7 Jun 2024 10:20:00 +0000\n"
        "Message-ID: <DB9PR07MB7777ABCDEF@DB9PR07MB7777.eurprd07.prod.outlook.com>\n"
        "Content-Language: it-IT\n"
        "MIME-Version: 1.0\n"
        'Content-Type: text/plain; charset="iso-8859-1"\n'
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n"
        "Mi =E8 arrivata direttamente, apro un caso.\n"
        "\n"
        "Luca\n"
        "\n"
        "________________________________\n"
        "Da: Studio Conti <info@studioconti.it>\n"
        "Inviato: venerd=EC 7 giugno 2024 11:02\n"
        "A: Luca Bianchi <luca.bianchi@examplenet.it>\n"
        "Oggetto: Richiesta preventivo fibra\n"
        "\n"
        "Buongiorno, vorremmo un preventivo per la fibra in ufficio.\n"
    )


def agent_forward_as_attachment() -> bytes:
    return crlf(
        "From: Luca Bianchi <luca.bianchi@examplenet.it>\n"
        "To: assistenza@examplenet.it\n"
        "Subject: Fwd: Guasto linea\n"
        "Date: Fri, 7 Jun 2024 12:00:00 +0200\n"
        "Message-ID: <4f1e2d3c-fwd@examplenet.it>\n"
        "User-Agent: Mozilla Thunderbird\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="------------fwdBoundary01"\n'
        "\n"
        "--------------fwdBoundary01\n"
        "Content-Type: text/plain; charset=UTF-8\n"
        "\n"
        "Inoltro il messaggio del cliente.\n"
        "\n"
        "--------------fwdBoundary01\n"
        'Content-Type: message/rfc822; name="Guasto linea.eml"\n'
        'Content-Disposition: attachment; filename="Guasto linea.eml"\n'
        "\n"
        "From: =?UTF-8?Q?Nicol=C3=B2_Ferri?= <Nicolo.Ferri@Ferri-Impianti.IT>\n"
        "To: luca.bianchi@examplenet.it\n"
        "Subject: Guasto linea\n"
        "Date: Fri, 7 Jun 2024 11:40:00 +0200\n"
        "Message-ID: <orig-77@ferri-impianti.it>\n"
        "Content-Type: text/plain; charset=UTF-8\n"
        "\n"
        "La linea è giù da stamattina.\n"
        "\n"
        "--------------fwdBoundary01--\n"
    )


def test_agent_forward_inline_names_the_customer() -> None:
    mail = parse(agent_forward_inline_outlook())
    assert forwarded_sender(mail) == Address("Studio Conti", "info@studioconti.it")


def test_agent_forward_as_attachment_names_the_customer() -> None:
    mail = parse(agent_forward_as_attachment())
    assert forwarded_sender(mail) == Address("Nicolò Ferri", "nicolo.ferri@ferri-impianti.it")


def test_customer_mail_that_is_no_forward_has_no_forwarded_sender() -> None:
    assert forwarded_sender(parse(apple_first())) is None
