"""Acknowledgement latency: from a mail's delivery to the ack accepted by the SMTP server.

    .venv/bin/python bench/ack_latency.py [--mails 50] [--seed 1]

`mailcare run` (reference config, scope model) idles in IMAP IDLE on a private Dovecot
with an empty INBOX. New customer mails (bench/corpus.py, one per customer) are then
delivered one at a time with `doveadm save`, as Dovecot's LDA would, with a random pause of
0.2-1.0 s between them so deliveries fall anywhere in the daemon's idle cycle. For each:

  floor     a bare imapclient session idling on the same INBOX: the moment its socket
            has the EXISTS for this delivery;
  mailcare  the moment the SMTP sink (its own process) accepts the acknowledgement (or
            redirect) whose In-Reply-To is this mail.

Both are measured from the moment the delivery started (`doveadm save` itself takes about
half a second to start); "difference" is mailcare minus floor per delivery, the daemon's own
share. Targets: mailcare p50 within 0.1 s of the floor's p50, p95 under 1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import selectors
import sys
import tempfile
import threading
import time
from pathlib import Path

import _lab
from imapclient import IMAPClient


class IdleWatcher(threading.Thread):
    """A bare IDLE client: notes when each new message's EXISTS reaches its socket."""

    def __init__(self, mailbox: _lab.Mailbox, user: str) -> None:
        super().__init__(daemon=True)
        self.client = IMAPClient("127.0.0.1", port=mailbox.port, ssl=False, timeout=30)
        self.client.login(user, _lab.PASSWORD)
        self.client.select_folder("INBOX", readonly=True)
        self.seen: dict[int, float] = {}  # message count -> time.time() it was announced
        self.stopping = threading.Event()

    def run(self) -> None:
        with selectors.DefaultSelector() as selector:
            self.client.idle()
            selector.register(self.client.socket(), selectors.EVENT_READ)
            while not self.stopping.is_set():
                if not selector.select(0.2):
                    continue
                at = time.time()
                _, responses = self.client.idle_done()
                for response in responses:
                    if len(response) > 1 and response[1] == b"EXISTS":
                        self.seen.setdefault(int(response[0]), at)
                self.client.idle()
            self.client.idle_done()

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)
        with contextlib.suppress(Exception):
            self.client.logout()


def new_mail(count: int, seed: int) -> list[bytes]:
    """`count` mails that open a new case, each from a customer not seen before."""
    from corpus import samples

    chosen: list[bytes] = []
    senders: set[str] = set()
    for item in samples(count * 4, seed):
        sender = _lab.head_fields(item.raw).get("from", "")
        if item.kind == "new" and sender not in senders:
            senders.add(sender)
            chosen.append(item.raw)
        if len(chosen) == count:
            return chosen
    raise SystemExit(f"the corpus gave only {len(chosen)} new mails from new senders")


def measure(
    mailbox: _lab.Mailbox, user: str, sink: _lab.Sink, mails: list[bytes], seed: int
) -> list[tuple[float, float]]:
    """(floor, mailcare) seconds for each delivery."""
    pause = random.Random(seed)
    watcher = IdleWatcher(mailbox, user)
    watcher.start()
    results = []
    try:
        time.sleep(0.5)
        for number, raw in enumerate(mails, start=1):
            message_id = _lab.head_fields(raw)["message-id"]
            acks = {item.in_reply_to: item.at for item in sink.received}
            started = time.time()
            mailbox.deliver(user, raw)

            def announced(count: int = number) -> bool:
                return count in watcher.seen

            _lab.wait_until(announced, 30, "the IDLE client")

            def acked(mid: str = message_id, acks: dict[str, float] = acks) -> bool:
                acks.update((item.in_reply_to, item.at) for item in sink.received)
                return mid in acks

            _lab.wait_until(acked, 30, f"the acknowledgement of mail {number}", poll=0.005)
            results.append((watcher.seen[number] - started, acks[message_id] - started))
            time.sleep(pause.uniform(0.2, 1.0))
    finally:
        watcher.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mails", type=int, default=50, help="deliveries to time")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    say = _lab.say
    say(f"ack latency: {args.mails} deliveries, seed {args.seed}")
    mails = new_mail(args.mails, args.seed)
    mailbox = _lab.Mailbox()
    sink = _lab.Sink()
    try:
        user = mailbox.new_user()
        mailbox.maildir(user)
        with tempfile.TemporaryDirectory(prefix="mailcare-ack-") as folder:
            config = _lab.write_config(
                Path(folder), imap_port=mailbox.port, user=user, smtp_port=sink.port
            )
            daemon = _lab.Daemon(config)
            try:
                with _lab.step("starting mailcare"):
                    daemon.wait_ready()
                    time.sleep(1.0)  # into IDLE
                results = measure(mailbox, user, sink, mails, args.seed)
                rss, _ = daemon.peak_rss_mb()
            except BaseException:
                print(daemon.tail(), file=sys.stderr)
                raise
            finally:
                daemon.stop()
    finally:
        sink.stop()
        mailbox.close()
    floor = sorted(r[0] for r in results)
    ours = sorted(r[1] for r in results)
    p = _lab.percentile
    say()
    say(f"deliveries   {len(results)}, one at a time, `doveadm save` into an idle INBOX")
    say("             p50      p95      max    (seconds from the start of the delivery)")
    # The daemon's own share, delivery by delivery: from the IDLE client's EXISTS to the ack.
    own = sorted(r[1] - r[0] for r in results)
    for name, values in (("floor", floor), ("mailcare", ours), ("difference", own)):
        say(f"{name:12} {p(values, 50):6.3f}   {p(values, 95):6.3f}   {values[-1]:6.3f}")
    gap = p(ours, 50) - p(floor, 50)
    say(f"p50 gap      {gap:6.3f}   mailcare p50 - floor p50")
    say(f"daemon RSS   {rss:6.0f} MB peak")
    say(
        f"targets      p50 within 0.1 s of the floor: {_lab.verdict(gap <= 0.1)}; "
        f"p95 under 1 s: {_lab.verdict(p(ours, 95) < 1.0)}"
    )
    rerun = ["--mails", str(args.mails), "--seed", str(args.seed)]
    say(f"reproduce    {_lab.command('ack_latency.py', rerun)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
