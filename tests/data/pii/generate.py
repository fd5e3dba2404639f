#!/usr/bin/env python3
"""Writes set.jsonl, the labelled PII set: one JSON object a line, {"text", "spans": [{"kind",
"start", "end"}], "split"}; start and end are byte offsets into the UTF-8 text. Values are made
here (valid checksums for cards, IBANs, DNIs, Aadhaar numbers; never-issued SSN ranges avoided)
with a fixed seed; the sentences around them are hand-written, in several languages. The heldout
templates were written before the detector was tuned and are never read while tuning it.

    python3 tests/data/pii/generate.py   # rewrites tests/data/pii/set.jsonl
"""
import json
import random
import string
from pathlib import Path

rng = random.Random(13)

def luhn_complete(prefix, length):
    digits = [int(c) for c in prefix]
    while len(digits) < length - 1:
        digits.append(rng.randrange(10))
    for check in range(10):
        cand = digits + [check]
        s = 0
        for i, d in enumerate(reversed(cand)):
            if i % 2 == 1:
                d *= 2
                if d > 9:
                    d -= 9
            s += d
        if s % 10 == 0:
            return "".join(map(str, cand))

def luhn_broken(prefix, length):
    good = luhn_complete(prefix, length)
    last = (int(good[-1]) + 1 + rng.randrange(8)) % 10
    return good[:-1] + str(last)

def group(number, sizes, sep):
    out, i = [], 0
    for s in sizes:
        out.append(number[i:i + s]); i += s
    return sep.join(out)

def card(sep=" ", broken=False):
    prefix, length, sizes = rng.choice([
        ("4", 16, (4, 4, 4, 4)), ("51", 16, (4, 4, 4, 4)), ("55", 16, (4, 4, 4, 4)),
        ("2221", 16, (4, 4, 4, 4)), ("37", 15, (4, 6, 5)), ("34", 15, (4, 6, 5)),
        ("6011", 16, (4, 4, 4, 4)), ("3530", 16, (4, 4, 4, 4)), ("62", 16, (4, 4, 4, 4)),
    ])
    n = luhn_broken(prefix, length) if broken else luhn_complete(prefix, length)
    return group(n, sizes, sep) if sep is not None else n

IBAN_FORMATS = {"DE": (22, "n"), "FR": (27, "n"), "GB": (22, "GB"), "ES": (24, "n"),
                "IT": (27, "IT"), "NL": (18, "NL"), "BE": (16, "n"), "CH": (21, "n"), "PL": (28, "n")}

def iban(country=None, spaced=True, broken=False):
    country = country or rng.choice(list(IBAN_FORMATS))
    length, shape = IBAN_FORMATS[country]
    body_len = length - 4
    if shape == "GB":
        body = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + "".join(rng.choice(string.digits) for _ in range(body_len - 4))
    elif shape == "NL":
        body = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + "".join(rng.choice(string.digits) for _ in range(body_len - 4))
    elif shape == "IT":
        body = rng.choice(string.ascii_uppercase) + "".join(rng.choice(string.digits) for _ in range(body_len - 1))
    else:
        body = "".join(rng.choice(string.digits) for _ in range(body_len))
    def num(s):
        return int("".join(str(int(c, 36)) for c in s))
    check = 98 - num(body + country + "00") % 97
    if broken:
        check = (check + 1 + rng.randrange(90)) % 97 + 2
        if check > 98 or check == 98 - num(body + country + "00") % 97:
            check = 2 if check != 2 else 3
    compact = f"{country}{check:02d}{body}"
    if not spaced:
        return compact
    return " ".join(compact[i:i + 4] for i in range(0, len(compact), 4))

def ssn(sep="-"):
    while True:
        a = rng.randrange(1, 900)
        if a != 666:
            break
    return f"{a:03d}{sep}{rng.randrange(1, 100):02d}{sep}{rng.randrange(1, 10000):04d}"

def nino(spaced=False):
    first = rng.choice("ABCEGHJKLMNOPRSTWXYZ")
    second = rng.choice("ABCEGHJKLMNPRSTWXYZ")
    if first + second in ("BG", "GB", "NK", "KN", "TN", "NT", "ZZ"):
        first, second = "A", "B"
    d = [f"{rng.randrange(100):02d}" for _ in range(3)]
    suffix = rng.choice("ABCD")
    if spaced:
        return f"{first}{second} {d[0]} {d[1]} {d[2]} {suffix}"
    return f"{first}{second}{''.join(d)}{suffix}"

