"""Seeded generator of realistic support mail for ExampleNet's inbox (assistenza@examplenet.it).

    .venv/bin/python bench/corpus.py 10000 --out /tmp/inbox                   # Maildir (new/)
    .venv/bin/python bench/corpus.py 500 --out /tmp/inbox.mbox --format mbox --seed 7 \\
        --now 2025-03-14T10:00:00+01:00

Benchmarks and load tests need mail that looks like what the daemon will really meet: Italian
and English customers of a fibre/ADSL/FWA/VoIP/hosting/PEC provider, writing from Gmail,
Outlook, Thunderbird, iPhones, Android phones and Italian webmail; some writing about things
ExampleNet does not handle (printers, Windows, Netflix, the electricity bill); follow-ups that
quote the earlier mail and carry In-Reply-To/References; out-of-office answers; plain text
and multipart/alternative with HTML; small PDF and PNG attachments; UTF-8 and ISO-8859-1
bodies in 7bit, 8bit, quoted-printable and base64; RFC 2047 subjects in Q and B encoding;
sizes spread over 2-30 KB. The same seed and `now` always give the same bytes.

Messages are made with the stdlib `email` package: `email.header`'s Q and B encoders,
`formataddr`, `format_datetime`, `encode_rfc2231`, binascii's quoted-printable and base64,
assembled into a MIME tree (`Part`) that `to_message` turns into an `email.message.Message`
on a compat32 policy with CRLF line ends (as `email.policy.SMTP` has), for the stock
`BytesGenerator`. Bulk generation writes the same tree directly (`serialize`), byte for byte
what the generator writes (a test holds it to that), because the generator's per-part work
(policy clones, re-parsing each Content-Type to find the boundary) would double the cost of
a mail, and 10,000 mails should take seconds. Header values are folded and encoded once when
the mail is drafted, so the policy writes them as they are (`_Prefolded`).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import functools
import html
import mailbox
import random
import re
import statistics
import sys
import textwrap
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from email import base64mime, quoprimime
from email.charset import BASE64, QP, Charset
from email.generator import BytesGenerator
from email.message import Message
from email.policy import Compat32
from email.utils import encode_rfc2231, format_datetime, formataddr, formatdate
from io import BytesIO
from pathlib import Path

SUPPORT_ADDRESS = "assistenza@examplenet.it"
SUPPORT_NAME = "Assistenza ExampleNet"
MX_HOST = "mx.examplenet.it"
CASE_TAG = "EX"

MIN_SIZE = 2048  # every message is at least 2 KiB ...
MAX_SIZE = 30_000  # ... and at most 30 kB
TARGET_LOW, TARGET_HIGH = 2_300, 29_000  # sizes are drawn log-uniformly in between
DAYS = 14  # mail is spread over the last two weeks before `now`

REPLY_SHARE = 0.25
AUTO_SHARE = 0.05
REPEAT_SHARE = 0.3  # new mail from a customer who wrote before
ENGLISH_SHARE = 0.22
OUT_OF_SCOPE_SHARE = 0.12
ATTACHMENT_SHARE = 0.14
QUOTE_KEEP = 9_000  # characters of an earlier mail kept when it is quoted
RECENT = 2_000  # replies answer one of this many most recent mails (about 3 days of 10,000)

try:
    from zoneinfo import ZoneInfo

    ROME: tzinfo = ZoneInfo("Europe/Rome")
except Exception:  # no time zone database: a fixed CET offset is close enough for a benchmark
    ROME = timezone(timedelta(hours=1), "CET")


# --------------------------------------------------------------------------- text fragments


@dataclass(frozen=True)
class Topic:
    """What a mail is about: subjects and problem sentences per language, and the kind of
    pasted material (router log, invoice list, ...) that makes such a mail long."""

    key: str
    in_scope: bool
    subjects: dict[str, tuple[str, ...]]
    problems: dict[str, tuple[str, ...]]
    paste: str
    weight: float = 1.0


TOPICS: tuple[Topic, ...] = (
    Topic(
        "fibre",
        True,
        {
            "it": (
                "Fibra lentissima {since}",
                "Connessione assente {since}",
                "Velocità fibra molto inferiore al contratto",
                "Internet non funziona più",
                "Disservizio linea FTTH - urgente",
                "La fibra si disconnette di continuo",
                "Luce LOS rossa sul modem, niente connessione",
            ),
            "en": (
                "Fibre connection very slow",
                "No internet connection {since}",
                "Speed far below my contract",
                "Internet keeps dropping",
                "Red LOS light on the fibre box",
            ),
        },
        {
            "it": (
                "{Since} la connessione in fibra è lentissima: lo speedtest segna {down} Mbps in "
                "download invece dei {plan} Mbps previsti dal contratto.",
                "{Since} la linea cade più volte al giorno, soprattutto la sera, e il router va "
                "riavviato ogni volta.",
                "Sull'ONT è accesa la luce LOS rossa e non navighiamo più con nessun dispositivo.",
                "Lavoro da casa e senza connessione non posso collegarmi alla VPN aziendale: per "
                "me è un problema serio.",
                "Il tecnico che ha fatto l'installazione aveva detto che la borchia ottica era "
                "danneggiata, ma nessuno è più passato a sostituirla.",
                "Anche collegando il PC via cavo alla porta LAN 1 del router la velocità non "
                "supera i {down} Mbps.",
                "Le videochiamate si bloccano di continuo e i miei figli non riescono a seguire "
                "le lezioni online.",
            ),
            "en": (
                "{Since} my fibre connection has been extremely slow: speed tests show {down} "
                "Mbps down instead of the {plan} Mbps in my contract.",
                "The line drops several times a day, mostly in the evening, and I have to "
                "restart the router every time.",
                "The LOS light on the fibre terminal is red and none of our devices can get "
                "online.",
                "I work from home and without a connection I cannot reach my company's VPN.",
                "Even with the laptop plugged into LAN port 1 of the router I never get more "
                "than {down} Mbps.",
            ),
        },
        "ping",
        2.2,
    ),
    Topic(
        "adsl",
        True,
        {
            "it": (
                "ADSL che cade continuamente",
                "Linea ADSL lentissima",
                "Portante ADSL assente {since}",
                "Adsl instabile quando piove",
            ),
            "en": ("ADSL keeps dropping", "Very slow ADSL line", "No DSL sync {since}"),
        },
        {
            "it": (
                "La spia DSL del router lampeggia senza agganciare la portante {since}.",
                "La velocità dell'ADSL è scesa a {down_small} Mbps e le pagine impiegano minuti "
                "a caricarsi.",
                "Quando squilla il telefono la connessione cade: forse manca un filtro?",
                "Abito in campagna vicino a {city} e la linea è sempre stata debole, ma adesso è "
                "inutilizzabile.",
                "Ho collegato il modem alla presa principale, senza prolunghe, ma non cambia "
                "nulla.",
            ),
            "en": (
                "The DSL light on the router keeps blinking and never syncs {since}.",
                "The ADSL speed dropped to {down_small} Mbps and pages take minutes to load.",
                "Whenever the phone rings the ADSL connection drops; could a filter be missing?",
            ),
        },
        "router",
    ),
    Topic(
        "fwa",
        True,
        {
            "it": (
                "Antenna FWA senza segnale",
                "Connessione FWA instabile",
                "Ping altissimo con la FWA",
                "Richiesta riallineamento antenna",
            ),
            "en": ("FWA antenna has no signal", "Unstable FWA connection", "Very high ping on FWA"),
        },
        {
            "it": (
                "L'antenna FWA sul tetto non riceve più segnale {since}: sul pannello del router "
                "la potenza è a {rssi} dBm.",
                "Con il vento forte la connessione va e viene, credo che l'antenna si sia "
                "spostata.",
                "Il ping verso qualsiasi sito supera i {ping} ms e fare videochiamate è "
                "impossibile.",
                "Da quando hanno montato un nuovo ripetitore vicino casa la velocità è crollata a "
                "{down_small} Mbps.",
            ),
            "en": (
                "The FWA antenna on the roof lost its signal {since}; the router panel shows "
                "{rssi} dBm.",
                "When it is windy the connection comes and goes; I think the antenna has moved.",
                "Ping to any site is above {ping} ms, so video calls are impossible.",
            ),
        },
        "ping",
    ),
    Topic(
        "voip",
        True,
        {
            "it": (
                "Telefono fisso muto",
                "Non ricevo chiamate sul numero fisso",
                "Il numero {line} non è raggiungibile",
                "Chiamate che cadono dopo pochi secondi",
                "Problema linea voce",
            ),
            "en": (
                "Landline is dead",
                "Cannot receive calls on my landline",
                "Calls drop after a few seconds",
            ),
        },
        {
            "it": (
                "Il telefono collegato alla porta FON del router è muto, senza segnale di linea, "
                "{since}.",
                "Chi mi chiama sul {line} sente squillare a vuoto, ma il telefono di casa non "
                "suona.",
                "Le chiamate in uscita cadono sempre dopo circa trenta secondi.",
                "Internet funziona regolarmente, è solo la parte voce che non va.",
                "Mia madre è anziana e usa solo il telefono fisso: vi chiedo di intervenire con "
                "urgenza.",
                'Sul router la spia Telefono è spenta e nel registro eventi leggo "registrazione '
                'SIP non riuscita".',
            ),
            "en": (
                "The phone connected to the router's FON port has no dial tone {since}.",
                "People calling {line} hear it ring, but our phone never rings.",
                "Outgoing calls always drop after about thirty seconds.",
                "Internet works fine, only the voice service is broken.",
            ),
        },
        "router",
    ),
    Topic(
        "hosting",
        True,
        {
            "it": (
                "Sito {domain} non raggiungibile",
                "Certificato SSL scaduto su {domain}",
                "Spazio hosting esaurito",
                "Errore 500 sul sito",
                "Modifica DNS del dominio {domain} non attiva",
            ),
            "en": (
                "Website {domain} is down",
                "SSL certificate expired on {domain}",
                "Hosting disk space full",
                "DNS changes not applied for {domain}",
            ),
        },
        {
            "it": (
                'Il nostro sito www.{domain} non si apre {since}: il browser restituisce "Errore '
                '500 - Internal Server Error".',
                "Il browser segnala che il certificato SSL di {domain} è scaduto e i clienti "
                "pensano che il sito non sia sicuro.",
                "Nel pannello di controllo risulta occupato il 100% dello spazio disco e non "
                "riusciamo più a caricare file.",
                "Abbiamo modificato i record DNS come indicato nella guida, ma dopo due giorni il "
                "dominio punta ancora al vecchio server.",
                "Le email inviate dal modulo contatti del sito non arrivano più.",
            ),
            "en": (
                'Our website www.{domain} has been returning "500 Internal Server Error" {since}.',
                "Browsers say the SSL certificate for {domain} has expired and customers think "
                "the site is unsafe.",
                "The control panel shows the disk 100% full and we cannot upload anything.",
                "We changed the DNS records as your guide says, but two days later the domain "
                "still points to the old server.",
            ),
        },
        "apache",
    ),
    Topic(
        "pec",
        True,
        {
            "it": (
                "PEC non riceve messaggi",
                "Casella PEC piena",
                "Rinnovo casella PEC",
                "Non riesco a inviare PEC",
                "Ricevute PEC non arrivano",
            ),
            "en": ("Certified email (PEC) not receiving", "PEC mailbox full", "PEC renewal"),
        },
        {
            "it": (
                "La casella PEC {pec} non riceve messaggi {since}, eppure il mittente ha la "
                "ricevuta di consegna.",
                'Quando invio una PEC da Outlook ricevo l\'errore "530 autenticazione richiesta".',
                "Mi è arrivato un avviso che la casella PEC è quasi piena: come posso archiviare "
                "i messaggi vecchi senza perderli?",
                "La PEC scade il {renewal} e vorrei rinnovarla senza interruzioni, perché la uso "
                "per lo studio.",
                "Non ricevo più le ricevute di accettazione e consegna, quindi non so se le PEC "
                "partono davvero.",
            ),
            "en": (
                "Our PEC mailbox {pec} has not received anything {since}, although senders get "
                "a delivery receipt.",
                'Sending a PEC from Outlook fails with "530 authentication required".',
                "The PEC mailbox expires on {renewal}; how do we renew it without interruption?",
            ),
        },
        "pec",
        0.8,
    ),
    Topic(
        "router",
        True,
        {
            "it": (
                "Router {router} con luce rossa",
                "Configurazione router {router}",
                "Wi-Fi debole al piano di sopra",
                "Password Wi-Fi dimenticata",
                "Richiesta sostituzione router",
            ),
            "en": (
                "Router {router} shows a red light",
                "Setting up router {router}",
                "Weak Wi-Fi upstairs",
                "Forgot my Wi-Fi password",
            ),
        },
        {
            "it": (
                "Il router {router} ha la spia Internet rossa fissa e non si collega.",
                "Il Wi-Fi non arriva al piano di sopra: posso comprare un ripetitore compatibile "
                "con il {router}?",
                "Ho fatto il reset del router tenendo premuto il pulsante e ora non so più come "
                "configurarlo.",
                "Vorrei usare un mio router al posto del {router}: mi servono i parametri di "
                "configurazione (VLAN, PPPoE, VoIP).",
                "Il router si riavvia da solo più volte al giorno e scalda molto.",
                "Non ricordo la password del Wi-Fi e l'etichetta sotto il router è illeggibile.",
            ),
            "en": (
                "The {router} has a solid red Internet light and will not connect.",
                "Wi-Fi does not reach the upper floor: can I buy a repeater that works with the "
                "{router}?",
                "I reset the router with the button on the back and now I don't know how to set "
                "it up again.",
                "I want to use my own router instead of the {router}: please send me the "
                "settings (VLAN, PPPoE, VoIP).",
                "The router reboots by itself several times a day and gets very hot.",
            ),
        },
        "router",
        1.4,
    ),
    Topic(
        "billing",
        True,
        {
            "it": (
                "Fattura {invoice} - importo errato",
                "Addebito doppio sul conto",
                "Richiesta rimborso",
                "Cambio IBAN per la domiciliazione",
                "Fattura di {month} non ricevuta",
                "Perché pago di più questo mese?",
            ),
            "en": (
                "Invoice {invoice} - wrong amount",
                "Charged twice",
                "Refund request",
                "New IBAN for direct debit",
                "Missing invoice for {month}",
            ),
        },
        {
            "it": (
                "Nella fattura n. {invoice} di {month} mi è stato addebitato un importo di "
                "{amount}, mentre il mio canone è di {fee}.",
                "Sul conto corrente vedo due addebiti identici di {amount} con la stessa data.",
                "Ho cambiato banca e vorrei aggiornare la domiciliazione: il nuovo IBAN è {iban}.",
                "Non ho ricevuto la fattura di {month} né via email né nell'area clienti.",
                "Avevo disdetto l'opzione {option}, ma continua a essere fatturata.",
                "Chiedo il rimborso dei giorni di disservizio, come previsto dalla Carta dei "
                "Servizi.",
            ),
            "en": (
                "Invoice no. {invoice} for {month} charges {amount}, while my monthly fee is "
                "{fee}.",
                "My bank statement shows two identical charges of {amount} on the same day.",
                "I changed bank; please update the direct debit to IBAN {iban}.",
                "I did not receive the {month} invoice, neither by email nor in the customer area.",
                "I cancelled the {option} option but I am still being charged for it.",
            ),
        },
        "invoices",
        1.6,
    ),
    Topic(
        "move",
        True,
        {
            "it": (
                "Trasloco linea",
                "Richiesta trasferimento utenza in {new_street}",
                "Cambio indirizzo di installazione",
            ),
            "en": ("Moving house - transfer my line", "Change of installation address"),
        },
        {
            "it": (
                "A fine mese mi trasferisco in {new_street}, {new_city}, e vorrei portare la linea "
                "nella nuova casa mantenendo lo stesso numero.",
                "Potete verificare se al nuovo indirizzo ({new_street}, {new_city}) arriva la "
                "fibra FTTH?",
                "Quanto costa il trasloco della linea e quanti giorni servono per l'attivazione?",
            ),
            "en": (
                "At the end of the month I am moving to {new_street}, {new_city}, and would like "
                "to keep my line and number.",
                "Can you check whether FTTH fibre is available at {new_street}, {new_city}?",
            ),
        },
        "invoices",
        0.6,
    ),
    Topic(
        "mailbox",
        True,
        {
            "it": (
                "Non riesco a configurare la posta",
                "Email bloccate in uscita",
                "Parametri server SMTP",
            ),
            "en": ("Cannot set up my email", "Outgoing mail rejected"),
        },
        {
            "it": (
                "Sul nuovo telefono non riesco a configurare la casella {email}: quali sono i "
                "server IMAP e SMTP?",
                "{Since} le email in uscita restano nella posta in uscita con un errore di "
                "autenticazione.",
            ),
            "en": (
                "I cannot set up {email} on my new phone: which IMAP and SMTP servers should I "
                "use?",
                "{Since} outgoing mail stays in the outbox with an authentication error.",
            ),
        },
        "apache",
        0.6,
    ),
    Topic(
        "printer",
        False,
        {
            "it": ("La stampante non stampa più", "Stampante {printer} offline"),
            "en": ("Printer not printing", "Printer {printer} offline"),
        },
        {
            "it": (
                "La stampante {printer} risulta offline e dal computer non riesco a stampare "
                "nulla.",
                "Dopo aver cambiato le cartucce la stampante segnala un errore e non stampa.",
                "Potete aiutarmi a installare i driver della stampante sul portatile nuovo?",
            ),
            "en": (
                "My {printer} printer shows as offline and I cannot print anything from the "
                "computer.",
                "After replacing the ink cartridges the printer shows an error and will not print.",
            ),
        },
        "winevent",
    ),
    Topic(
        "windows",
        False,
        {
            "it": (
                "Windows non si aggiorna",
                "Schermata blu dopo l'aggiornamento",
                "Computer lentissimo",
            ),
            "en": ("Windows update stuck", "Blue screen after update", "Laptop very slow"),
        },
        {
            "it": (
                "Windows 11 è bloccato sull'aggiornamento al {pct}% da due giorni.",
                "Dopo l'ultimo aggiornamento il PC mostra una schermata blu con il codice {stop}.",
                "Il portatile è diventato lentissimo, ci mette dieci minuti ad accendersi.",
            ),
            "en": (
                "Windows 11 has been stuck at {pct}% on an update for two days.",
                "Since the last update the PC shows a blue screen with the code {stop}.",
            ),
        },
        "winevent",
    ),
    Topic(
        "netflix",
        False,
        {
            "it": ("Netflix non funziona sulla TV", "Abbonamento Netflix addebitato due volte"),
            "en": ("Netflix not working on my TV", "Netflix charged twice"),
        },
        {
            "it": (
                "Sulla smart TV {tv} l'app di Netflix si blocca sul caricamento, mentre YouTube "
                "funziona.",
                "Mi è stato addebitato due volte l'abbonamento Netflix: a chi devo rivolgermi?",
                "Netflix dice che il mio account è in uso su troppi dispositivi.",
            ),
            "en": (
                "On my {tv} smart TV the Netflix app hangs while loading; YouTube works fine.",
                "Netflix charged my card twice this month; who should I contact?",
            ),
        },
        "invoices",
    ),
    Topic(
        "electricity",
        False,
        {
            "it": (
                "Bolletta della luce troppo alta",
                "Autolettura contatore",
                "Voltura contatore luce",
            ),
            "en": ("Electricity bill far too high", "Meter reading", "Electricity contract"),
        },
        {
            "it": (
                "L'ultima bolletta della luce è di {amount_big}, quasi il doppio del solito.",
                "Vi comunico l'autolettura del contatore: {kwh} kWh.",
                "Devo fare la voltura del contatore della luce per la casa di mia madre: quali "
                "documenti servono?",
                "Il contatore salta ogni volta che accendo forno e lavatrice insieme.",
            ),
            "en": (
                "My last electricity bill is {amount_big}, almost twice the usual.",
                "Here is my meter reading: {kwh} kWh.",
                "I need to move my mother's electricity contract to my name; which documents do "
                "you need?",
            ),
        },
        "invoices",
    ),
)
IN_SCOPE = tuple(t for t in TOPICS if t.in_scope)
BUSINESS_TOPICS = {"hosting": 3.0, "pec": 3.0, "mailbox": 2.0}  # weight factor for businesses
OUT_OF_SCOPE = tuple(t for t in TOPICS if not t.in_scope)


@dataclass(frozen=True)
class Phrases:
    """The parts of a mail that do not depend on the topic, in one language."""

    greetings: tuple[str, ...]
    intros: tuple[str, ...]
    tried: tuple[str, ...]
    requests: tuple[str, ...]
    closings: tuple[str, ...]
    follow_ups: tuple[str, ...]
    thanks: tuple[str, ...]
    details: tuple[str, ...]
    away: tuple[str, ...]
    away_subjects: tuple[str, ...]
    paste_intro: dict[str, str]
    disclaimer: str
    roles: tuple[str, ...]
    months: tuple[str, ...]
    days: tuple[str, ...]
    since: tuple[str, ...]


IT = Phrases(
    greetings=(
        "Buongiorno,",
        "Buonasera,",
        "Salve,",
        "Gentile Assistenza,",
        "Spett.le ExampleNet,",
        "Ciao,",
        "Buongiorno a tutti,",
        "Gentili signori,",
    ),
    intros=(
        "sono vostro cliente da {years} anni e vi scrivo per un problema.",
        "vi scrivo per segnalare un problema sulla mia linea.",
        "vi scrivo per conto di {company}.",
        "ho già chiamato il servizio clienti ma non ho risolto.",
        "mi rivolgo a voi perché non so più cosa fare.",
    ),
    tried=(
        "Ho già provato a spegnere e riaccendere il router, senza risultato.",
        "Ho controllato tutti i cavi e sono collegati correttamente.",
        "Ho provato anche con un altro computer e il problema è lo stesso.",
        "Il numero verde è sempre occupato, per questo vi scrivo.",
        "Ho già aperto una segnalazione al telefono {days} giorni fa, ma nessuno mi ha "
        "ricontattato.",
    ),
    requests=(
        "Potete verificare cosa succede?",
        "Vi chiedo di intervenire al più presto.",
        "Potete mandare un tecnico? Sono a casa tutti i giorni dopo le {hour}.",
        "Resto in attesa di un vostro riscontro.",
        "Mi fate sapere come risolvere?",
        "Vi prego di ricontattarmi al {mobile}.",
    ),
    closings=(
        "Grazie, cordiali saluti",
        "Distinti saluti",
        "Grazie mille",
        "Saluti",
        "Cordialmente",
        "Grazie e buona giornata",
        "In attesa di una risposta, porgo cordiali saluti",
    ),
    follow_ups=(
        "vi riscrivo perché il problema non è ancora risolto.",
        "nessuna novità? Siamo ancora senza servizio.",
        "aggiungo un dettaglio: il problema si presenta soprattutto la sera.",
        "come richiesto vi mando il codice cliente: {code}.",
        "il tecnico non si è presentato all'appuntamento di oggi.",
        "stamattina il problema si è ripresentato identico.",
        "vi inoltro di nuovo la mail qui sotto, non ho ancora ricevuto risposta.",
        "sono passati {days} giorni e nessuno mi ha ancora contattato.",
    ),
    thanks=(
        "grazie, adesso funziona tutto. Potete chiudere la segnalazione.",
        "confermo che da ieri la linea è tornata a funzionare, grazie per l'aiuto.",
        "tutto risolto, grazie mille per la disponibilità.",
    ),
    details=(
        "Codice cliente: {code}",
        "Numero di linea: {line}",
        "Intestatario: {name}",
        "Indirizzo di installazione: {street}, {cap} {city} ({prov})",
        "Modello router: {router}",
        "Reperibilità: {mobile}, dalle {hour} in poi",
    ),
    away=(
        "Sono fuori ufficio fino al {back} con accesso limitato alla posta.",
        "Per urgenze potete contattare {colleague} al numero {line}.",
        "Grazie per il messaggio, risponderò al mio rientro.",
        "Il messaggio non verrà inoltrato.",
    ),
    away_subjects=("Risposta automatica: {}", "Fuori sede: {}", "Assente: {}"),
    paste_intro={
        "ping": "Vi incollo qui sotto il risultato del ping e dello speedtest:",
        "router": "Vi copio il registro eventi del router:",
        "apache": "Questo è il log degli errori del sito:",
        "invoices": "Riporto l'elenco delle ultime fatture:",
        "pec": "Queste sono le ultime ricevute che risultano nella casella:",
        "winevent": "Il registro eventi del computer riporta:",
        "legal": "",
    },
    disclaimer=(
        "Questo messaggio e gli eventuali allegati sono riservati e destinati esclusivamente al "
        "destinatario indicato. Se lo avete ricevuto per errore vi preghiamo di informare il "
        "mittente e di cancellarlo dal vostro sistema; ogni utilizzo, copia o diffusione non "
        "autorizzati sono vietati. I dati personali sono trattati nel rispetto del Regolamento "
        "(UE) 2016/679 (GDPR) e del D.Lgs. 196/2003 come modificato dal D.Lgs. 101/2018.\n\n"
        "This e-mail and any attachments are confidential and intended solely for the "
        "addressee. If you have received it in error please notify the sender and delete it; "
        "any unauthorised use, copying or disclosure is prohibited.\n\n"
        "Prima di stampare questa email pensa all'ambiente."
    ),
    roles=("Amministrazione", "Titolare", "Ufficio acquisti", "Segreteria", "Responsabile IT"),
    months=(
        "gennaio",
        "febbraio",
        "marzo",
        "aprile",
        "maggio",
        "giugno",
        "luglio",
        "agosto",
        "settembre",
        "ottobre",
        "novembre",
        "dicembre",
    ),
    days=("lun", "mar", "mer", "gio", "ven", "sab", "dom"),
    since=(
        "da ieri sera",
        "da lunedì",
        "da stamattina",
        "da tre giorni",
        "da venerdì scorso",
        "da circa una settimana",
        "dalle 14 di oggi",
        "da dopo il temporale di domenica",
        "da quando è passato il vostro tecnico",
    ),
)

EN = Phrases(
    greetings=(
        "Hello,",
        "Hi,",
        "Good morning,",
        "Dear ExampleNet support,",
        "Dear Sir or Madam,",
        "Hi there,",
    ),
    intros=(
        "I have been an ExampleNet customer for {years} years.",
        "I am writing about a problem with my line.",
        "I am writing on behalf of {company}.",
        "I already called the helpline but the problem is not solved.",
    ),
    tried=(
        "I have already restarted the router several times, with no change.",
        "I checked all the cables and they are plugged in correctly.",
        "I tried another computer and the problem is the same.",
        "Your helpline is always busy, which is why I am writing.",
        "I reported this by phone {days} days ago but nobody called me back.",
    ),
    requests=(
        "Could you please check what is going on?",
        "Please fix this as soon as possible.",
        "Can you send a technician? I am home every day after {hour}.",
        "I look forward to hearing from you.",
        "Please call me back on {mobile}.",
    ),
    closings=(
        "Kind regards,",
        "Best regards,",
        "Thanks,",
        "Many thanks,",
        "Regards,",
        "Thank you in advance,",
    ),
    follow_ups=(
        "I am writing again because the problem is still there.",
        "any news? We are still without service.",
        "one more detail: it mostly happens in the evening.",
        "as requested, my customer code is {code}.",
        "the technician did not show up for today's appointment.",
        "the problem came back this morning, exactly as before.",
        "it has been {days} days and nobody has contacted me yet.",
    ),
    thanks=(
        "thanks, everything works now. You can close the ticket.",
        "I can confirm the line has worked since yesterday, thank you for your help.",
        "all sorted, many thanks.",
    ),
    details=(
        "Customer code: {code}",
        "Line number: {line}",
        "Account holder: {name}",
        "Installation address: {street}, {cap} {city} ({prov})",
        "Router: {router}",
        "Best reached on {mobile} after {hour}",
    ),
    away=(
        "I am out of the office until {back} with limited access to email.",
        "For urgent matters please contact {colleague} on {line}.",
        "Thank you for your message. I will reply when I am back.",
        "Your message will not be forwarded.",
    ),
    away_subjects=("Automatic reply: {}", "Out of Office: {}", "Auto: {}"),
    paste_intro={
        "ping": "Here are my ping and speed test results:",
        "router": "Here is the router's event log:",
        "apache": "This is the website's error log:",
        "invoices": "Here are my latest invoices:",
        "pec": "These are the latest receipts in the mailbox:",
        "winevent": "The computer's event log says:",
        "legal": "",
    },
    disclaimer=(
        "CONFIDENTIALITY NOTICE: This e-mail and any attachments are confidential and may be "
        "legally privileged. They are intended solely for the addressee. If you are not the "
        "intended recipient, please notify the sender immediately and delete this message; "
        "any use, copying or disclosure is strictly prohibited. Personal data is processed "
        "under Regulation (EU) 2016/679 (GDPR).\n\n"
        "Please consider the environment before printing this e-mail."
    ),
    roles=("Office manager", "Owner", "IT manager", "Accounts"),
    months=(
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ),
    days=("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
    since=(
        "since last night",
        "since Monday",
        "since this morning",
        "for three days now",
        "since last Friday",
        "for about a week",
        "since 2 pm today",
        "since the storm on Sunday",
    ),
)
PHRASES = {"it": IT, "en": EN}

# Names as customers write them ("_" joins a two-word surname).
_IT_FIRST = (
    "Mario Giulia Francesco Chiara Alessandro Federica Luca Sara Marco Elena Giovanni Martina "
    "Andrea Silvia Matteo Valentina Davide Laura Stefano Paola Niccolò Lucia Roberto Anna "
    "Giuseppe Francesca Antonio Elisa Fabio Ilaria Simone Beatrice Paolo Carla Enrico Rita "
    "Daniele Monica Gianluca Cristina Pietro Alessia Tommaso Noemi Emanuele Giorgia Riccardo "
    "Barbara Massimo Rosa Claudio Nicolò Mattia Gioele Loredana Ornella Vittorio Agnese "
)
_IT_LAST = (
    "Rossi Russo Ferrari Esposito Bianchi Romano Colombo Ricci Marino Greco Bruno Gallo Conti "
    "De_Luca Mancini Costa Giordano Rizzo Lombardi Moretti Barbieri Fontana Santoro Mariani "
    "Rinaldi Caruso Ferrara Galli Martini Leone Longo Gentile Martinelli Vitale Serra Coppola "
    "De_Santis D'Angelo Marchetti Parisi Villa Conte Ferraro Fabbri Marini Grasso Valentini "
    "Messina Sala De_Angelis Gatti Pellegrini Palumbo Sanna Farina Monti Cattaneo Morelli "
    "Amato Silvestri Mazza Testa Dell'Acqua Pagano Zanetti Bellini Guerra Pirrò Cantù Mosè "
    "Nicolò "
)
IT_FIRST = tuple(_IT_FIRST.split())
IT_LAST = tuple(name.replace("_", " ") for name in _IT_LAST.split())
EN_NAMES = (
    "Sarah Mitchell",
    "James O'Connor",
    "Emma Schultz",
    "Thomas Müller",
    "Peter Jansen",
    "Laura Smith",
    "David Brown",
    "Olivia Taylor",
    "Michael Johnson",
    "Sophie Martin",
    "Lukas Novák",
    "Chloé Dubois",
    "Jonas Berg",
    "Emily Clarke",
    "Daniel Evans",
    "Hannah Wright",
    "Oliver Hughes",
    "Inés García",
    "Søren Madsen",
    "Rachel Green",
    "Mark Thompson",
    "Anna Lindqvist",
)
COMPANIES = (  # {last}: a surname, {city}: a town
    "Studio Legale {last}",
    "Ferramenta {last} S.r.l.",
    "Pizzeria da {first}",
    "B&B {city}",
    "Studio Dentistico {last}",
    "Autofficina {last}",
    "Farmacia {last}",
    "Agenzia Immobiliare {last}",
    "Hotel {city}",
    "Panificio Fratelli {last}",
    "Cooperativa Sociale {city}",
    "Tecnoservizi {last} S.n.c.",
    "Studio Commercialista {last}",
    "Ottica {last}",
    "Caseificio {last}",
    "Gelateria {first}",
)
CITIES = (
    ("Bologna", "40121", "BO"),
    ("Parma", "43121", "PR"),
    ("Modena", "41121", "MO"),
    ("Ravenna", "48121", "RA"),
    ("Forlì", "47121", "FC"),
    ("Cesena", "47521", "FC"),
    ("Reggio Emilia", "42121", "RE"),
    ("Milano", "20121", "MI"),
    ("Torino", "10121", "TO"),
    ("Firenze", "50121", "FI"),
    ("Roma", "00184", "RM"),
    ("Napoli", "80121", "NA"),
    ("Cagliari", "09121", "CA"),
    ("Padova", "35121", "PD"),
    ("Cantù", "22063", "CO"),
    ("Sant'Agata Bolognese", "40019", "BO"),
)
STREETS = (
    "Via Roma",
    "Via Garibaldi",
    "Corso Italia",
    "Via Mazzini",
    "Viale dei Mille",
    "Piazza della Libertà",
    "Via San Vitale",
    "Via Emilia Est",
    "Strada Maggiore",
    "Via dell'Indipendenza",
    "Via Niccolò Machiavelli",
    "Vicolo del Pozzo",
)
AREA_CODES = ("02", "06", "011", "051", "055", "081", "041", "0521", "0544", "0543", "070")
ROUTERS = (
    "FRITZ!Box 7530",
    "FRITZ!Box 7590 AX",
    "TP-Link Archer VR600",
    "Technicolor TG789vac",
    "ZTE H388X",
    "Huawei B818",
    "Zyxel VMG8825",
    "D-Link DSL-3788",
    "Sercomm FG1000B",
    "ExampleNet Hub 3",
)
PRINTERS = ("HP DeskJet 2720", "Epson EcoTank ET-2810", "Canon PIXMA TS5150", "Brother DCP-L2530")
TVS = ("Samsung", "LG", "Sony Bravia", "Hisense", "Philips")
OPTIONS = ("Chiamate illimitate", "IP statico", "Assistenza Premium", "Wi-Fi Extender")
FAMILY_DOMAINS = {
    # domain -> mail provider (whose servers and DKIM show in the trace headers)
    "gmail.com": "google",
    "libero.it": "italiaonline",
    "virgilio.it": "italiaonline",
    "hotmail.it": "microsoft",
    "outlook.it": "microsoft",
    "live.it": "microsoft",
    "yahoo.it": "yahoo",
    "alice.it": "tim",
    "tim.it": "tim",
    "tiscali.it": "tiscali",
    "icloud.com": "apple",
}
EN_DOMAINS = {
    "gmail.com": "google",
    "outlook.com": "microsoft",
    "yahoo.co.uk": "yahoo",
    "icloud.com": "apple",
    "gmx.de": "gmx",
    "proton.me": "proton",
}
PDF_NAMES = ("contratto firmato.pdf", "ricevuta_pagamento.pdf", "bolletta_già_pagata.pdf")
PDF_HEAD = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
PDF_TAIL = b"\n%%EOF\n"
PNG_NAMES = ("speedtest.png", "foto_router.png", "schermata_errore.png", "image001.png")
PNG_HEAD = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x03\x20\x00\x00\x02\x58\x08\x06\x00\x00\x00"
)
PNG_TAIL = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# Latin-1 has no euro sign or typographic quotes: what a Latin-1 mail program sends instead.
LATIN1_FALLBACK = (
    ("€", "EUR"),
    ("’", "'"),
    ("‘", "'"),
    ("“", '"'),
    ("”", '"'),
    ("–", "-"),
    ("—", "-"),
    ("…", "..."),
)


# --------------------------------------------------------------------------- mail programs


@dataclass(frozen=True)
class Client:
    """A mail program and how it writes: Message-ID and boundary shapes, reply prefixes,
    charset and transfer encoding, encoded-word flavour, HTML style and phone footer."""

    key: str
    weight: float
    agent: tuple[str, str] | None  # ("X-Mailer", "...") or ("User-Agent", "...")
    html_share: float
    latin1_share: float
    cte: str  # preferred transfer encoding for non-ASCII text
    words: str  # "Q" or "B" for RFC 2047 subjects and names
    wraps: bool  # hard-wraps plain text at 72 columns
    prefix: dict[str, str]
    charset_label: str  # spelling of utf-8 in its headers
    footer: dict[str, str] = field(default_factory=dict)
    domains: tuple[str, ...] = ()  # family mail domains it is typically used with


RE = {"it": "Re: ", "en": "Re: "}
CLIENTS: tuple[Client, ...] = (
    Client(
        key="gmail",
        weight=34,
        agent=None,
        html_share=1.0,
        latin1_share=0.0,
        cte="quoted-printable",
        words="B",
        wraps=False,
        prefix=RE,
        charset_label="UTF-8",
        domains=("gmail.com",),
    ),
    Client(
        key="outlook",
        weight=20,
        agent=("X-Mailer", "Microsoft Outlook 16.0"),
        html_share=1.0,
        latin1_share=0.6,
        cte="quoted-printable",
        words="Q",
        wraps=False,
        prefix={"it": "R: ", "en": "RE: "},
        charset_label="utf-8",
        footer={"it": "Scarica Outlook per Android", "en": "Get Outlook for Android"},
        domains=("hotmail.it", "outlook.it", "live.it", "outlook.com", "libero.it", "alice.it"),
    ),
    Client(
        key="thunderbird",
        weight=10,
        agent=("User-Agent", "Mozilla Thunderbird"),
        html_share=0.3,
        latin1_share=0.0,
        cte="8bit",
        words="Q",
        wraps=True,
        prefix=RE,
        charset_label="UTF-8",
        domains=("libero.it", "tiscali.it", "gmx.de", "proton.me", "gmail.com"),
    ),
    Client(
        key="apple",
        weight=14,
        agent=("X-Mailer", "iPhone Mail (21E236)"),
        html_share=0.9,
        latin1_share=0.0,
        cte="quoted-printable",
        words="Q",
        wraps=False,
        prefix=RE,
        charset_label="utf-8",
        footer={"it": "Inviato da iPhone", "en": "Sent from my iPhone"},
        domains=("icloud.com", "gmail.com", "libero.it"),
    ),
    Client(
        key="android",
        weight=8,
        agent=("X-Mailer", "Samsung Mobile Email"),
        html_share=0.7,
        latin1_share=0.0,
        cte="base64",
        words="B",
        wraps=False,
        prefix={"it": "R: ", "en": "Re: "},
        charset_label="UTF-8",
        footer={"it": "Inviato dal mio Galaxy", "en": "Sent from my Galaxy"},
        domains=("gmail.com", "libero.it", "virgilio.it", "yahoo.it", "yahoo.co.uk"),
    ),
    Client(
        key="webmail",
        weight=14,
        agent=("X-Mailer", "Libero Mail"),
        html_share=0.4,
        latin1_share=0.7,
        cte="quoted-printable",
        words="Q",
        wraps=False,
        prefix=RE,
        charset_label="UTF-8",
        domains=("libero.it", "virgilio.it", "alice.it", "tim.it", "tiscali.it"),
    ),
)
CLIENT = {c.key: c for c in CLIENTS}
BUSINESS_SHARE = 0.22
# A business's mail provider decides which programs its staff write with.
BUSINESS_CLIENTS = {
    "workspace": ("gmail", "gmail", "apple", "android"),
    "microsoft": ("outlook", "outlook", "outlook", "apple"),
    "own": ("outlook", "thunderbird"),
}

# Where each provider's mail comes from: trace host, address prefix, DKIM domain and selector
# ("" domain: the sender's own domain signs; None selector: no DKIM signature).
PROVIDERS: dict[str, tuple[str, str, str, str | None]] = {
    "google": ("mail-wr1-f{n}.google.com", "209.85.221", "gmail.com", "20230601"),
    "workspace": ("mail-ej1-f{n}.google.com", "209.85.218", "", "google"),
    "microsoft": (
        "mail-am6eur05on20{n}.outbound.protection.outlook.com",
        "40.107.22",
        "",
        "selector1",
    ),
    "italiaonline": ("smtp-{n}.iol.it", "213.209.10", "", "s2021"),
    "yahoo": ("sonic3{n}-20.consmr.mail.ir2.yahoo.com", "77.238.176", "", "s2048"),
    "tim": ("smtp{n}.alice.it", "82.57.200", "", None),
    "tiscali": ("smtp{n}.tiscali.it", "213.205.33", "", "smtp"),
    "apple": ("qs51p00im-qukt01{n}.me.com", "17.57.155", "icloud.com", "1a1hai"),
    "gmx": ("mout.gmx.net", "212.227.15", "gmx.de", "badeba3b8450"),
    "proton": ("mail-4{n}.protonmail.ch", "185.70.43", "proton.me", "protonmail3"),
    "own": ("mail.{domain}", "93.62", "", None),
}


# --------------------------------------------------------------------------- people and mail


@dataclass(frozen=True, slots=True)
class Customer:
    """Someone who writes to support, with what they quote when asked (code, line, router)."""

    name: str
    addr: str
    lang: str
    client: Client
    provider: str
    company: str
    domain: str  # web domain of the company ("" for private customers)
    code: str
    line: str
    mobile: str
    router: str
    street: str
    city: tuple[str, str, str]
    signature: str
    disclaimer: bool
    tz: tzinfo


@dataclass(frozen=True, slots=True)
class Record:
    """An earlier generated mail, kept so later ones can answer it."""

    message_id: str  # with angle brackets
    references: tuple[str, ...]
    subject: str
    text: str
    when: datetime
    customer: Customer
    topic: Topic
    case: int
    thread_index: str | None


@dataclass(frozen=True, slots=True)
class Sample:
    """One generated message and what it was meant to be."""

    raw: bytes
    message_id: str
    kind: str  # "new", "reply" or "auto"
    multipart: bool
    charset: str
    in_reply_to: str | None
    envelope_from: str  # "" for the null sender
    received: datetime


@dataclass
class Attachment:
    filename: str
    content_type: str
    magic: bytes
    trailer: bytes
    size: int


@dataclass
class Draft:
    """Everything a message will say, before MIME. `_fit` grows or trims `paste`, `quote` and
    the attachment until the rendered size lands on the target."""

    kind: str  # "new", "reply" or "auto"
    customer: Customer
    lang: str
    when: datetime
    subject: str  # as meant, before any encoding
    topic: Topic
    case: int  # the case number support gave the thread
    charset: str  # "utf-8" or "iso-8859-1"
    html: bool
    closing: list[tuple[str, str]]
    paste_kind: str
    boundaries: tuple[str, str]
    body: list[tuple[str, str]] = field(default_factory=list)  # ("p", paragraph) | ("l", lines)
    headers: list[tuple[str, str]] = field(default_factory=list)
    message_id: str = ""
    references: tuple[str, ...] = ()
    in_reply_to: str = ""
    thread_index: str | None = None
    envelope_from: str = ""  # "" for the null sender
    paste: list[str] = field(default_factory=list)
    quote_head: str = ""
    quote: str = ""  # the quoted mail's text, not yet prefixed
    attachments: list[Attachment] = field(default_factory=list)
    text: str = ""  # the text/plain body as last rendered


def _record(d: Draft) -> Record:
    return Record(
        message_id=d.message_id,
        references=d.references,
        subject=d.subject,
        text=_trim(d.text, QUOTE_KEEP),
        when=d.when,
        customer=d.customer,
        topic=d.topic,
        case=d.case,
        thread_index=d.thread_index,
    )


# --------------------------------------------------------------------------- MIME output


class _Prefolded(Compat32):
    """A compat32 policy that writes header values as given (already folded and encoded).

    Values may hold LF continuations; they become the policy's line separator."""

    def fold_binary(self, name: str, value: str) -> bytes:
        return self.fold(name, value).encode("ascii")

    def fold(self, name: str, value: str) -> str:
        return f"{name}: {value.replace(chr(10), self.linesep)}{self.linesep}"


