"""`mailcare demo`: the real daemon on built-in servers, sample mail, and a readable timeline.

An in-process IMAP server (pymap) and SMTP sink (aiosmtpd) listen on 127.0.0.1; the shipped
`mailcare.toml` is used with only the server addresses and the state folder changed. Sample
customers write in Italian and English; an agent answers from "their mail client" (a reply
to the notification they received, quote and signature included); a customer follows up;
an out-of-office robot answers. Every mail that leaves is saved as .eml in the output folder.
"""

from __future__ import annotations

import email
import email.policy
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import click

from . import config as config_mod
from . import pipeline
from .daemon import Daemon
from .logs import setup_logging
from .plan import Plan
from .resources import sample_config
from .sandbox import LabImap, LabSmtp, Received

IMAP_USER = "assistenza@examplenet.it"
IMAP_PASSWORD = "demo-password"


@dataclass(frozen=True)
class Sample:
    name: str
    sender: str
    subject: str
    body: str
    extra: tuple[tuple[str, str], ...] = ()


SAMPLES = (
    Sample(
        "Mario Rossi <mario.rossi@libero.it>",
        "mario.rossi@libero.it",
        "Internet non funziona da ieri sera",
        "Buongiorno,\nda ieri sera la fibra non va: la spia LOS del modem è rossa fissa e "
        "non navigo più. Ho già spento e riacceso il router due volte.\n"
        "Lavoro da casa, mi serve la linea entro domani.\n\nGrazie\nMario Rossi\n"
        "Via Garibaldi 12, Bologna",
    ),
    Sample(
        "Anna Verdi <anna.verdi@gmail.com>",
        "anna.verdi@gmail.com",
        "La stampante non stampa più",
        "Salve, da quando ho aggiornato il computer la mia stampante HP non stampa più "
        "niente, dice 'driver non disponibile'. Come posso risolvere?\nAnna",
    ),
    Sample(
        "John Miller <john.miller@outlook.com>",
        "john.miller@outlook.com",
        "Charged twice on my last invoice",
        "Hello,\nmy bank statement shows two debits of 29.90 EUR for the November invoice "
        "of my fibre contract. Could you refund the second one?\n\nBest regards,\nJohn",
    ),
    Sample(
        "Lucia Neri <lucia.neri@tiscali.it>",
        "lucia.neri@tiscali.it",
        "Informazioni",
        "Buonasera, vorrei sapere come funziona, grazie.",
    ),
    Sample(
        "Mail Delivery Robot <noreply@newsletter-example.com>",
        "noreply@newsletter-example.com",
        "Le offerte della settimana",
        "Scopri le nostre offerte!",
        (("Precedence", "bulk"), ("List-Unsubscribe", "<mailto:unsub@newsletter-example.com>")),
    ),
)


@dataclass
class Timeline:
    """What happened, in order, for the printed report."""

    lines: list[str] = field(default_factory=list)
    plans: list[Plan] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_batch(self, plans: list[Plan]) -> None:
        with self.lock:
            self.plans.extend(plans)


def _message(sample: Sample, to: str = "assistenza@examplenet.it") -> bytes:
    msg = EmailMessage()
    msg["From"] = sample.name
    msg["To"] = to
    msg["Subject"] = sample.subject
    msg["Date"] = format_datetime(_now_local())
    msg["Message-ID"] = make_msgid(domain=sample.sender.split("@")[1])
    for key, value in sample.extra:
        msg[key] = value
    msg.set_content(sample.body)
    return msg.as_bytes(policy=email.policy.SMTP)


def _now_local() -> datetime:
    return datetime.now().astimezone()


def _settings(imap: LabImap, smtp: LabSmtp, out: Path) -> config_mod.Settings:
    base = config_mod.load(sample_config())
    imap_section = base.imap.model_copy(
        update={
            "host": imap.host,
            "port": imap.port,
            "tls": "none",
            "username": IMAP_USER,
            "password": config_mod.SecretStr(IMAP_PASSWORD),
            "poll_interval": 1.0,
            "timeout": 10.0,
            "processed_folder": "",
            "idle": True,
        }
    )
    smtp_section = base.smtp.model_copy(
        update={
            "host": smtp.host,
            "port": smtp.port,
            "tls": "none",
            "username": "",
            "password": None,
            "retry_base": 1.0,
        }
    )
    settings = pipeline.with_paths(base, state_dir=out / "state")
    metrics = settings.metrics.model_copy(update={"listen": ""})
    report = settings.report.model_copy(update={"to": ""})
    return settings.model_copy(
        update={"imap": imap_section, "smtp": smtp_section, "metrics": metrics, "report": report}
    )


