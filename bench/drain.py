"""Backlog drain: how fast mailcare works through N waiting mails, against the bare floor.

    .venv/bin/python bench/drain.py 10000 [--seed 1]

N realistic support mails (bench/corpus.py) are written into a private Dovecot's Maildir
and indexed. Then, in one run and against the same mailbox:

  floor     imapclient fetches all N with BODY.PEEK[] (in chunks of 500) and does nothing
            else;
  mailcare  `mailcare run` with the reference config (four agents, the ExampleNet scope
            rules and model) drains the same backlog end to end: fetch, parse, loops,
            threading, scope, plan, store, outbox rows queued, committed, marked
            processed on the server. Timed from its `event=ready` line until the last
            mail carries the processed keyword; the outbox sends to a local sink meanwhile.

Targets: mailcare >= 2,000 mails/s and >= half the floor; daemon RSS under 200 MB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import _lab


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("n", type=int, nargs="?", default=10_000, help="mails in the backlog")
    parser.add_argument("--seed", type=int, default=1, help="corpus seed")
    args = parser.parse_args(argv)
    say = _lab.say
    say(f"drain: {args.n} mails, seed {args.seed}")
    with _lab.step(f"generating {args.n} mails"):
        mails = _lab.corpus_mail(args.n, args.seed)
    megabytes = sum(map(len, mails)) / 1e6
    mailbox = _lab.Mailbox()
    sink = _lab.Sink()
    try:
        user = mailbox.new_user()
        with _lab.step("writing them into Dovecot's Maildir"):
            mailbox.load(user, mails)
        with _lab.step("indexing (first SELECT)"):
            indexed = mailbox.index(user)
        if indexed != args.n:
            raise SystemExit(f"Dovecot indexed {indexed} of {args.n} mails")
        count, size, seconds = _lab.fetch_floor(mailbox, user)
        floor = _lab.rate(count, seconds)
        say(f"  floor fetched {count} mails ({size / 1e6:.0f} MB) in {seconds:.2f} s")
        with tempfile.TemporaryDirectory(prefix="mailcare-drain-") as folder:
            run = _lab.drain(mailbox, user, args.n, Path(folder), sink)
    finally:
        sink.stop()
        mailbox.close()
    ratio = run.rate / floor
    say()
    say(f"backlog      {args.n} mails, {megabytes:.0f} MB")
    say(f"floor        {floor:8.0f} mails/s  imapclient BODY.PEEK[] fetch, nothing else")
    say(
        f"mailcare     {run.rate:8.0f} mails/s  end to end ({run.seconds:.2f} s; "
        f"{run.cases} cases, {run.queued} mails queued; outbox empty after "
        f"{run.sent_seconds:.1f} s)"
    )
    say(f"ratio        {ratio:8.2f}       mailcare / floor")
    say(f"daemon CPU   {1000 * run.cpu / args.n:8.2f} ms per mail (start-up included)")
    parts = ", ".join(f"{name} {1000 * s / args.n:.2f}" for name, s in run.parts.items())
    say(f"CPU by part  ms per mail from ready until the outbox is empty: {parts}")
    say(
        f"memory       {run.rss:8.0f} MB peak RSS of the daemon; {run.pss:.0f} MB peak PSS with "
        "its parse workers"
    )
    say(
        f"targets      >= 2000 mails/s: {_lab.verdict(run.rate >= 2000)}; "
        f">= half the floor: {_lab.verdict(ratio >= 0.5)}; "
        f"RSS < 200 MB: {_lab.verdict(run.rss < 200)}"
    )
    say(f"reproduce    {_lab.command('drain.py', [str(args.n), '--seed', str(args.seed)])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