POLICY = _Prefolded(linesep="\r\n", mangle_from_=False)


@dataclass
class Part:
    """A MIME entity: header fields as they go on the wire (LF continuations), and either its
    encoded body (LF line ends) or its sub-parts."""

    headers: list[tuple[str, str]]
    payload: bytes | list[Part]
    preamble: str | None = None


def to_message(part: Part) -> Message:
    """The same entity as a stdlib `email.message.Message` on `POLICY`.

    This is the reference form: `BytesGenerator` writes it byte for byte like `serialize`.
    Bulk generation writes directly because the generator's per-part work (policy clones,
    header re-parsing for the content type and boundary) is most of the cost of a mail."""
    msg = Message(policy=POLICY)
    for name, value in part.headers:
        msg[name] = value
    msg.preamble = part.preamble
    if isinstance(part.payload, bytes):  # 8-bit bodies travel as surrogate escapes
        msg.set_payload(part.payload.decode("ascii", "surrogateescape"))
    else:
        for child in part.payload:
            msg.attach(to_message(child))
    return msg


def flatten(msg: Message) -> bytes:
    """A `Message` built on `POLICY`, written by the stdlib generator with CRLF line ends."""
    out = BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=POLICY).flatten(msg, linesep="\r\n")
    return out.getvalue()