def run_demo(out: Path, *, quiet: bool = False) -> int:
    out = out.resolve()
    for sub in ("state", "sent"):
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / "sent").mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging("text", "INFO", stream=(out / "daemon.log").open("w", encoding="utf-8"))
    echo = click.echo
    echo("mailcare demo: starting an IMAP server (pymap) and an SMTP sink (aiosmtpd) on 127.0.0.1")
    with LabImap({IMAP_USER: IMAP_PASSWORD}) as imap, LabSmtp(save_dir=out / "sent") as smtp:
        settings = _settings(imap, smtp, out)
        timeline = Timeline()
        daemon = Daemon(settings)
        daemon.on_batch = timeline.on_batch
        thread = threading.Thread(target=daemon.run, name="daemon", daemon=True)
        echo("training the scope model from classifiers/ and starting the daemon…")
        thread.start()
        _wait(lambda: daemon.ready, 60, "the daemon did not get ready")
        _conversation(imap, smtp, daemon, timeline, settings, echo)
        daemon.request_stop()
        thread.join(30)
    _print_summary(out, settings, echo)
    return 0


def _wait(condition: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise click.ClickException(message)
        time.sleep(0.02)


def _deliver_and_settle(
    imap: LabImap, smtp: LabSmtp, daemon: Daemon, timeline: Timeline, raw: bytes
) -> list[Received]:
    """Deliver one mail, wait until it is processed and its mail has reached the sink."""
    before_plans = len(timeline.plans)
    before_sent = len(smtp.received)
    imap.deliver(IMAP_USER, raw)
    _wait(lambda: len(timeline.plans) > before_plans, 30, "the daemon did not process a mail")
    plan = timeline.plans[-1]
    expected = before_sent + sum(1 for o in plan.outgoing if not o.shadow)
    _wait(lambda: len(smtp.received) >= expected, 30, "queued mail did not reach the sink")
    return smtp.received[before_sent:]


def _conversation(
    imap: LabImap,
    smtp: LabSmtp,
    daemon: Daemon,
    timeline: Timeline,
    settings: config_mod.Settings,
    echo: Callable[[str], None],
) -> None:
    echo("")
    step = 0
    for sample in SAMPLES:
        step += 1
        raw = _message(sample)
        sent = _deliver_and_settle(imap, smtp, daemon, timeline, raw)
        _describe(step, f'{sample.name} writes: "{sample.subject}"', timeline.plans[-1], sent, echo)
    first = timeline.plans[0]
    notice = next(
        r
        for r in smtp.received
        if _header(r.data, "X-Mailcare-Case") == str(first.case)
        and r.rcpt_tos[0] != SAMPLES[0].sender
    )
    owner = notice.rcpt_tos[0]
    agent = settings.agent(owner)
    reply = _agent_reply(notice, owner, agent.name if agent else owner)
    step += 1
    sent = _deliver_and_settle(imap, smtp, daemon, timeline, reply)
    _describe(
        step,
        f"{name_of(settings, owner)} answers from their mail client (quote and signature included)",
        timeline.plans[-1],
        sent,
        echo,
    )
    ack = next(r for r in smtp.received if r.rcpt_tos[0] == SAMPLES[0].sender)
    step += 1
    sent = _deliver_and_settle(imap, smtp, daemon, timeline, _customer_followup(ack))
    _describe(
        step, f"{SAMPLES[0].name} replies to the acknowledgement", timeline.plans[-1], sent, echo
    )
    step += 1
    sent = _deliver_and_settle(imap, smtp, daemon, timeline, _out_of_office(ack))
    _describe(
        step, "an out-of-office robot answers one of our mails", timeline.plans[-1], sent, echo
    )


def name_of(settings: config_mod.Settings, address: str) -> str:
    agent = settings.agent(address)
    return f"{agent.name} <{address}>" if agent else address


def _header(data: bytes, name: str) -> str:
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    return str(msg.get(name, ""))


def _agent_reply(notice: Received, owner: str, name: str) -> bytes:
    """What Thunderbird would send when the owner hits Reply on the notification."""
    original = email.message_from_bytes(notice.data, policy=email.policy.default)
    body = original.get_body(("plain",))
    quoted = "\n".join("> " + line for line in (body.get_content() if body else "").splitlines())
    msg = EmailMessage()
    msg["From"] = f"{name} <{owner}>"
    msg["To"] = str(original["Reply-To"])
    msg["Subject"] = "Re: " + str(original["Subject"])
    msg["Date"] = format_datetime(_now_local())
    msg["Message-ID"] = make_msgid(domain="examplenet.it")
    msg["In-Reply-To"] = str(original["Message-ID"])
    msg["References"] = str(original["Message-ID"])
    msg.set_content(
        "Buongiorno signor Rossi,\n\nho verificato la sua linea: c'è un guasto in centrale che "
        "i tecnici stanno già riparando. Il servizio tornerà entro oggi alle 18; se dopo "
        "quell'ora la spia LOS è ancora rossa, mi risponda qui e mando un tecnico.\n\n"
        f"Cordiali saluti,\n{name.split()[0]}\n\n-- \n{name}\nAssistenza tecnica ExampleNet\n\n"
        f"Il giorno oggi, Assistenza ExampleNet ha scritto:\n{quoted}\n"
    )
    return msg.as_bytes(policy=email.policy.SMTP)


def _customer_followup(ack: Received) -> bytes:
    original = email.message_from_bytes(ack.data, policy=email.policy.default)
    msg = EmailMessage()
    msg["From"] = SAMPLES[0].name
    msg["To"] = str(original["Reply-To"])
    msg["Subject"] = "R: " + str(original["Subject"])
    msg["Date"] = format_datetime(_now_local())
    msg["Message-ID"] = make_msgid(domain="libero.it")
    msg["In-Reply-To"] = str(original["Message-ID"])
    msg["References"] = str(original["Message-ID"])
    msg.set_content("Grazie, aspetto. Il modem è un ExampleBox 3, se serve.\nMario")
    return msg.as_bytes(policy=email.policy.SMTP)


def _out_of_office(ack: Received) -> bytes:
    original = email.message_from_bytes(ack.data, policy=email.policy.default)
    msg = EmailMessage()
    msg["From"] = SAMPLES[0].name
    msg["To"] = "assistenza@examplenet.it"
    msg["Subject"] = "Risposta automatica: " + str(original["Subject"])
    msg["Date"] = format_datetime(_now_local())
    msg["Message-ID"] = make_msgid(domain="libero.it")
    msg["In-Reply-To"] = str(original["Message-ID"])
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content("Sono in ferie fino a lunedì.")
    return msg.as_bytes(policy=email.policy.SMTP)


def _describe(
    step: int, title: str, plan: Plan, sent: list[Received], echo: Callable[[str], None]
) -> None:
    echo(f"[{step}] {title}")
    case = f"case #{plan.case}" if plan.case else "no case"
    how = "new case" if plan.new else f"joined by {plan.matched_by}"
    echo(f"    → {case} ({how})")
    if plan.new_case:
        row = plan.new_case
        scope = f"{row['scope_kind']} {row['scope_category']}".strip()
        echo(f"    → scope: {scope} ({row['scope_confidence']:.2f}) — {row['scope_reason']}")
        echo(f"    → owner: {row['owner'] or 'nobody available'}")
    for received in sent:
        subject = _header(received.data, "Subject")
        kind = _header(received.data, "X-Mailcare-Kind") or ""
        echo(f'    → sent to {", ".join(received.rcpt_tos)}: "{_decode(subject)}"')
        if kind in SHOWN or (not kind and _shows_text(received, plan)):
            for line in _body(received.data).strip().splitlines()[:14]:
                echo(f"      │ {line}")
    for reason in plan.reasons:
        echo(f"    · {reason}")
    echo("")


SHOWN = ("ack", "redirect", "relay")


def _shows_text(received: Received, plan: Plan) -> bool:
    """Print what the customer reads: the ack, the redirect and relayed replies."""
    message_id = _header(received.data, "Message-ID").strip("<>")
    return any(o.message_id == message_id and o.kind in SHOWN for o in plan.outgoing)


def _body(data: bytes) -> str:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    part = msg.get_body(("plain",)) if isinstance(msg, EmailMessage) else None
    return part.get_content() if part is not None else ""


def _decode(value: str) -> str:
    from email.header import decode_header, make_header

    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError):
        return value