def dni(nie=False, broken=False):
    letters = "TRWAGMYFPDXBNJZSQVHLCKE"
    if nie:
        lead = rng.choice("XYZ")
        n = rng.randrange(10**7)
        value = int(str("XYZ".index(lead)) + f"{n:07d}")
        letter = letters[value % 23]
        if broken:
            letter = letters[(value + 5) % 23]
        return f"{lead}{n:07d}{letter}"
    n = rng.randrange(10**7, 10**8)
    letter = letters[n % 23]
    if broken:
        letter = letters[(n + 3) % 23]
    return f"{n:08d}{letter}"

D = [[0,1,2,3,4,5,6,7,8,9],[1,2,3,4,0,6,7,8,9,5],[2,3,4,0,1,7,8,9,5,6],[3,4,0,1,2,8,9,5,6,7],[4,0,1,2,3,9,5,6,7,8],[5,9,8,7,6,0,4,3,2,1],[6,5,9,8,7,1,0,4,3,2],[7,6,5,9,8,2,1,0,4,3],[8,7,6,5,9,3,2,1,0,4],[9,8,7,6,5,4,3,2,1,0]]
P = [[0,1,2,3,4,5,6,7,8,9],[1,5,7,6,2,8,3,0,9,4],[5,8,0,3,7,9,6,1,4,2],[8,9,1,6,0,4,3,5,2,7],[9,4,5,3,1,2,8,7,0,6],[4,2,8,6,5,7,0,9,3,1],[2,7,9,3,8,0,6,4,1,5],[7,0,4,6,9,1,3,2,5,8]]
INV = [0,4,3,2,1,5,6,7,8,9]

def verhoeff_check(num):
    c = 0
    for i, d in enumerate(reversed(num)):
        c = D[c][P[(i + 1) % 8][int(d)]]
    return str(INV[c])

def aadhaar(sep=" ", broken=False):
    base = str(rng.randrange(2, 10)) + "".join(rng.choice(string.digits) for _ in range(10))
    check = verhoeff_check(base)
    if broken:
        check = str((int(check) + 1 + rng.randrange(8)) % 10)
    n = base + check
    return group(n, (4, 4, 4), sep)

def ipv4():
    return ".".join([str(rng.randrange(1, 224))] + [str(rng.randrange(0, 256)) for _ in range(3)])

def ipv6():
    return rng.choice([
        "2001:db8:85a3::8a2e:370:7334", "fe80::1ff:fe23:4567:890a", "2001:0db8:0000:0000:0000:ff00:0042:8329",
        "2a02:1205:c6b4:9e00:4d2:1b6f:9c3e:a1", "2606:4700:4700::1111", "::ffff:192.0.2.128",
    ])

def rand_chars(alphabet, n):
    return "".join(rng.choice(alphabet) for _ in range(n))

AN = string.ascii_letters + string.digits
def aws_access():
    return rng.choice(["AKIA", "ASIA"]) + rand_chars(string.ascii_uppercase + "234567", 16)
def aws_secret():
    while True:
        s = rand_chars(AN + "/+", 40)
        if any(c.isupper() for c in s) and any(c.islower() for c in s) and any(c.isdigit() for c in s):
            return s
def api_key():
    return rng.choice([
        lambda: "sk-proj-" + rand_chars(AN + "_-", 48),
        lambda: "sk-" + rand_chars(AN, 48),
        lambda: "sk-ant-api03-" + rand_chars(AN + "_-", 60),
        lambda: "gw-" + rand_chars("0123456789abcdef", 48),
        lambda: "ghp_" + rand_chars(AN, 36),
        lambda: "AIza" + rand_chars(AN + "_-", 35),
        lambda: "xoxb-" + rand_chars(string.digits, 12) + "-" + rand_chars(string.digits, 13) + "-" + rand_chars(AN, 24),
    ])()

FIRST = ["anna", "j.smith", "maria.garcia", "li.wei", "o.brien", "kowalski", "fatima_z", "dev+alerts", "h.mueller", "yuki.tanaka"]
DOMAINS = ["example.com", "mail.example.org", "firma.de", "correo.es", "example.co.uk", "uni-wien.ac.at", "empresa.com.br"]
def email():
    return rng.choice(FIRST) + "@" + rng.choice(DOMAINS)