def serialize(part: Part) -> bytes:
    """The entity as CRLF bytes, laid out exactly as `flatten(to_message(part))`."""
    return _lay_out(part).replace(b"\n", b"\r\n")


def _lay_out(part: Part) -> bytes:
    head = "".join(f"{name}: {value}\n" for name, value in part.headers) + "\n"
    if isinstance(part.payload, bytes):
        return head.encode("ascii") + part.payload
    boundary = _BOUNDARY.search(head)
    assert boundary is not None, "a multipart entity needs a boundary parameter"
    dash = b"--" + boundary.group(1).encode("ascii")
    chunks = [head.encode("ascii")]
    if part.preamble is not None:
        chunks += [part.preamble.encode("ascii"), b"\n"]
    chunks.append(dash + b"\n")
    chunks.append((b"\n" + dash + b"\n").join(_lay_out(child) for child in part.payload))
    chunks.append(b"\n" + dash + b"--\n")
    return b"".join(chunks)


_BOUNDARY = re.compile(r'boundary="([^"]+)"')


def encode_words(text: str, charset: str, method: str, room: int = 66) -> str:
    """A header value as RFC 2047 encoded words (Q or B), folded between words.

    Each chunk of whole words becomes one encoded word short enough for a 76-column line;
    `email.header.Header` would do the same but costs a quadratic per-character search.

    >>> encode_words("Perché?", "UTF-8", "Q")
    '=?UTF-8?q?Perch=C3=A9=3F?='
    """
    if text.isascii():
        return _fold_ascii(text, room)
    encode = quoprimime.header_encode if method == "Q" else base64mime.header_encode
    codec = "latin-1" if charset.lower() == "iso-8859-1" else charset
    words: list[str] = []
    chunk = ""
    for token in re.findall(r"\S+\s*", text):
        if chunk and len(encode((chunk + token).encode(codec, "replace"), charset)) > room:
            words.append(encode(chunk.encode(codec, "replace"), charset))
            chunk = token
        else:
            chunk += token
    words.append(encode(chunk.encode(codec, "replace"), charset))
    return "\n ".join(words)