def _print_summary(out: Path, settings: config_mod.Settings, echo: Callable[[str], None]) -> None:
    from .report import write_report
    from .store import Store

    store = Store(pipeline.state_db(settings))
    try:
        rows = store.cases()
        write_report(settings, store, out / "report.html", 7 * 86400.0, time.time())
    finally:
        store.close()
    echo(f"{len(rows)} cases in {pipeline.state_db(settings)}:")
    for row in reversed(rows):
        echo(f"  #{row['number']} {row['state']:<10} {row['owner'] or '-':<28} {row['subject']}")
    echo("")
    config = _write_config(out, settings)
    echo(f"sent mails:  {out / 'sent'}")
    echo(f"daemon log:  {out / 'daemon.log'}")
    echo(f"report:      {out / 'report.html'}")
    echo(f"inspect:     mailcare case 1000 --config {config}")
    echo(f"             mailcare stats --config {config}")


def _write_config(out: Path, settings: config_mod.Settings) -> Path:
    """The shipped config pointed at the demo's state, so the admin CLI can read it."""
    text = sample_config().read_text(encoding="utf-8")
    root = sample_config().parent
    text = text.replace('state_dir = "state"', f'state_dir = "{settings.mailcare.state_dir}"')
    text = text.replace('templates_dir = "templates"', f'templates_dir = "{root / "templates"}"')
    text = text.replace('examples_dir = "classifiers"', f'examples_dir = "{root / "classifiers"}"')
    path = out / "demo.toml"
    path.write_text(text, encoding="utf-8")
    return path