def phone():
    return rng.choice([
        lambda: f"+1 ({rng.randrange(201, 990)}) {rng.randrange(200, 999)}-{rng.randrange(1000, 9999)}",
        lambda: f"+44 20 {rng.randrange(7000, 7999)} {rng.randrange(1000, 9999)}",
        lambda: f"+33 6 {rng.randrange(10, 99)} {rng.randrange(10, 99)} {rng.randrange(10, 99)} {rng.randrange(10, 99)}",
        lambda: f"+49 30 {rng.randrange(1000000, 9999999)}",
        lambda: f"+34 6{rng.randrange(10, 99)} {rng.randrange(100, 999)} {rng.randrange(100, 999)}",
        lambda: f"+91 98{rng.randrange(100, 999)} {rng.randrange(10000, 99999)}",
        lambda: f"({rng.randrange(201, 990)}) {rng.randrange(200, 999)}-{rng.randrange(1000, 9999)}",
        lambda: f"{rng.randrange(201, 990)}-{rng.randrange(200, 999)}-{rng.randrange(1000, 9999)}",
        lambda: f"06 {rng.randrange(10, 99)} {rng.randrange(10, 99)} {rng.randrange(10, 99)} {rng.randrange(10, 99)}",
        lambda: f"020 7946 {rng.randrange(1000, 9999)}",
        lambda: f"07700 {rng.randrange(100000, 999999)}",
        lambda: f"+81 3-{rng.randrange(1000, 9999)}-{rng.randrange(1000, 9999)}",
    ])()

GEN = {"email": email, "phone": phone, "card": card, "iban": iban, "us_ssn": ssn, "uk_nino": nino,
       "es_dni": dni, "in_aadhaar": aadhaar, "ip_address": lambda: rng.choice([ipv4, ipv6])(),
       "aws_access_key": aws_access, "aws_secret_key": aws_secret, "api_key": api_key}

# Templates: {kind} slots are filled with generated values; the span of each is recorded.
# HELDOUT was written first, before any detector ran.
HELDOUT_POS = [
    "Bitte schicken Sie die Rechnung an {email}, danke.",
    "Mi correo es {email} y mi teléfono {phone}.",
    "Call me back on {phone} after 6pm.",
    "Kontonummer (IBAN): {iban} — Verwendungszweck Miete März.",
    "Please charge card {card} for the renewal.",
    "SSN on file: {us_ssn}. Please verify.",
    "My National Insurance number is {nino}.",
    "DNI del titular: {es_dni}",
    "Aadhaar: {in_aadhaar} (linked to PAN)",
    "Connection refused from {ip_address} at 03:14.",
    "export AWS_ACCESS_KEY_ID={aws_access_key}",
    "aws_secret_access_key = {aws_secret_key}",
    "curl -H 'Authorization: Bearer {api_key}' https://api.example.com/v1/models",
    "Envoyez le RIB {iban} à {email}.",
    "Le client {phone} a signalé un problème de carte {card}.",
    "ssh deploy@{ip_address} -p 2222",
    "OPENAI_API_KEY={api_key}",
    "Contact: {email} / {phone}",
    "顧客のメールアドレスは {email} です。",
    "Numero di carta: {card}, scadenza 09/27.",
    "the key {aws_access_key} leaked in the CI log",
    "Ping {ip_address} and report latency.",
    "Transfer 250 EUR to {iban} by Friday.",
    "Employee record: name Ravi Kumar, Aadhaar no. {in_aadhaar}",
    "NIE: {es_dni}, domicilio en Madrid.",
    "Tax form W-2 shows SSN {us_ssn} for 2023.",
]
HELDOUT_NEG = [
    "The meeting moved to 2024-03-15 at 14:30 CET.",
    "Order #100234567 shipped on 12/03/2024.",
    "Invoice INV-2024-000123 totals $1,234.56.",
    "Upgrade to version 2.14.3 before Friday.",
    "Run pip install numpy==1.26.4 and restart.",
    "Commit 3f5e9a1c2b7d4e6f8a9b0c1d2e3f4a5b6c7d8e9f fixed the race.",
    "Request id 550e8400-e29b-41d4-a716-446655440000 timed out.",
    "ISBN 978-3-16-148410-0 is out of print.",
    "Der Preis beträgt 1.299,00 € inkl. MwSt.",
    "Temperature rose from 18.5 to 23.7 degrees.",
    "for (let i = 0; i < 1024; i += 16) { buf[i] = 255; }",
    "The population was 8,336,817 in 2019.",
    "Tracking number 1Z999AA10123456784 via UPS.",
    "Card 4111 1111 1111 1112 was declined (invalid number).",
    "IBAN DE89 3704 0044 0532 0130 01 looks wrong, checksum fails.",
    "Call extension 4521 or room 3.14.",
    "Latitude 48.8584, longitude 2.2945.",
    "El pedido 2024/000871 llegará el 5 de mayo.",
    "Le colis n° 8J00123456789 est en transit.",
    "Build 10.0.19045.3693 of Windows 10.",
    "SELECT * FROM orders WHERE id = 48213 AND total > 99.95;",
    "Phone numbers like 555-0100 are reserved for fiction.",
    "Use chmod 0755 and port 8080.",
    "sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "Der Zug fährt um 17:45 von Gleis 12 ab.",
    "価格は 12,800 円です（税込）。",
    "Scores: 98.6, 87.2, 91.0 — average 92.27.",
    "The matrix is 1920x1080 at 60 Hz.",
    "Account settings > Security > 2FA (step 3 of 4).",
    "std::collections::HashMap::new() allocates lazily.",
    "Timestamp 1700000000123 in milliseconds.",
    "The SKU is AB-1234-XY and the lot 2023-11-07-A.",
    "MAC address 00:1A:2B:3C:4D:5E belongs to the printer.",
    "Reference 123-45-678 is a part number, not an id.",
    "Coordinates 40°26′46″N 79°58′56″W.",
    "The range is 10-20-30-40 mm.",
    "Aadhaar-like 1234 5678 9012 fails its checksum.",
    "Password reset link expires in 3600 seconds.",
    "Kernel 6.5.0-41-generic panicked at 0xffffffff8100.",
    "Total: 3 items, 2 × 19.99 + 1 × 4.50 = 44.48",
    "Die Bestellnummer lautet 4000 1234 5678 (bitte angeben).",
    "Model gpt-4o-2024-08-06 answered in 812 ms.",
]