def _fold_ascii(text: str, room: int) -> str:
    if len(text) <= room:
        return text
    return "\n ".join(textwrap.wrap(text, room, break_long_words=False, break_on_hyphens=False))


def _base64_lines(data: bytes) -> bytes:
    """Base64 in 76-column lines, as `base64.encodebytes` writes it (that one encodes each
    57-byte line in a Python loop; one C call and slicing is several times faster)."""
    flat = binascii.b2a_base64(data, newline=False)
    return b"".join([flat[i : i + 76] + b"\n" for i in range(0, len(flat), 76)])


def _text_payload(text: str, charset: str, preferred: str) -> tuple[bytes, str]:
    """(body, Content-Transfer-Encoding) the way the client would encode `text`: 7bit when
    plain ASCII allows it, else its preferred encoding (8bit only while lines stay short)."""
    data = text.encode("latin-1" if charset == "iso-8859-1" else "utf-8", "replace")
    if preferred == "base64":
        return _base64_lines(data), "base64"
    longest = max(map(len, text.split("\n")))
    if data.isascii() and longest <= 998:
        return data, "7bit"
    if preferred == "8bit" and 2 * longest <= 998:
        return data, "8bit"
    return binascii.b2a_qp(data), "quoted-printable"


def _leaf(
    content_type: str, payload: bytes, cte: str, extra: Sequence[tuple[str, str]] = ()
) -> Part:
    return Part(
        [("Content-Type", content_type), *extra, ("Content-Transfer-Encoding", cte)], payload
    )


def _text_leaf(d: Draft, subtype: str, text: str) -> Part:
    label = "iso-8859-1" if d.charset == "iso-8859-1" else d.customer.client.charset_label
    payload, cte = _text_payload(text, d.charset, d.customer.client.cte)
    return _leaf(f'text/{subtype}; charset="{label}"', payload, cte)


def _multipart(subtype: str, boundary: str, parts: list[Part], d: Draft) -> Part:
    preamble = None
    if d.customer.client.key in ("thunderbird", "outlook"):
        preamble = "This is a multi-part message in MIME format."
    return Part(
        [("Content-Type", f'multipart/{subtype};\n boundary="{boundary}"')], parts, preamble
    )


def _attachment_leaf(att: Attachment, rng: random.Random) -> Part:
    data = att.magic + rng.randbytes(max(0, att.size - len(att.magic) - len(att.trailer)))
    if att.filename.isascii():
        name, disposition = f'name="{att.filename}"', f'attachment; filename="{att.filename}"'
    else:
        encoded = encode_rfc2231(att.filename, "utf-8")
        name, disposition = f"name*={encoded}", f"attachment;\n filename*={encoded}"
    payload = _base64_lines(data + att.trailer)
    extra = [("Content-Disposition", disposition)]
    return _leaf(f"{att.content_type};\n {name}", payload, "base64", extra)


