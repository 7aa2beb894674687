"""A deterministic synthetic population shared by every sandbox.

``person(pid, seed)`` is computed from the id alone (no global list), so a sandbox can seed a
million contacts lazily and two sandboxes seeded alike agree on who everyone is. Each vendor
sandbox shows a person through its own lens: work or personal email, formatted phone variants,
typos, missing fields and duplicates. Person 0 is the demo's heroine, Amara Okafor.

All emails use reserved example domains (``.example``, example.com/net/org). Phone numbers are
synthetic: mobiles are unique per person for populations up to about 1.5M (see ``_phone``),
landlines are shared within a household and switchboards (555-01xx) within a company.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

FIRST = ("Amara Liam Olivia Noah Emma Oliver Ava Elijah Sophia Lucas Mia Mateo Isabella Levi Amelia "
         "Ethan Harper James Evelyn Aiden Luna Kai Camila Leo Gianna Henry Sofia Jack Aria Owen "
         "Scarlett Samuel Nora Wyatt Hazel Grayson Chloe Julian Layla Ezra Zoe Hudson Priya Arjun "
         "Mei Hiroshi Fatima Omar Ingrid Lars Chiara Marco Aisha Kwame Ana Diego Elena Ivan Yara "
         "Tomasz Katarzyna Siobhan Declan Nadia Rafael Leila Tariq Hana Jonas Freya Emil Zara").split()
LAST = ("Okafor Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez "
        "Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White "
        "Harris Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres "
        "Nguyen Hill Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts "
        "Kowalski Nowak Lindqvist Andersson Rossi Bianchi Mueller Schmidt Tanaka Sato Kim Park "
        "Chen Wang Singh Patel Haddad Mensah Osei Ivanova Petrov Silva Costa Murphy Kelly").split()
STREETS = ("Main St|Oak Ave|Pine Rd|Maple Dr|Cedar Ln|Elm St|Lakeview Blvd|Hillcrest Rd|Park Ave|"
           "Sunset Blvd|Washington St|Mission St|Harbor Way|River Rd|Church St").split("|")
CITIES = [("San Francisco", "CA", "941"), ("Austin", "TX", "787"), ("Chicago", "IL", "606"),
          ("Boston", "MA", "021"), ("Seattle", "WA", "981"), ("Denver", "CO", "802"),
          ("Atlanta", "GA", "303"), ("Portland", "OR", "972"), ("New York", "NY", "100"),
          ("Miami", "FL", "331")]
AREA = {"San Francisco": "415", "Austin": "512", "Chicago": "312", "Boston": "617", "Seattle": "206",
        "Denver": "303", "Atlanta": "404", "Portland": "503", "New York": "212", "Miami": "305"}
TZ = {"CA": "America/Los_Angeles", "WA": "America/Los_Angeles", "OR": "America/Los_Angeles",
      "TX": "America/Chicago", "IL": "America/Chicago", "CO": "America/Denver", "MA": "America/New_York",
      "GA": "America/New_York", "NY": "America/New_York", "FL": "America/New_York"}
COMPANIES = ("Northwind Traders|Contoso|Fabrikam|Globex|Initech|Umbrella Health|Stark Logistics|"
             "Wayne Retail|Acme Corp|Hooli|Vandelay Imports|Tyrell Systems").split("|")
PERSONAL_DOMAINS = ("example.com", "example.net", "example.org", "mail.example")
LOCALES = ("en-US", "en-US", "en-US", "es-US", "en-GB", "fr-CA")

# Values that real data is full of and that must never glue people together.
JUNK_EMAILS = ("test@test.com", "noemail@example.com", "na@na.com", "none@none.com")
JUNK_PHONES = ("0000000000", "1111111111", "5555555555", "+1 (000) 000-0000")

EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Person:
    pid: int
    first: str
    last: str
    personal_email: str
    work_email: str
    mobile: str  # E.164
    landline: str | None  # E.164, shared within a household (family phone)
    birth_date: date
    street: str
    city: str
    state: str
    postcode: str
    company: str
    switchboard: str  # company switchboard, shared by every employee
    locale: str
    timezone: str
    created_at: datetime

    @property
    def full_name(self) -> str:
        return f"{self.first} {self.last}"


def _rng(pid: int, seed: int, salt: int = 0) -> random.Random:
    return random.Random((seed * 1_000_003 + pid) * 31 + salt)


def _phone(area: str, n: int) -> str:
    # A bijection from n (< 3.5M) to exchange 200-549 + line, so distinct people never share a
    # mobile by accident; shared numbers (households, switchboards) are shared on purpose.
    exch = 200 + (n // 10_000) % 350
    return f"+1{area}{exch}{n % 10_000:04d}"


def heroine(seed: int = 1) -> Person:
    return Person(
        pid=0, first="Amara", last="Okafor", personal_email="amara.okafor@example.com",
        work_email="a.okafor@northwind.example", mobile="+14155550142", landline=None,
        birth_date=date(1990, 4, 12), street="1450 Mission St", city="San Francisco", state="CA",
        postcode="94103", company="Northwind Traders", switchboard="+14155550100", locale="en-US",
        timezone="America/Los_Angeles", created_at=EPOCH,
    )


def person(pid: int, seed: int = 1) -> Person:
    """The person with id ``pid`` (0 is the heroine). Deterministic in ``(pid, seed)``."""
    if pid == 0:
        return heroine(seed)
    r = _rng(pid, seed)
    first, last = r.choice(FIRST), r.choice(LAST)
    city, state, zip3 = r.choice(CITIES)
    company = r.choice(COMPANIES)
    cslug = company.lower().replace(" ", "")
    household = pid // 2  # neighbours pid 2k and 2k+1 may share a home phone
    hr = _rng(household, seed, 99)
    landline = _phone(AREA[city], 2_000_000 + household) if hr.random() < 0.25 else None
    return Person(
        pid=pid, first=first, last=last,
        personal_email=f"{first.lower()}.{last.lower()}{pid}@{r.choice(PERSONAL_DOMAINS)}",
        work_email=f"{first[0].lower()}{last.lower()}{pid}@{cslug}.example",
        mobile=_phone(AREA[city], pid),
        landline=landline,
        birth_date=date(1950, 1, 1) + timedelta(days=r.randrange(0, 365 * 55)),
        street=f"{r.randrange(1, 9999)} {r.choice(STREETS)}", city=city, state=state,
        postcode=f"{zip3}{r.randrange(0, 100):02d}", company=company,
        switchboard=f"+1{AREA[city]}5550{100 + COMPANIES.index(company)}",
        locale=r.choice(LOCALES), timezone=TZ[state],
        created_at=EPOCH + timedelta(seconds=r.randrange(0, 86400 * 300)),
    )


# --- how systems distort a person ----------------------------------------------------------------

def phone_variant(e164: str, r: random.Random) -> str:
    """The same number as a human or another system might type it."""
    digits = e164[2:] if e164.startswith("+1") else e164.lstrip("+")
    a, b, c = digits[:3], digits[3:6], digits[6:]
    return r.choice([
        e164, f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"+1 {a} {b} {c}", f"1{a}{b}{c}", f"{a}.{b}.{c}",
        f"+1 ({a}) {b}-{c}",
    ])


def email_variant(email: str, r: random.Random) -> str:
    local, _, domain = email.partition("@")
    return r.choice([email, email.upper(), f" {email} ", f"{local.capitalize()}@{domain}"])


def typo(name: str, r: random.Random) -> str:
    """One realistic typo: a dropped, doubled or swapped letter."""
    if len(name) < 4:
        return name
    i = r.randrange(1, len(name) - 1)
    kind = r.random()
    if kind < 0.33:
        return name[:i] + name[i + 1:]
    if kind < 0.66:
        return name[:i] + name[i] + name[i:]
    return name[:i] + name[i + 1] + name[i] + name[i + 2:]


def modstamp(pid: int, seed: int, salt: int = 0) -> datetime:
    """A last-modified time; many records share one second, as in real exports."""
    r = _rng(pid, seed, 7 + salt)
    return EPOCH + timedelta(days=300, seconds=r.randrange(0, 86400 * 30) // 5 * 5)


# --- who is in which system ----------------------------------------------------------------------

CRM_ONLY_SHARE = {"salesforce": 0, "hubspot": 3}  # of every 10 contacts, how many are people not in the other CRM
DUPLICATE_RATE = 0.03


def contact_person(system: str, index: int, size: int, seed: int = 1) -> tuple[int, int]:
    """Which person the ``index``-th of ``size`` contacts in a CRM is, and which copy (0 = original).

    Salesforce holds persons ``0..size-1``; HubSpot holds the same people for 7 of every 10 indexes
    and people found nowhere else (``pid >= size``) for the other 3, so the two CRMs overlap by
    about 70%. About 3% of contacts are duplicates of the previous contact's person (copy 1), as
    when a sales rep re-creates someone with a typo. Contact 0 is always the heroine.
    """
    if index == 0:
        return 0, 0
    salt = sum(map(ord, system))
    if index > 1 and _rng(index, seed, salt).random() < DUPLICATE_RATE:
        return contact_person(system, index - 1, size, seed)[0], 1
    only = CRM_ONLY_SHARE.get(system, 0)
    if index % 10 >= 10 - only:
        return size + index, 0
    return index, 0


def active_people(size: int, share: float, seed: int, salt: int) -> list[int]:
    """The persons among ``0..size-1`` active on a channel (heroine always included)."""
    return [0] + [p for p in range(1, size) if _rng(p, seed, salt).random() < share]