DEV_POS = [
    "Write to {email} for support.",
    "Her email address is {email}, his is {email}.",
    "Phone: {phone}",
    "Tel. {phone} (Büro) oder {phone} (mobil)",
    "Please call {phone} to confirm.",
    "IBAN {iban}",
    "Payez sur le compte {iban} avant le 10.",
    "Card number {card} exp 12/26 cvv 123",
    "visa {card}",
    "Paid with {card}; receipt sent to {email}.",
    "The applicant's SSN is {us_ssn}.",
    "SSN {us_ssn}, DOB 1985-04-12",
    "NI number: {uk_nino}",
    "Número de DNI {es_dni}.",
    "Documento: {es_dni}",
    "Aadhaar {in_aadhaar}",
    "आधार संख्या {in_aadhaar}",
    "Server {ip_address} is down.",
    "Allow traffic from {ip_address} and {ip_address}.",
    "listen {ip_address}:8443",
    "AWS key {aws_access_key} with secret {aws_secret_key}",
    "[default]\naws_access_key_id = {aws_access_key}\naws_secret_access_key = {aws_secret_key}",
    "Here's my key: {api_key}",
    "ANTHROPIC_API_KEY=\"{api_key}\"",
    "token={api_key}&user=42",
    "Contacte con {email} o llame al {phone}.",
    "Customer {email} from {ip_address} paid with {card}.",
    "Steuer: bitte an {email}, Konto {iban}.",
    "My SSN is {us_ssn} and my card is {card}.",
    "Invalid login for {email} from {ip_address}",
    "client_secret: {api_key}",
    "Whatsapp me at {phone}!",
    "El IBAN es {iban} (Banco Ejemplo).",
    "uk NINO {uk_nino} and phone {phone}",
]
DEV_NEG = [
    "Meeting on 15.01.2024 at 09:00.",
    "The order number is 2024-000123.",
    "Version 1.2.3 fixes the bug; 1.2.4 is next.",
    "Release v4.10.2.1 is out.",
    "Price: $19.99, was $24.99.",
    "Invoice #INV-88421 due 2024-02-29.",
    "git checkout a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0",
    "UUID: 123e4567-e89b-12d3-a456-426614174000",
    "ISBN 0-306-40615-2",
    "Call 911 in an emergency.",
    "Room 101, floor 3, building 7.",
    "The answer is 42 and 3.14159 is pi.",
    "x = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]",
    "let total: u64 = 18446744073709551615;",
    "Card 4111 1111 1111 1121 fails the Luhn check.",
    "IBAN GB82 WEST 1234 5698 7654 33 has a bad checksum.",
    "SSN 000-12-3456 is never issued.",
    "SSN 666-12-3456 is never issued either.",
    "Number 900-12-3456 is in the ITIN range.",
    "DNI 12345678A (letter wrong).",
    "Phone 123 is too short.",
    "Date: 2023/12/31 23:59:59",
    "Meet at 10.30 on 12.05.",
    "It costs 1 234 567 USD in total.",
    "Lot 0042-17 and batch 7781.",
    "Wi-Fi password: correct-horse-battery-staple",
    "sk-learn is a common misspelling of scikit-learn.",
    "The ask-ant-colony algorithm has 3 phases.",
    "ip 999.1.1.1 is not valid",
    "Python 3.11.4 and Node 20.10.0",
    "Ratio 16:9, time 12:30:45, score 3:2.",
    "Quote #Q-2024-0091 valid 30 days.",
    "Shipping 2-3 business days; SKU 4006381333931.",
    "Parcel 00340434161094042557 tracked.",
    "The product code is 9780306406157.",
    "Call me maybe, at 5 or 6.",
    "Between 1990 and 2020 the index grew 4.5%.",
    "icon@2x.png and logo@3x.png are retina assets.",
    "npm i @types/node@20.11.5",
    "EUR 1.234.567,89 transferred.",
    "Matrix: [[0.12, 0.98], [1.05, 2.33]]",
    "AKIA is the prefix AWS uses for access key ids.",
    "Hash 9e107d9d372bb6826bd81d3542a419d6 (md5).",
    "Base64: SGVsbG8gd29ybGQhIFRoaXMgaXMgYSB0ZXN0IHN0cmluZw==",
    "Semver ranges: ^1.0.0 || >=2.1.0 <3.0.0",
    "Zip code 75008, Paris; CP 28013 Madrid.",
    "Model ran 10,000 steps at lr=3e-4.",
    "Ref: 2024-01-15-001 / case 77321",
    "Tel: see below (number on request).",
    "Flight LH 400 departs 13:05, gate B44.",
    "Die Postleitzahl ist 10115, Hausnummer 12a.",
    "Le prix est de 12,50 € le kilo.",
    "Call +1 for the US prefix and +44 for the UK.",
    "Percentages: 12.5%, 33.3%, 50%.",
    "Chapter 3.2.1 covers indexing.",
    "addr 0x7ffd5e8c and 0xdeadbeef",
    "Heights: 1.75 m, 1.82 m, 1.68 m.",
    "Page 12 of 340.",
    "Ticket JIRA-4521 blocks JIRA-4522.",
    "Year range 2019-2024, q3 2023.",
]