def _text_body(d: Draft) -> Part:
    """text/plain alone, or with its HTML twin in multipart/alternative."""
    if not d.html:
        return _text_leaf(d, "plain", plain_text(d))
    parts = [_text_leaf(d, "plain", plain_text(d)), _text_leaf(d, "html", html_text(d))]
    return _multipart("alternative", d.boundaries[0], parts, d)


def entity(d: Draft, seed: int) -> Part:
    """The draft as a MIME tree: trace and envelope headers, then the body's."""
    body = _text_body(d)
    if d.attachments:
        rng = random.Random(seed)  # the same bytes on every re-render of this draft
        parts = [body, *(_attachment_leaf(a, rng) for a in d.attachments)]
        body = _multipart("mixed", d.boundaries[1], parts, d)
    return Part([*d.headers, *body.headers], body.payload, body.preamble)


def render(d: Draft, seed: int) -> bytes:
    return serialize(entity(d, seed))


# --------------------------------------------------------------------------- text and HTML


def _latin1(text: str) -> str:
    """`text` as a Latin-1 mail program would send it (str.translate is slow with a dict)."""
    try:
        text.encode("latin-1")
        return text
    except UnicodeEncodeError:
        pass
    for char, fallback in LATIN1_FALLBACK:
        text = text.replace(char, fallback)
    return text.encode("latin-1", "replace").decode("latin-1")


def _quote_lines(text: str) -> str:
    """`text` as a quoted block: "> " before each line, ">" before already quoted ones and
    alone on blank ones (string operations: a per-line loop costs more than the rest)."""
    quoted = "> " + text.replace("\n", "\n> ")
    quoted = quoted.replace("> >", ">>").replace("> \n", ">\n")
    return quoted[:-1] if quoted.endswith("> ") else quoted


@functools.lru_cache(maxsize=4096)
def _wrap(text: str) -> str:
    """A paragraph hard-wrapped at 72 columns; signatures and disclaimers recur, so cached."""
    return textwrap.fill(text, 72, break_long_words=False, break_on_hyphens=False)


def _plain_block(kind: str, text: str, wraps: bool) -> str:
    return _wrap(text) if kind == "p" and wraps else text


def _sections(d: Draft) -> list[tuple[str, str]]:
    """The blocks above the quote, in order: new text, pasted material (a log goes before
    the sign-off, a legal notice after the signature), sign-off and signature."""
    pasted: list[tuple[str, str]] = []
    if d.paste:
        intro = PHRASES[d.lang].paste_intro[d.paste_kind]
        pasted = [("p", intro)] if intro else []
        pasted.append(("l" if d.paste_kind == "legal" else "pre", "\n".join(d.paste)))
    if d.paste_kind == "legal":
        return [*d.body, *d.closing, *pasted]
    return [*d.body, *pasted, *d.closing]


def plain_text(d: Draft) -> str:
    """The text/plain body: the sections, then the quoted mail."""
    wraps = d.customer.client.wraps
    chunks = [_plain_block(kind, text, wraps) for kind, text in _sections(d)]
    if d.quote:
        chunks.append(d.quote_head + "\n" + _quote_lines(d.quote))
    text = "\n\n".join(chunks) + "\n"
    d.text = _latin1(text) if d.charset == "iso-8859-1" else text
    return d.text


OUTLOOK_HEAD = (
    '<html xmlns:v="urn:schemas-microsoft-com:vml" xmlns:o="urn:schemas-microsoft-com:office:'
    'office" xmlns:w="urn:schemas-microsoft-com:office:word" xmlns:m="http://schemas.microsoft'
    '.com/office/2004/12/omml" xmlns="http://www.w3.org/TR/REC-html40">\n<head>\n<meta http-equiv'
    '="Content-Type" content="text/html; charset={charset}">\n<meta name="Generator" content='
    '"Microsoft Word 15 (filtered medium)">\n<style><!--\n/* Font Definitions */\n@font-face\n'
    '\t{{font-family:"Cambria Math";\n\tpanose-1:2 4 5 3 5 4 6 3 2 4;}}\n@font-face\n\t{{font-'
    "family:Calibri;\n\tpanose-1:2 15 5 2 2 2 4 3 2 4;}}\n/* Style Definitions */\np.MsoNormal, "
    'li.MsoNormal, div.MsoNormal\n\t{{margin:0cm;\n\tfont-size:11.0pt;\n\tfont-family:"Calibri",'
    "sans-serif;\n\tmso-fareast-language:EN-US;}}\na:link, span.MsoHyperlink\n\t{{mso-style-"
    "priority:99;\n\tcolor:#0563C1;\n\ttext-decoration:underline;}}\nspan.StileMessaggioDiPosta"
    'Elettronica17\n\t{{mso-style-type:personal-compose;\n\tfont-family:"Calibri",sans-serif;\n'
    "\tcolor:windowtext;}}\n.MsoChpDefault\n\t{{mso-style-type:export-only;\n\tfont-family:"
    '"Calibri",sans-serif;\n\tmso-fareast-language:EN-US;}}\n@page WordSection1\n\t{{size:612.0pt'
    " 792.0pt;\n\tmargin:70.85pt 2.0cm 2.0cm 2.0cm;}}\ndiv.WordSection1\n\t{{page:WordSection1;}}"
    '\n--></style>\n</head>\n<body lang="{lang}" link="#0563C1" vlink="#954F72" style="word'
    '-wrap:break-word">\n<div class="WordSection1">\n'
)


@dataclass(frozen=True)
class HtmlStyle:
    head: str
    para: str
    quote: str
    tail: str


HTML_STYLES = {
    "gmail": HtmlStyle(
        '<div dir="ltr">\n',
        "<div>{}</div><div><br></div>\n",
        '</div><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">{}<br></div>\n'
        '<blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;border-left:1px solid '
        'rgb(204,204,204);padding-left:1ex">\n{}</blockquote></div>\n',
        "</div>\n",
    ),
    "outlook": HtmlStyle(
        OUTLOOK_HEAD,
        '<p class="MsoNormal">{}<o:p></o:p></p>\n<p class="MsoNormal"><o:p>&nbsp;</o:p></p>\n',
        '<div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm">\n'
        '<p class="MsoNormal"><b>{}</b><o:p></o:p></p></div>\n<div style="border:none;border-'
        'left:solid #CCCCCC 1.0pt;padding:0cm 0cm 0cm 6.0pt">\n<p class="MsoNormal">{}</p></div>\n',
        "</div>\n</body>\n</html>\n",
    ),
    "apple": HtmlStyle(
        '<html><head><meta http-equiv="content-type" content="text/html; charset={charset}">'
        '</head><body dir="auto">\n',
        '<div dir="ltr">{}</div><div dir="ltr"><br></div>\n',
        '<div dir="ltr"><br><blockquote type="cite">{}<br><br></blockquote></div>\n'
        '<blockquote type="cite"><div dir="ltr">{}</div></blockquote>\n',
        "</body></html>\n",
    ),
    "plain": HtmlStyle(
        '<html>\n<head>\n<meta http-equiv="Content-Type" content="text/html; charset={charset}">\n'
        '</head>\n<body lang="{lang}">\n',
        "<p>{}</p>\n",
        '<div class="moz-cite-prefix">{}<br></div>\n<blockquote type="cite">\n{}</blockquote>\n',
        "</body>\n</html>\n",
    ),
}


def _html_block(style: HtmlStyle, kind: str, text: str) -> str:
    escaped = html.escape(text, quote=False)
    if kind == "pre":
        return f'<pre style="font-family:monospace">{escaped}</pre>\n'
    return style.para.format(escaped.replace("\n", "<br>\n"))


def html_text(d: Draft) -> str:
    """The text/html alternative, in the markup the sender's program produces."""
    style = HTML_STYLES.get(d.customer.client.key, HTML_STYLES["plain"])
    label = "iso-8859-1" if d.charset == "iso-8859-1" else "utf-8"
    out = [style.head.format(charset=label, lang="IT" if d.lang == "it" else "EN-US")]
    out.extend(_html_block(style, kind, text) for kind, text in _sections(d))
    if d.quote:
        quoted = html.escape(d.quote, quote=False).replace("\n", "<br>\n")
        out.append(style.quote.format(html.escape(d.quote_head, quote=False), quoted))
    out.append(style.tail)
    text = "".join(out)
    return _latin1(text) if d.charset == "iso-8859-1" else text


# --------------------------------------------------------------------------- the generator


class _Values(dict[str, str]):
    """Placeholder values for one mail: the customer's own, plus anything else drawn on first
    use, so a template pays only for what it names."""

    def __init__(self, rng: random.Random, lang: str, customer: Customer, when: datetime):
        super().__init__(_customer_values(customer))
        self.rng = rng
        self.lang = lang
        self.when = when

    def __missing__(self, key: str) -> str:
        value = DRAWS[key](self.rng, PHRASES[self.lang], self.when)
        self[key] = value
        return value


def _customer_values(c: Customer) -> dict[str, str]:
    local = c.addr.partition("@")[0]
    domain = c.domain or c.addr.partition("@")[2]
    return {
        "name": c.name,
        "first": c.name.split()[0],
        "company": c.company,
        "domain": c.domain or f"{_ascii_local(c.name)}.it",
        "email": c.addr,
        "pec": f"{local}@pec.{domain}" if c.domain else f"{local}@pec.examplenet.it",
        "code": c.code,
        "line": c.line,
        "mobile": c.mobile,
        "router": c.router,
        "street": c.street,
        "city": c.city[0],
        "cap": c.city[1],
        "prov": c.city[2],
    }


def _money(amount: float, p: Phrases) -> str:
    return f"€ {amount:.2f}".replace(".", ",") if p is IT else f"€{amount:.2f}"


def _date_words(day: datetime, p: Phrases) -> str:
    return f"{day.day} {p.months[day.month - 1]}"


Draw = Callable[[random.Random, Phrases, datetime], str]
DRAWS: dict[str, Draw] = {
    "since": lambda r, p, w: r.choice(p.since),
    "Since": lambda r, p, w: r.choice(p.since).capitalize(),
    "down": lambda r, p, w: str(r.randint(2, 60)),
    "down_small": lambda r, p, w: f"{r.uniform(0.3, 4):.1f}",
    "plan": lambda r, p, w: r.choice(("100", "200", "1000", "2500")),
    "ping": lambda r, p, w: str(r.randint(180, 900)),
    "rssi": lambda r, p, w: str(-r.randint(95, 120)),
    "invoice": lambda r, p, w: f"{w.year}/{r.randint(1, 99999):07d}",
    "amount": lambda r, p, w: _money(r.uniform(40, 180), p),
    "amount_big": lambda r, p, w: _money(r.uniform(180, 640), p),
    "fee": lambda r, p, w: _money(r.choice((24.9, 26.9, 29.9, 34.9, 39.9)), p),
    "month": lambda r, p, w: p.months[(w.month - 1 - r.randint(0, 2)) % 12],
    "iban": lambda r, p, w: (
        f"IT{r.randint(10, 99)}X0{r.randint(1000, 9999)}5{r.randint(10**14, 10**15 - 1)}"
    ),
    "option": lambda r, p, w: r.choice(OPTIONS),
    "renewal": lambda r, p, w: _date_words(w + timedelta(days=r.randint(3, 40)), p),
    "back": lambda r, p, w: _date_words(w + timedelta(days=r.randint(2, 21)), p),
    "years": lambda r, p, w: str(r.randint(2, 15)),
    "days": lambda r, p, w: str(r.randint(2, 12)),
    "hour": lambda r, p, w: r.choice(("17", "18:30", "13", "9", "19")),
    "printer": lambda r, p, w: r.choice(PRINTERS),
    "pct": lambda r, p, w: str(r.randint(8, 96)),
    "stop": lambda r, p, w: r.choice(
        ("CRITICAL_PROCESS_DIED", "0x0000007E", "IRQL_NOT_LESS_OR_EQUAL")
    ),
    "tv": lambda r, p, w: r.choice(TVS),
    "kwh": lambda r, p, w: f"{r.randint(1000, 60000)}",
    "colleague": lambda r, p, w: f"{r.choice(IT_FIRST)} {r.choice(IT_LAST)}",
    "new_street": lambda r, p, w: f"{r.choice(STREETS)} {r.randint(1, 180)}",
    "new_city": lambda r, p, w: r.choice(CITIES)[0],
}


def _ascii_local(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z]", "", folded.lower())


def _phone(r: random.Random) -> str:
    return f"{r.choice(AREA_CODES)} {r.randint(100000, 9999999)}"


def _mobile(r: random.Random) -> str:
    return f"3{r.randint(20, 93)} {r.randint(100, 999)} {r.randint(1000, 9999)}"


class Generator:
    """Draws one mail after another; customers and recent mail carry over between calls."""

    def __init__(self, seed: int, now: datetime):
        self.rng = random.Random(seed)
        self.customers: list[Customer] = []
        self.recent: deque[Record] = deque(maxlen=RECENT)
        self.seen_ids: set[str] = set()
        self.cases = 1000
        self.pastes = {kind: _paste_pool(self.rng, kind, now) for kind in PASTE_KINDS}

    # ---- people

    def customer(self, lang: str | None = None) -> Customer:
        """A repeat customer now and then, else someone new."""
        if lang is None and self.customers and self.rng.random() < REPEAT_SHARE:
            return self.rng.choice(self.customers)
        new = self._new_customer(lang or ("en" if self.rng.random() < ENGLISH_SHARE else "it"))
        self.customers.append(new)
        return new

    def _new_customer(self, lang: str) -> Customer:
        r = self.rng
        name = r.choice(EN_NAMES) if lang == "en" else f"{r.choice(IT_FIRST)} {r.choice(IT_LAST)}"
        first, last = _ascii_local(name.split()[0]), _ascii_local(name.split()[-1])
        if r.random() < BUSINESS_SHARE:
            company = r.choice(COMPANIES).format(
                last=r.choice(IT_LAST), first=r.choice(IT_FIRST), city=r.choice(CITIES)[0]
            )
            domain = f"{_ascii_local(company.split(' S.')[0])[:24]}.it"
            provider = r.choice(tuple(BUSINESS_CLIENTS))
            client = CLIENT[r.choice(BUSINESS_CLIENTS[provider])]
            local = r.choice(("info", "amministrazione", first, f"{first[0]}.{last}"))
            addr = f"{local}@{domain}"
        else:
            company, domain = "", ""
            pool = EN_DOMAINS if lang == "en" else FAMILY_DOMAINS
            clients = [c for c in CLIENTS if any(d in pool for d in c.domains)]
            client = r.choices(clients, [c.weight for c in clients])[0]
            mail_domain = r.choice([d for d in client.domains if d in pool])
            provider = pool[mail_domain]
            addr = f"{self._local_part(first, last)}@{mail_domain}"
        return self._person(lang, name, addr, client, provider, company, domain)

    def _person(
        self,
        lang: str,
        name: str,
        addr: str,
        client: Client,
        provider: str,
        company: str,
        domain: str,
    ) -> Customer:
        r = self.rng
        city = r.choice(CITIES)
        street = f"{r.choice(STREETS)} {r.randint(1, 180)}"
        phone, mobile = _phone(r), _mobile(r)
        return Customer(
            name=name,
            addr=addr,
            lang=lang,
            client=client,
            provider=provider,
            company=company,
            domain=domain,
            code=str(r.randint(40_000_000, 49_999_999)),
            line=phone,
            mobile=mobile,
            router=r.choice(ROUTERS),
            street=street,
            city=city,
            signature=self._signature(lang, name, company, domain, street, city, phone, mobile),
            disclaimer=bool(company) or r.random() < 0.08,
            tz=ROME if r.random() < 0.9 else UTC,
        )

    def _local_part(self, first: str, last: str) -> str:
        r = self.rng
        shape = r.randrange(5)
        if shape == 0:
            return f"{first}.{last}"
        if shape == 1:
            return f"{first[0]}{last}{r.randint(1, 99)}"
        if shape == 2:
            return f"{last}.{first}{r.randint(60, 99)}"
        if shape == 3:
            return f"{first}{last}"
        return f"{first}_{last}{r.randint(1, 9)}"

    def _signature(
        self,
        lang: str,
        name: str,
        company: str,
        domain: str,
        street: str,
        city: tuple[str, str, str],
        phone: str,
        mobile: str,
    ) -> str:
        r = self.rng
        p = PHRASES[lang]
        if company:
            vat = f"P.IVA {r.randint(10**10, 10**11 - 1):011d}"
            return (
                f"{name}\n{r.choice(p.roles)}\n{company}\n{street} - {city[1]} {city[0]} "
                f"({city[2]})\nTel. {phone} | Cell. {mobile}\n{vat}\nwww.{domain}"
            )
        shape = r.randrange(3)
        if shape == 0:
            return f"{name}\nCell. {mobile}"
        if shape == 1:
            return f"{name}\n{street}\n{city[1]} {city[0]} ({city[2]})\nTel. {phone}"
        return ""

    # ---- one mail

    def next(self, when: datetime) -> Sample:
        roll = self.rng.random()
        if roll < AUTO_SHARE:
            d = self._auto(when)
        elif roll < AUTO_SHARE + REPLY_SHARE and self.recent:
            d = self._reply(when)
        else:
            d = self._new(when)
        raw = self._fit(d)
        if d.kind != "auto":
            self.recent.append(_record(d))
        return Sample(
            raw=raw,
            message_id=d.message_id,
            kind=d.kind,
            multipart=d.html or bool(d.attachments),
            charset=d.charset,
            in_reply_to=d.in_reply_to or None,
            envelope_from=d.envelope_from,
            received=when,
        )

    def _new(self, when: datetime) -> Draft:
        r = self.rng
        customer = self.customer()
        pool = OUT_OF_SCOPE if r.random() < OUT_OF_SCOPE_SHARE else IN_SCOPE
        topic = r.choices(pool, [_topic_weight(t, bool(customer.company)) for t in pool])[0]
        v = _Values(r, customer.lang, customer, when)
        self.cases += 1
        subject = _sentence_case(r.choice(topic.subjects[customer.lang]).format_map(v))
        d = self._draft("new", customer, when, subject, topic, self.cases, v)
        d.body = self._new_body(topic, customer.lang, v)
        if r.random() < ATTACHMENT_SHARE:
            d.attachments.append(self._attachment(topic, customer.lang, when))
        self._headers(d)
        return d

    def _new_body(self, topic: Topic, lang: str, v: _Values) -> list[tuple[str, str]]:
        """Greeting, the problem (with an introduction now and then), perhaps the details
        support will ask for anyway, what was tried and what is wanted."""
        r = self.rng
        p = PHRASES[lang]
        problems = topic.problems[lang]
        intros = p.intros if v["company"] else [i for i in p.intros if "{company}" not in i]
        sentences = [r.choice(intros)] if r.random() < 0.5 else []
        sentences += r.sample(problems, min(len(problems), r.randint(1, 3)))
        body = [("l", r.choice(p.greetings)), ("p", _sentence_case(" ".join(sentences)))]
        if r.random() < 0.45:
            body.append(("l", "\n".join(r.sample(p.details, r.randint(2, 4)))))
        tail = [r.choice(p.tried)] if r.random() < 0.6 else []
        tail.append(r.choice(p.requests))
        body.append(("p", " ".join(tail)))
        return [(kind, text.format_map(v)) for kind, text in body]

    def _reply(self, when: datetime) -> Draft:
        """A follow-up to a recent mail, mostly by its author, quoting it below the new text."""
        r = self.rng
        k = len(self.recent)
        parent = self.recent[r.randrange(k)]
        customer = parent.customer if r.random() < 0.85 else self.customer(parent.customer.lang)
        lang = customer.lang
        v = _Values(r, lang, customer, when)
        subject = customer.client.prefix[lang] + _strip_prefix(parent.subject)
        d = self._draft("reply", customer, when, subject, parent.topic, parent.case, v)
        p = PHRASES[lang]
        if r.random() < 0.15:
            sentences = [r.choice(p.thanks)]
        else:
            sentences = r.sample(p.follow_ups, r.randint(1, 2))
            if r.random() < 0.4:
                sentences.append(r.choice(parent.topic.problems[lang]))
        text = " ".join(_sentence_case(x) for x in sentences).format_map(v)
        d.body = [("l", r.choice(p.greetings)), ("p", text)] if r.random() < 0.7 else [("p", text)]
        d.quote_head = _attribution(parent, customer.client.key, lang)
        d.quote = parent.text
        if r.random() < ATTACHMENT_SHARE / 2:
            d.attachments.append(self._attachment(parent.topic, lang, when))
        self._headers(d, parent)
        return d

    def _auto(self, when: datetime) -> Draft:
        """An out-of-office answer to the acknowledgement support sent for an earlier mail."""
        r = self.rng
        parent = r.choice(self.recent) if self.recent else None
        customer = parent.customer if parent else self.customer()
        lang = customer.lang
        p = PHRASES[lang]
        v = _Values(r, lang, customer, when)
        topic = parent.topic if parent else r.choice(IN_SCOPE)
        base = parent.subject if parent else r.choice(topic.subjects[lang]).format_map(v)
        case = parent.case if parent else self.cases
        acked = f"[{CASE_TAG} #{case}] {_strip_prefix(base)}"
        subject = r.choice(p.away_subjects).format(acked)
        d = self._draft("auto", customer, when, subject, topic, case, v)
        d.body = [("p", " ".join(p.away).format_map(v))]
        d.paste_kind = "legal"
        self._headers(d)
        return d

    # ---- shared parts

    def _draft(
        self,
        kind: str,
        c: Customer,
        when: datetime,
        subject: str,
        topic: Topic,
        case: int,
        v: _Values,
    ) -> Draft:
        r = self.rng
        client = c.client
        return Draft(
            kind=kind,
            customer=c,
            lang=c.lang,
            when=when,
            subject=subject,
            topic=topic,
            case=case,
            charset="iso-8859-1" if r.random() < client.latin1_share else "utf-8",
            html=r.random() < client.html_share,
            closing=self._closing(c, v),
            paste_kind=topic.paste,
            boundaries=(_boundary(r, client.key), _boundary(r, client.key)),
        )

    def _closing(self, c: Customer, v: _Values) -> list[tuple[str, str]]:
        r = self.rng
        p = PHRASES[c.lang]
        sign_off = c.name if r.random() < 0.6 else v["first"]
        closing = [("l", f"{r.choice(p.closings)}\n{sign_off}")]
        if c.signature:
            dash = "-- \n" if c.client.wraps else ""
            closing.append(("l", dash + c.signature))
        footer = c.client.footer.get(c.lang)
        if footer and r.random() < 0.6:
            closing.append(("l", footer))
        if c.disclaimer:
            closing.append(("p", p.disclaimer))
        return closing

    def _attachment(self, topic: Topic, lang: str, when: datetime) -> Attachment:
        """A small PDF (invoice, contract, ID card) or PNG (screenshot, photo of the router):
        the right magic bytes around random ones; `_fit` sets the size."""
        r = self.rng
        if r.random() < 0.5:
            month = PHRASES[lang].months[when.month - 1]
            names = [f"fattura_{month}_{when.year}.pdf", *PDF_NAMES]
            if topic.key in ("billing", "electricity", "move"):
                names.append("Documento d'identità.pdf")
            return Attachment(r.choice(names), "application/pdf", PDF_HEAD, PDF_TAIL, 400)
        t = when.astimezone(ROME)
        shot = f"Screenshot {t.year}-{t.month:02d}-{t.day:02d} alle {t.hour:02d}.{t.minute:02d}.png"
        return Attachment(r.choice([shot, *PNG_NAMES]), "image/png", PNG_HEAD, PNG_TAIL, 400)

    def _message_id(self, c: Customer, when: datetime) -> str:
        while True:
            mid = MESSAGE_IDS[c.client.key](self.rng, c, when)
            if mid not in self.seen_ids:
                self.seen_ids.add(mid)
                return mid

    def _headers(self, d: Draft, parent: Record | None = None) -> None:
        """Trace headers as the MX adds them, then the ones the sender's program wrote."""
        r = self.rng
        c = d.customer
        label = "iso-8859-1" if d.charset == "iso-8859-1" else c.client.charset_label
        d.message_id = self._message_id(c, d.when)
        null_sender = d.kind == "auto" and r.random() < 0.5
        d.envelope_from = "" if null_sender else c.addr
        subject = _latin1(d.subject) if d.charset == "iso-8859-1" else d.subject
        sender = formataddr((_name(d, c.name), c.addr), charset=_charset(label, c.client.words))
        d.headers = _trace(r, c, d.when, d.envelope_from)
        d.headers += [
            ("From", sender),
            ("To", _support_to(r)),
            ("Subject", encode_words(subject, label, c.client.words)),
            ("Date", format_datetime(d.when.astimezone(c.tz))),
            ("Message-ID", d.message_id),
        ]
        if d.kind == "new" and r.random() < 0.07:
            d.headers.append(("Cc", self._cc(c)))
        d.headers += _threading(r, d, parent, label)
        if c.client.agent:
            d.headers.append(c.client.agent)
        if d.kind == "auto":
            d.headers += _auto_headers(r, c)
        if c.client.key == "outlook":
            d.headers.append(("Content-Language", "it-IT" if d.lang == "it" else "en-US"))
        d.headers.append(("MIME-Version", "1.0 (1.0)" if c.client.key == "apple" else "1.0"))

    def _cc(self, c: Customer) -> str:
        r = self.rng
        name = f"{r.choice(IT_FIRST)} {r.choice(IT_LAST)}"
        domain = c.addr.partition("@")[2]
        local = _ascii_local(name.split()[0]) + "." + _ascii_local(name.split()[-1])
        return formataddr((name, f"{local}@{domain}"), charset="utf-8")

    # ---- size

    def _fit(self, d: Draft) -> bytes:
        """Render the draft at a size drawn for it, within MIN_SIZE..MAX_SIZE.

        The attachment, when there is one, absorbs the gap to the target; otherwise pasted
        material (logs, invoice lists, legal text) does. The gap is estimated from the text
        lengths (rendering twice would double the cost); when the estimate misses a bound,
        the measured size drives a correction."""
        r = self.rng
        low, high = (TARGET_LOW, 4_800) if d.kind == "auto" else (TARGET_LOW, TARGET_HIGH)
        target = int(low * (high / low) ** r.random())
        seed = r.getrandbits(32)
        gap = target - _estimate(d)
        if gap > 0 and d.attachments:
            d.attachments[-1].size += gap * 57 // 78
        elif gap > 0:
            self._add_paste(d, gap)
        raw = render(d, seed)
        for _ in range(8):
            if MIN_SIZE <= len(raw) <= MAX_SIZE:
                return raw
            if len(raw) < MIN_SIZE:
                self._add_paste(d, MIN_SIZE - len(raw) + 200)
            else:
                _shrink(d, len(raw) - MAX_SIZE + 400)
            raw = render(d, seed)
        raise RuntimeError(f"could not fit a {d.kind} mail in {MIN_SIZE}..{MAX_SIZE} bytes")

    def _add_paste(self, d: Draft, nbytes: int) -> None:
        pool = self.pastes[d.paste_kind]
        per_line = (pool.mean + 2) * _expansion(d)
        count = max(1, round(nbytes / per_line))
        start = 0 if d.paste_kind == "legal" else self.rng.randrange(len(pool.lines))
        lines = pool.lines[start : start + count]
        while len(lines) < count:
            lines += pool.lines[: count - len(lines)]
        d.paste.extend(lines)