def fill(template, split):
    spans = []
    out = b""
    rest = template
    while "{" in rest:
        head, _, tail = rest.partition("{")
        name, _, rest = tail.partition("}")
        out += head.encode()
        kind = "uk_nino" if name == "nino" else name
        value = GEN[kind]()
        start = len(out)
        out += value.encode()
        spans.append({"kind": kind, "start": start, "end": len(out)})
    out += rest.encode()
    return {"text": out.decode(), "spans": spans, "split": split}

def negative(text, split):
    return {"text": text, "spans": [], "split": split}

rows = []
for split, pos, neg, reps in [("heldout", HELDOUT_POS, HELDOUT_NEG, 2), ("dev", DEV_POS, DEV_NEG, 3)]:
    for _ in range(reps):
        for t in pos:
            rows.append(fill(t, split))
    for t in neg:
        rows.append(negative(t, split))
# Extra hard negatives made from near-valid values: failing checksums and invalid ranges.
for split, extra in (("heldout", 1), ("dev", 2)):
    for _ in range(12 * extra):
        rows.append(negative(f"Reference {card(broken=True)} (not a valid card).", split))
        rows.append(negative(f"Konto {iban(broken=True)} wurde abgelehnt.", split))
    for _ in range(6 * extra):
        rows.append(negative(f"Documento {dni(broken=True)}", split))
        rows.append(negative(f"Registro {aadhaar(broken=True)} do sistema", split))
        rows.append(negative(f"Order {card(sep=None, broken=True)} confirmed.", split))
        rows.append(negative(f"Build {rng.randrange(1,20)}.{rng.randrange(0,30)}.{rng.randrange(0,300)}", split))

path = Path(__file__).with_name("set.jsonl")
with path.open("w", encoding="utf-8") as f:
    for row in rows:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
pos = sum(1 for r in rows if r["spans"])
print(f"{len(rows)} rows, {pos} with PII, heldout {sum(1 for r in rows if r['split']=='heldout')}")