GROWTH = {"base64": 1.37, "quoted-printable": 1.04}  # bytes per character, CRLF included


def _topic_weight(topic: Topic, business: bool) -> float:
    """Businesses write about their website and PEC box; households seldom have one."""
    if business:
        return topic.weight * BUSINESS_TOPICS.get(topic.key, 1.0)
    return topic.weight * (0.15 if topic.key in BUSINESS_TOPICS else 1.0)


def _expansion(d: Draft) -> float:
    """Bytes on the wire per character of pasted text (encoding, and the HTML copy)."""
    return GROWTH.get(d.customer.client.cte, 1.02) * (2.05 if d.html else 1.0)


def _estimate(d: Draft) -> int:
    """Roughly the rendered size, without rendering: header bytes, text length times the
    transfer encoding's growth (twice, plus markup, with an HTML copy), a fixed cost per
    MIME part, and the attachments."""
    blocks = sum(len(text) + 2 for _, text in d.body) + sum(len(t) + 2 for _, t in d.closing)
    text = blocks + sum(len(line) + 1 for line in d.paste) + len(d.quote_head)
    text += int(len(d.quote) * 1.05) + 2
    growth = GROWTH.get(d.customer.client.cte, 1.02)
    size = sum(len(name) + len(value) + 4 for name, value in d.headers) + 150
    if d.html:
        markup = len(HTML_STYLES.get(d.customer.client.key, HTML_STYLES["plain"]).head)
        text = 2 * text + markup + 40 * (len(d.body) + len(d.closing)) + 300
    size += int(text * growth)
    for att in d.attachments:
        size += att.size * 78 // 57 + 300
    return size


def _shrink(d: Draft, nbytes: int) -> None:
    """Remove about `nbytes` from the draft: pasted lines first, then quoted text, then the
    attachment; the new text itself is never cut."""
    chars = int(nbytes / _expansion(d)) + 1
    if d.paste:
        removed = 0
        while d.paste and removed < chars:
            removed += len(d.paste.pop()) + 1
    elif len(d.quote) > 200:
        d.quote = _trim(d.quote, max(0, len(d.quote) - chars))
    elif d.attachments:
        d.attachments.pop()
    else:
        d.closing = [block for block in d.closing if block[0] != "p"]


def _trim(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a line end."""
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit)
    return text[: cut if cut > 0 else limit]


def _name(d: Draft, name: str) -> str:
    return _latin1(name) if d.charset == "iso-8859-1" else name


def _sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:]


_PREFIX = re.compile(r"^(?:(?:re|r|fw|fwd|i|aw)\s*:\s*)+", re.IGNORECASE)


def _strip_prefix(subject: str) -> str:
    return _PREFIX.sub("", subject)


_CHARSETS: dict[tuple[str, str], Charset] = {}


def _charset(label: str, method: str) -> Charset:
    """A Charset that encodes display names the way the client does (Q or B)."""
    key = (label, method)
    if key not in _CHARSETS:
        cs = Charset(label)
        cs.header_encoding = QP if method == "Q" else BASE64
        _CHARSETS[key] = cs
    return _CHARSETS[key]


def _support_to(r: random.Random) -> str:
    roll = r.random()
    if roll < 0.55:
        return f"{SUPPORT_NAME} <{SUPPORT_ADDRESS}>"
    if roll < 0.97:
        return SUPPORT_ADDRESS
    return f'"ExampleNet" <{SUPPORT_ADDRESS.replace("assistenza", "Assistenza")}>'


def _threading(
    r: random.Random, d: Draft, parent: Record | None, label: str
) -> list[tuple[str, str]]:
    """In-Reply-To/References (to the parent, or for an auto-reply to support's
    acknowledgement), and Outlook's Thread-Topic/Thread-Index."""
    out: list[tuple[str, str]] = []
    if parent is not None:
        d.in_reply_to = parent.message_id
        d.references = (*parent.references, parent.message_id)[-12:]
    elif d.kind == "auto":
        d.in_reply_to = f"<{r.getrandbits(64):016x}.ack.{d.case}@examplenet.it>"
        d.references = (d.in_reply_to,)
    if d.in_reply_to:
        out += [("In-Reply-To", d.in_reply_to), ("References", "\n ".join(d.references))]
    if d.customer.client.key == "outlook":
        index = r.randbytes(22)
        if parent is not None and parent.thread_index:
            index = base64.b64decode(parent.thread_index) + r.randbytes(5)
        d.thread_index = base64.b64encode(index).decode("ascii")
        topic = encode_words(_strip_prefix(d.subject), label, "Q")
        out += [("Thread-Topic", topic), ("Thread-Index", d.thread_index)]
    return out


def _auto_headers(r: random.Random, c: Customer) -> list[tuple[str, str]]:
    out = [("Auto-Submitted", "auto-replied")]
    if c.client.key == "outlook":
        out.append(("X-Auto-Response-Suppress", "All"))
    elif r.random() < 0.5:
        out.append(("Precedence", "bulk"))
    return out


def _attribution(parent: Record, client: str, lang: str) -> str:
    """The line above a quote, as the replying program writes it."""
    c = parent.customer
    t = parent.when.astimezone(ROME)
    p = PHRASES[lang]
    day, month = p.days[t.weekday()], p.months[t.month - 1][:3]
    hhmm = f"{t.hour:02d}:{t.minute:02d}"
    numeric = f"{t.day:02d}/{t.month:02d}/{t.year} {hhmm}"
    if lang == "it":
        if client == "gmail":
            when = f"{day} {t.day} {month} {t.year} alle ore {hhmm}"
            return f"Il giorno {when} {c.name} <{c.addr}> ha scritto:"
        if client == "apple":
            when = f"{t.day} {month} {t.year}, alle ore {hhmm},"
            return f"Il giorno {when} {c.name} <{c.addr}> ha scritto:"
        return f"Il giorno {numeric}, {c.name} ha scritto:"
    if client == "gmail":
        return f"On {day}, {t.day} {month} {t.year} at {hhmm}, {c.name} <{c.addr}> wrote:"
    if client == "apple":
        return f"On {t.day} {month} {t.year}, at {hhmm}, {c.name} <{c.addr}> wrote:"
    return f"On {numeric}, {c.name} wrote:"


def _b64(r: random.Random, nbytes: int) -> str:
    return base64.b64encode(r.randbytes(nbytes)).decode("ascii")


def _token(r: random.Random, alphabet: str, k: int) -> str:
    return "".join(r.choices(alphabet, k=k))


_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _uuid(r: random.Random) -> str:
    h = f"{r.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def _own_domain(c: Customer) -> str:
    return c.addr.partition("@")[2]


def _gmail_id(r: random.Random, c: Customer, when: datetime) -> str:
    return f"<CA{_b64(r, 36).rstrip('=')}@mail.gmail.com>"


def _outlook_id(r: random.Random, c: Customer, when: datetime) -> str:
    """Exchange Online's id for hosted mailboxes; classic Outlook's for a company's own server."""
    if c.provider != "microsoft":
        stamp = f"{r.getrandbits(28):07x}${r.getrandbits(32):08x}${r.getrandbits(32):08x}"
        return f"<000{r.randrange(16)}01d{stamp}$@{_own_domain(c)}>"
    server = f"AM9PR0{r.randint(1, 9)}MB{r.randint(1000, 9999)}"
    return f"<{server}{r.getrandbits(96):024X}@{server}.eurprd0{r.randint(1, 9)}.prod.outlook.com>"


def _thunderbird_id(r: random.Random, c: Customer, when: datetime) -> str:
    return f"<{_uuid(r)}@{_own_domain(c)}>"


def _apple_id(r: random.Random, c: Customer, when: datetime) -> str:
    return f"<{_uuid(r).upper()}@{_own_domain(c)}>"


def _android_id(r: random.Random, c: Customer, when: datetime) -> str:
    return f"<{r.getrandbits(64):016x}.{r.getrandbits(64):016x}@email.android.com>"


def _webmail_id(r: random.Random, c: Customer, when: datetime) -> str:
    millis = int(when.timestamp() * 1000)
    return f"<{millis}.{r.randint(10**6, 10**7)}.{r.getrandbits(32)}@{_own_domain(c)}>"


MessageId = Callable[[random.Random, Customer, datetime], str]
MESSAGE_IDS: dict[str, MessageId] = {
    "gmail": _gmail_id,
    "outlook": _outlook_id,
    "thunderbird": _thunderbird_id,
    "apple": _apple_id,
    "android": _android_id,
    "webmail": _webmail_id,
}


def _boundary(r: random.Random, client: str) -> str:
    if client == "gmail":
        return f"000000000000{r.getrandbits(64):016x}"
    if client == "outlook":
        return f"_000_AM9PR07MB{r.getrandbits(128):032X}eurp_"
    if client == "thunderbird":
        return "------------" + _token(r, _ALNUM, 24)
    if client == "apple":
        return f"Apple-Mail-{_uuid(r).upper()}"
    return f"----=_Part_{r.randint(10**5, 10**6)}_{r.getrandbits(31)}.{r.getrandbits(40)}"


def _trace(r: random.Random, c: Customer, when: datetime, envelope: str) -> list[tuple[str, str]]:
    """Return-Path, Delivered-To, Received, Authentication-Results and DKIM-Signature as the
    ExampleNet MX delivers a mail from the customer's provider."""
    host_fmt, net, dkim_domain, selector = PROVIDERS[c.provider]
    domain = _own_domain(c)
    host = host_fmt.format(n=r.randint(10, 99), domain=domain)
    ip = f"{net}.{r.randint(2, 250)}" if net.count(".") == 2 else f"{net}.{r.randint(2, 250)}.9"
    sent = when + timedelta(seconds=r.randint(1, 4))
    got = sent + timedelta(seconds=r.randint(1, 25))
    ids = _b64(r, 18).replace("+", "x").replace("/", "Q")  # Postfix queue id and SMTP id
    signer = dkim_domain or domain
    received = (
        f"from {host} ({host} [{ip}])\n\tby {MX_HOST} (Postfix) with ESMTPS id {ids[:14]}\n"
        f"\tfor <{SUPPORT_ADDRESS}>; {formatdate(got.timestamp())}"
    )
    signature = _b64(r, 256)
    dkim = "dkim=none"
    if selector is not None:
        dkim = f"dkim=pass header.d={signer} header.s={selector} header.b={signature[:8]}"
    results = (
        f"{MX_HOST};\n\t{dkim};\n\tspf=pass ({MX_HOST}: domain of {c.addr} designates {ip} as "
        f"permitted sender) smtp.mailfrom={c.addr};\n\tdmarc=pass (p=NONE) header.from={domain}"
    )
    out = [
        ("Return-Path", f"<{envelope}>"),
        ("Delivered-To", SUPPORT_ADDRESS),
        ("Received", received),
        ("Authentication-Results", results),
        (
            "Received",
            f"by {host} with SMTP id {ids[14:]}\n\tfor <{SUPPORT_ADDRESS}>; "
            f"{formatdate(sent.timestamp(), usegmt=True)}",
        ),
    ]
    if selector is not None:
        out.append(("DKIM-Signature", _dkim(r, signer, selector, sent, signature)))
    return out


def _dkim(r: random.Random, domain: str, selector: str, sent: datetime, signature: str) -> str:
    stamp = int(sent.timestamp())
    b = "\n\t ".join(signature[i : i + 70] for i in range(0, len(signature), 70))
    return (
        f"v=1; a=rsa-sha256; c=relaxed/relaxed;\n\td={domain}; s={selector}; t={stamp};\n"
        f"\th=from:to:subject:date:message-id:mime-version:content-type;\n"
        f"\tbh={_b64(r, 32)};\n\tb={b}"
    )


# --------------------------------------------------------------------------- pasted material


@dataclass(frozen=True)
class PastePool:
    lines: list[str]
    mean: float


PASTE_KINDS = ("ping", "router", "apache", "invoices", "pec", "winevent", "legal")


def _paste_pool(r: random.Random, kind: str, now: datetime) -> PastePool:
    """A few hundred lines of one kind of pasted material; drafts take slices of it. The
    entries are dated before the first mail, so no mail pastes a log from its future."""
    start = now - timedelta(days=DAYS + 1)
    lines = [PASTE_LINES[kind](r, i, start - timedelta(minutes=7 * (400 - i))) for i in range(400)]
    return PastePool(lines, sum(map(len, lines)) / len(lines))


def _months_back(when: datetime, months: int) -> str:
    """The first of the month `months` before `when`, as dd/mm/yyyy (monthly invoices)."""
    index = when.year * 12 + when.month - 1 - months
    return f"01/{index % 12 + 1:02d}/{index // 12}"


def _legal_line(r: random.Random, i: int, when: datetime) -> str:
    return LEGAL[i % len(LEGAL)]


LEGAL = (
    "Informativa ai sensi dell'art. 13 del Regolamento (UE) 2016/679: i dati personali contenuti",
    "in questa comunicazione sono trattati esclusivamente per le finalità per cui sono stati",
    "conferiti, con strumenti elettronici e nel rispetto delle misure di sicurezza previste.",
    "L'interessato può esercitare in ogni momento i diritti di cui agli artt. 15-22 del",
    "Regolamento scrivendo al titolare del trattamento all'indirizzo indicato in firma.",
    "Il contenuto di questa email non costituisce impegno contrattuale se non confermato per",
    "iscritto. Eventuali opinioni espresse sono personali e non impegnano la società.",
    "This message has been scanned for viruses and dangerous content and is believed to be clean.",
    "Privacy notice under art. 13 of Regulation (EU) 2016/679: personal data in this message is",
    "processed only for the purpose for which it was provided, with appropriate security measures.",
)


def _ping_line(r: random.Random, i: int, when: datetime) -> str:
    if i % 25:
        return f"64 bytes from 8.8.8.8: icmp_seq={i + 1} ttl=117 time={r.uniform(9, 480):.1f} ms"
    down, up = r.uniform(0.5, 90), r.uniform(0.2, 20)
    return (
        f"{when:%d/%m/%Y %H:%M} speedtest: download {down:.1f} Mbps, upload {up:.1f} Mbps, "
        f"ping {r.randint(8, 300)} ms"
    )


def _router_line(r: random.Random, i: int, when: datetime) -> str:
    event = r.choice(
        (
            "PPPoE: link down (LCP echo timeout)",
            f"PPPoE: connection established, IPv4 93.45.{r.randint(0, 255)}.{r.randint(1, 254)}",
            "DSL: synchronisation lost, retrying",
            f"DSL: synchronised at {r.randint(900, 19000)} / {r.randint(300, 1000)} kbit/s",
            f"WLAN: station {r.getrandbits(48):012x} disconnected (reason 4)",
            "VoIP: registration of number failed (408 Request Timeout)",
            "System: reboot after watchdog reset",
            "GPON: optical signal lost (LOS)",
        )
    )
    return f"{when:%Y-%m-%d %H:%M:%S} {event}"


def _apache_line(r: random.Random, i: int, when: datetime) -> str:
    event = r.choice(
        (
            "[php:error] [pid {}] PHP Fatal error:  Allowed memory size of 134217728 bytes "
            "exhausted",
            "[core:error] [pid {}] (28)No space left on device: AH00023: Couldn't create the mutex",
            "[ssl:warn] [pid {}] AH01909: server certificate does NOT include an ID which "
            "matches the server name",
            "[proxy_fcgi:error] [pid {}] AH01071: Got error 'Primary script unknown'",
        )
    )
    stamp = f"{when:%a %b %d %H:%M:%S}.{r.randint(0, 999999):06d} {when.year}"
    return f"[{stamp}] {event.format(r.randint(1000, 40000))}"


def _invoice_line(r: random.Random, i: int, when: datetime) -> str:
    number = f"{when.year}/{r.randint(1, 99999):07d}"
    amount = f"{r.uniform(20, 90):.2f}".replace(".", ",")
    state = r.choice(("pagata", "pagata", "da pagare", "addebito RID", "insoluta"))
    return f"Fattura {number} del {_months_back(when, i % 12)}  importo € {amount}  {state}"


def _pec_line(r: random.Random, i: int, when: datetime) -> str:
    kind = r.choice(("ACCETTAZIONE", "AVVENUTA CONSEGNA", "MANCATA CONSEGNA", "POSTA CERTIFICATA"))
    return f"{when:%d/%m/%Y %H:%M}  {kind}: Prot. n. {r.randint(100, 9999)} - comunicazione {i}"


def _winevent_line(r: random.Random, i: int, when: datetime) -> str:
    event = r.choice(
        (
            "Errore  WindowsUpdateClient  20  Installazione non riuscita: errore 0x800f0922",
            "Avviso  Kernel-Power  41  Il sistema è stato riavviato senza un arresto corretto",
            "Errore  PrintService  372  Impossibile stampare il documento: stampante offline",
            "Informazioni  Service Control Manager  7036  Servizio Spooler di stampa in esecuzione",
        )
    )
    return f"{when:%d/%m/%Y %H:%M:%S}  {event}"


PasteLine = Callable[[random.Random, int, datetime], str]
PASTE_LINES: dict[str, PasteLine] = {
    "ping": _ping_line,
    "router": _router_line,
    "apache": _apache_line,
    "invoices": _invoice_line,
    "pec": _pec_line,
    "winevent": _winevent_line,
    "legal": _legal_line,
}


# --------------------------------------------------------------------------- public API


def _arrivals(r: random.Random, n: int, now: datetime) -> list[datetime]:
    """`n` arrival times over the last DAYS days, oldest first: dense in office hours on
    weekdays, thin at night and at weekends."""
    span = DAYS * 86_400
    end = now.timestamp()
    times: list[float] = []
    while len(times) < n:
        t = end - r.random() * span
        local = datetime.fromtimestamp(t, ROME)
        weight = 1.0 if 8 <= local.hour < 19 else 0.35 if 7 <= local.hour < 23 else 0.06
        if local.weekday() >= 5:
            weight *= 0.45
        if r.random() < weight:
            times.append(t)
    times.sort()
    return [datetime.fromtimestamp(t, UTC) for t in times]


def samples(n: int, seed: int = 1, now: datetime | None = None) -> Iterator[Sample]:
    """`n` messages with what each was meant to be (kind, multipart, charset), oldest first.

    The same `seed` and instant `now` give the same bytes, whatever its time zone; `now`
    defaults to the current time (naive values are taken as UTC)."""
    if n < 0:
        raise ValueError("n must not be negative")
    moment = now or datetime.now(UTC)
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    gen = Generator(seed, moment)
    for when in _arrivals(gen.rng, n, moment):
        yield gen.next(when)


def generate(n: int, seed: int = 1, now: datetime | None = None) -> Iterator[bytes]:
    """`n` raw messages (CRLF line ends), deterministic for a seed and `now`."""
    for sample in samples(n, seed, now):
        yield sample.raw


# --------------------------------------------------------------------------- command line


def _from_line(item: Sample) -> bytes:
    """The mbox "From " separator line: envelope sender and arrival time."""
    sender = item.envelope_from or "MAILER-DAEMON"
    return f"From {sender} {time.asctime(item.received.utctimetuple())}\n".encode("ascii")


def write_maildir(items: Iterable[Sample], out: Path, seed: int = 1) -> Iterator[Sample]:
    """Deliver into `out`/new as a mail server would (a file in tmp/, then renamed into new/),
    bytes unchanged (CRLF). Names are stable for a seed, so a rerun replaces its own files.

    No fsync: `mailbox.Maildir.add` syncs every message, which turns 10,000 mails into a
    minute of disk waits, and a generated corpus can always be generated again."""
    mailbox.Maildir(out, create=True)  # creates cur/, new/ and tmp/
    for number, item in enumerate(items):
        stamp = item.received.timestamp()
        name = f"{int(stamp)}.M{int(stamp % 1 * 1e6)}P{seed}Q{number}.corpus"
        tmp = out / "tmp" / name
        tmp.write_bytes(item.raw)
        tmp.replace(out / "new" / name)
        yield item


def write_mbox(items: Iterable[Sample], out: Path) -> Iterator[Sample]:
    """Append to an mbox file with LF line ends, as mbox readers expect (they find the
    separator lines by LF-terminated blank lines); "From " lines in bodies are quoted."""
    out.parent.mkdir(parents=True, exist_ok=True)
    box = mailbox.mbox(out, create=True)
    box.lock()
    try:
        for item in items:
            box.add(_from_line(item) + item.raw.replace(b"\r\n", b"\n"))
            yield item
        box.flush()
    finally:
        box.unlock()
        box.close()


@dataclass(frozen=True, slots=True)
class Tally:
    """What the summary needs of one message (keeping the bytes would hold the whole corpus
    in memory)."""

    size: int
    kind: str
    multipart: bool
    charset: str


def summary(items: Sequence[Tally], seconds: float) -> str:
    """One line: count, bytes, size percentiles and the share of each kind of mail."""
    n = len(items)
    if n == 0:
        return f"0 mails, {seconds:.1f} s"
    sizes = sorted(t.size for t in items)
    cuts = statistics.quantiles(sizes, n=10, method="inclusive") if n > 1 else [sizes[0]] * 9

    def share(test: Callable[[Tally], bool]) -> str:
        return f"{100 * sum(map(test, items)) / n:.0f}%"

    kib = "/".join(f"{size / 1024:.1f}" for size in (cuts[0], cuts[4], cuts[8], sizes[-1]))
    return (
        f"{n} mails, {sum(sizes) / 1e6:.1f} MB, size p10/p50/p90/max {kib} KiB, "
        f"multipart {share(lambda t: t.multipart)}, replies {share(lambda t: t.kind == 'reply')}, "
        f"auto {share(lambda t: t.kind == 'auto')}, "
        f"iso-8859-1 {share(lambda t: t.charset == 'iso-8859-1')}, {seconds:.1f} s"
    )


def _iso(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date-time: {value!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("n", type=_count, help="number of messages")
    parser.add_argument("--out", type=Path, required=True, help="Maildir folder or mbox file")
    parser.add_argument("--format", choices=("maildir", "mbox"), default="maildir")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--now", type=_iso, help="ISO date-time the mail leads up to")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    items = samples(args.n, args.seed, args.now)
    if args.format == "maildir":
        written = write_maildir(items, args.out, args.seed)
    else:
        written = write_mbox(items, args.out)
    try:
        tallies = [Tally(len(s.raw), s.kind, s.multipart, s.charset) for s in written]
    except OSError as exc:
        parser.exit(1, f"corpus: cannot write {args.out}: {exc.strerror or exc}\n")
    print(f"{summary(tallies, time.perf_counter() - started)} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
