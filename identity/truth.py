"""Generated omnichannel customer records with known truth, for accuracy tests and benchmarks.

People are drawn first (names with realistic frequencies, so namesakes abound; birth dates;
a personal mobile and email; some a work email at a company with a shared switchboard; some in
households sharing a surname, an address and a landline). Each person then appears in 1-5 source
records shaped like the systems omnisync reads:

* ``salesforce`` / ``hubspot`` / ``shop``: rich records (name, emails, phones, address, sometimes
  a birth date) -- every person has one of these first;
* ``zoom`` (a caller: phone, often a name), ``twilio`` (an SMS sender: a mobile, nothing else),
  ``segment`` (an email and a CDP user id), ``sendgrid`` (an email only).

Noise is what real exports carry: name typos (substitution, transposition, deletion), nicknames,
case and whitespace, missing fields, Gmail dots and +tags, phone formats, dates in two formats
with the odd typo or swapped day/month, street abbreviations, ZIP+4, and junk values
(``test@test.com``, ``0000000000``, a company switchboard) that many different people carry.

Every record carries at least one strong link to an earlier record of the same person (an
identifier they share, a birth date, a street address), as records that share nothing cannot be
resolved by anyone; the noise can still break that link. :data:`COLUMNS` and
:data:`CSV_CONFIG` describe the rows; ``person_id`` is the truth and is never mapped.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

COLUMNS = ["record_id", "system", "first_name", "last_name", "birth_date", "email", "email2", "phone",
           "phone2", "street", "city", "state", "postcode", "external_id", "cdp_user_id", "person_id"]

# The ``omnisync resolve`` column mapping for these rows (person_id, the truth, is not mapped).
CSV_CONFIG: dict[str, Any] = {
    "columns": {
        "id": "record_id", "first_name": "first_name", "last_name": "last_name",
        "birth_date": "birth_date", "email": ["email", "email2"], "phone": ["phone", "phone2"],
        "street": "street", "city": "city", "state": "state", "postcode": "postcode",
        "ids": ["external_id"], "cdp_user_id": "cdp_user_id",
    },
    "region": "US",
}

FIRST = ("james mary robert patricia john jennifer michael linda david elizabeth william barbara richard "
         "susan joseph jessica thomas sarah christopher karen charles lisa daniel nancy matthew betty "
         "anthony margaret mark sandra donald ashley steven kimberly paul emily andrew donna joshua "
         "michelle kenneth carol kevin amanda brian dorothy george melissa timothy deborah ronald "
         "stephanie edward rebecca jason sharon jeffrey laura ryan cynthia jacob kathleen gary amy "
         "nicholas angela eric shirley jonathan anna stephen brenda larry pamela justin emma scott "
         "nicole brandon helen benjamin samantha samuel katherine gregory christine alexander debra "
         "frank rachel patrick carolyn raymond janet jack catherine dennis maria jerry heather tyler "
         "diane aaron ruth jose julie adam olivia nathan joyce henry virginia douglas victoria zachary "
         "kelly peter lauren kyle christina ethan joan walter evelyn noah judith jeremy megan christian "
         "andrea keith cheryl roger hannah terry jacqueline gerald martha harold gloria sean teresa "
         "austin ann carl sara arthur madison lawrence frances dylan kathryn jesse janice jordan jean "
         "bryan abigail billy alice joe julia bruce judy gabriel sophia logan grace albert denise "
         "willie amber alan doris juan marilyn wayne danielle elijah beverly randy isabella roy "
         "theresa vincent diana ralph natalie eugene brittany russell charlotte bobby marie mason "
         "kayla philip alexis louis lori amara chidi olusegun oluwaseun priya rahul wei mei hiroshi "
         "yuki fatima omar aisha mohammed sofia mateo lucia diego").split()
NICKNAMES = {"william": ["bill", "will"], "robert": ["bob", "rob"], "richard": ["rick", "rich"],
             "elizabeth": ["liz", "beth"], "margaret": ["maggie", "peggy"], "katherine": ["kate", "kathy"],
             "james": ["jim", "jimmy"], "john": ["jack", "johnny"], "michael": ["mike"],
             "christopher": ["chris"], "jennifer": ["jen", "jenny"], "thomas": ["tom"], "daniel": ["dan"],
             "joseph": ["joe"], "samuel": ["sam"], "nicholas": ["nick"], "anthony": ["tony"],
             "patricia": ["pat", "trish"], "susan": ["sue"], "deborah": ["deb", "debbie"],
             "edward": ["ed", "ted"], "andrew": ["andy", "drew"], "benjamin": ["ben"], "matthew": ["matt"],
             "olusegun": ["segun"], "oluwaseun": ["seun"]}
COMMON_LAST = ("smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez lopez "
               "gonzalez wilson anderson thomas taylor moore jackson martin lee perez thompson white harris "
               "sanchez clark ramirez lewis robinson walker young allen king wright scott torres nguyen hill "
               "flores green adams nelson baker hall rivera campbell mitchell carter roberts okafor adeyemi "
               "patel shah kim chen wang singh kumar tanaka sato muller schmidt rossi dubois").split()
_PRE = ("ash bar bel black brad brook cal carl chad cliff col cor dal dar del den dor dun ed el fair "
        "far fitz gal gar gil glen gold gran green ham har hart hay hol holl kel ken kil kirk lang lar "
        "lind lock mac mad mal mar mer mid mil mor nor oak pen per rad ran red rich ros rut sal sand "
        "sher stan stein stock sum tal thorn tur van wal ward wes whit win wood yar").split()
_SUF = ("ley ton son man field ford well worth wood ridge berg stein by croft dale den don er ham "
        "ing ins kin lam land ler low more ner ney ock rick ross sby sey shaw ster stone ter ville "
        "wick win wright yard all ett ard").split()
STREETS = ("main oak pine maple cedar elm washington lake hill park view sunset river church mill "
           "spring north south high school meadow forest willow jackson lincoln madison franklin "
           "chestnut walnut highland valley cherry dogwood laurel magnolia hickory birch aspen").split()
STREET_TYPES = [("Street", "St"), ("Avenue", "Ave"), ("Road", "Rd"), ("Drive", "Dr"), ("Lane", "Ln"),
                ("Court", "Ct"), ("Boulevard", "Blvd"), ("Place", "Pl")]
STATES = ("AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ "
          "NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY").split()
PROVIDERS = ["gmail.com", "gmail.com", "gmail.com", "yahoo.com", "outlook.com", "icloud.com", "hotmail.com",
             "aol.com", "proton.me"]
JUNK_EMAILS = ["test@test.com", "noemail@example.com", "none@none.com", "na@na.com", "info@mailinator.com"]
JUNK_PHONES = ["0000000000", "(000) 000-0000", "1234567890", "555-555-5555", "9999999999"]
SYSTEMS_RICH = ["salesforce", "hubspot", "shop"]
SYSTEMS_ANY = ["salesforce", "hubspot", "shop", "zoom", "zoom", "twilio", "segment", "segment", "sendgrid"]
_AREA = [a for a in range(201, 990) if a % 100 not in (11,) and str(a)[1] != "9"]


def _zipf_weights(n: int, s: float = 1.0) -> list[float]:
    return [1.0 / (i + 1) ** s for i in range(n)]


class Registry:
    """Phones and email addresses handed out so far. One :func:`generate` call never gives two people
    the same mobile or address; pass one registry to several calls (a store filled in chunks, each
    with its own seed) and that holds across them too, as it does in any real population."""

    def __init__(self) -> None:
        self.phones: set[str] = set()
        self.emails: Counter[str] = Counter()


class _World:
    def __init__(self, rng: random.Random, n_people: int, registry: Registry | None = None):
        self.rng = rng
        synth = sorted({p + s for p in _PRE for s in _SUF})
        rng.shuffle(synth)
        self.last = COMMON_LAST + synth
        self.last_w = _zipf_weights(len(self.last), 0.9)
        self.first_w = _zipf_weights(len(FIRST), 0.8)
        # Places: a city name, its state and one ZIP each; a few thousand of them, zipf-sized.
        n_places = max(200, min(20_000, n_people // 20))
        cities = sorted({p.capitalize() + s for p in _PRE for s in ("ton", "ville", " Falls", " City", "burg",
                                                                      "field", " Springs", "wood", "port")})
        zips = rng.sample(range(1001, 99_950), n_places)
        self.places = [(rng.choice(cities), rng.choice(STATES), f"{z:05d}") for z in zips]
        self.place_w = _zipf_weights(n_places, 0.7)
        n_companies = max(50, n_people // 40)
        self.companies = [(f"{rng.choice(_PRE)}{rng.choice(_SUF)}{i}", self.phone())
                          for i in range(n_companies)]
        self.company_w = _zipf_weights(n_companies, 1.1)
        registry = registry or Registry()
        self.used_phones, self.used_emails = registry.phones, registry.emails

    def phone(self) -> str:
        r = self.rng
        return f"{r.choice(_AREA)}{r.randint(200, 999)}{r.randint(0, 9999):04d}"

    def unique_phone(self) -> str:
        while True:
            p = self.phone()
            if p not in self.used_phones:
                self.used_phones.add(p)
                return p

    def email(self, local: str, domain: str) -> str:
        base = f"{local}@{domain}"
        n = self.used_emails[base]
        self.used_emails[base] += 1
        return base if n == 0 else f"{local}{n}@{domain}"


def _people(rng: random.Random, n_people: int, registry: Registry | None = None) -> list[dict[str, Any]]:
    w = _World(rng, n_people, registry)
    firsts = rng.choices(FIRST, w.first_w, k=n_people)
    lasts = rng.choices(w.last, w.last_w, k=n_people)
    places = rng.choices(range(len(w.places)), w.place_w, k=n_people)
    people: list[dict[str, Any]] = []
    i = 0
    while i < n_people:
        size = 1
        if rng.random() < 0.12:  # a household: shared surname, address and landline
            size = min(rng.choice((2, 2, 3, 4)), n_people - i)
        landline = w.unique_phone() if size > 1 else None
        street = f"{rng.randint(1, 9999)} {rng.choice(STREETS).capitalize()}"
        st_type = rng.randrange(len(STREET_TYPES))
        taken: set[str] = set()
        for k in range(size):
            first = firsts[i]
            while first in taken:  # members of one household have different first names
                first = rng.choice(FIRST)
            taken.add(first)
            last = lasts[i - k] if size > 1 else lasts[i]
            if size == 1:
                street = f"{rng.randint(1, 9999)} {rng.choice(STREETS).capitalize()}"
                st_type = rng.randrange(len(STREET_TYPES))
            place = w.places[places[i - k]]
            y = rng.randint(1940, 2006)
            dob = (y, rng.randint(1, 12), rng.randint(1, 28))
            p: dict[str, Any] = {
                "pid": f"P{i:07d}", "first": first, "last": last, "dob": dob,
                "mobile": w.unique_phone() if rng.random() < 0.93 else None,
                "landline": landline, "street": street, "st_type": st_type, "place": place,
                "email": w.email(f"{first}.{last}" if rng.random() < 0.6 else f"{first[0]}{last}",
                                 rng.choice(PROVIDERS)),
                "cdp": f"u-{rng.getrandbits(48):012x}",
            }
            if rng.random() < 0.4:
                comp, switchboard = rng.choices(w.companies, w.company_w)[0]
                p["work_email"] = w.email(f"{first[0]}{last}", f"{comp}.com")
                p["switchboard"] = switchboard
            people.append(p)
            i += 1
    # Namesakes: some people (outside households) share a first and last name with someone else.
    singles = [p for p in people if p["landline"] is None]
    for p in rng.sample(singles, k=len(people) // 30):
        q = rng.choice(people)
        p["first"], p["last"] = q["first"], q["last"]
        if rng.random() < 0.2:
            p["place"] = q["place"]
    return people


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _typo(rng: random.Random, s: str) -> str:
    if len(s) < 4:
        return s
    i = rng.randrange(1, len(s) - 1)
    op = rng.random()
    if op < 0.4:
        return s[:i] + rng.choice(_LETTERS) + s[i + 1:]
    if op < 0.75:
        return s[:i] + s[i + 1] + s[i] + s[i + 2:]
    return s[:i] + s[i + 1:]


def _case(rng: random.Random, s: str) -> str:
    r = rng.random()
    if r < 0.7:
        return s.title()
    if r < 0.85:
        return s.upper()
    if r < 0.95:
        return s
    return f" {s.title()} "


def _fmt_phone(rng: random.Random, digits: str) -> str:
    a, b, c = digits[:3], digits[3:6], digits[6:]
    return rng.choice((f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"+1 {a} {b} {c}", f"1{digits}",
                       f"+1{digits}", digits))


def _fmt_email(rng: random.Random, email: str) -> str:
    local, domain = email.split("@")
    r = rng.random()
    if domain == "gmail.com" and r < 0.15:
        if "." in local:
            local = local.replace(".", "")
        else:
            local = f"{local}+{rng.choice(('shop', 'news', 'work'))}"
    elif r < 0.3:
        return email.upper() if r < 0.2 else f" {email} "
    return f"{local}@{domain}"


def _fmt_dob(rng: random.Random, dob: tuple[int, int, int]) -> str:
    y, m, d = dob
    r = rng.random()
    if r < 0.03:  # a typo: day and month swapped, or one digit of the day or year off
        if r < 0.01 and d <= 12:
            m, d = d, m
        elif r < 0.02:
            d = d + 1 if d < 28 else d - 1
        else:
            y = y + 1
    return f"{y:04d}-{m:02d}-{d:02d}" if rng.random() < 0.6 else f"{m:02d}/{d:02d}/{y:04d}"


def _fmt_street(rng: random.Random, p: dict[str, Any]) -> str:
    full, abbr = STREET_TYPES[p["st_type"]]
    s = f"{p['street']} {full if rng.random() < 0.5 else abbr}"
    return s.upper() if rng.random() < 0.1 else s


def generate(n_records: int, seed: int = 7, registry: Registry | None = None) -> list[dict[str, str]]:
    """Exactly ``n_records`` rows with :data:`COLUMNS`; ``person_id`` is the truth (unique within the
    call; across calls sharing a ``registry`` only with a caller's prefix)."""
    rng = random.Random(seed)
    people = _people(rng, max(1, int(n_records / 2.1)), registry)
    counts = rng.choices((1, 2, 3, 4, 5), (0.33, 0.3, 0.2, 0.11, 0.06), k=len(people))
    rows: list[dict[str, str]] = []
    seq = 0
    pi = 0
    while len(rows) < n_records:
        p = people[pi % len(people)]
        k = counts[pi % len(people)] if pi < len(people) else 1
        pi += 1
        prior: list[tuple[dict[str, str], set[str]]] = []
        for j in range(k):
            if len(rows) >= n_records:
                break
            system = rng.choice(SYSTEMS_RICH) if j == 0 else rng.choice(SYSTEMS_ANY)
            seq += 1
            row, tokens = _record(rng, p, system, seq, prior)
            prior.append((row, tokens))
            rows.append(row)
    rng.shuffle(rows)
    return rows


def _put(r: dict[str, str], cols: tuple[str, str], value: str) -> None:
    r[cols[0] if not r[cols[0]] else cols[1]] = value


def _record(rng: random.Random, p: dict[str, Any], system: str, seq: int,
            prior: list[tuple[dict[str, str], set[str]]]) -> tuple[dict[str, str], set[str]]:
    # tokens: which of the person's facts the record carries (m mobile, l landline, e email,
    # w work email, c CDP id, name, dob, addr), to check that it can be linked to an earlier one.
    r = dict.fromkeys(COLUMNS, "")
    t: set[str] = set()
    r["record_id"], r["system"], r["person_id"] = f"R{seq:08d}", system, p["pid"]
    first = p["first"]
    if first in NICKNAMES and rng.random() < 0.05:
        first = rng.choice(NICKNAMES[first])
    elif rng.random() < 0.05:
        first = _typo(rng, first)
    last = _typo(rng, p["last"]) if rng.random() < 0.05 else p["last"]
    city, state, zipc = p["place"]
    mobile = p["mobile"]
    rich = system in SYSTEMS_RICH
    if rich:
        if rng.random() > 0.02:
            r["first_name"] = _case(rng, first)
            t.add("name")
        r["last_name"] = _case(rng, last)
        if system == "salesforce" and p.get("work_email"):
            r["email"] = _fmt_email(rng, p["work_email"])
            t.add("w")
            if rng.random() < 0.3:
                r["email2"] = _fmt_email(rng, p["email"])
                t.add("e")
            phone = p["switchboard"] if rng.random() < 0.35 or not mobile else mobile
        else:
            if rng.random() < 0.9:
                r["email"] = _fmt_email(rng, p["email"])
                t.add("e")
            phone = mobile if rng.random() < 0.6 else None
        if phone:
            r["phone"] = _fmt_phone(rng, phone)
            if phone == mobile:
                t.add("m")
        if p["landline"] and rng.random() < 0.5:
            r["phone2"] = _fmt_phone(rng, p["landline"])
            t.add("l")
        if rng.random() < 0.75:
            r["street"] = _fmt_street(rng, p)
            r["city"], r["state"] = (city.upper() if rng.random() < 0.1 else city), state
            zp = f"{zipc}-{rng.randint(0, 9999):04d}" if rng.random() < 0.1 else zipc
            r["postcode"] = zp if rng.random() < 0.97 else ""
            t.add("addr")
        if rng.random() < (0.6 if system == "shop" else 0.4):
            r["birth_date"] = _fmt_dob(rng, p["dob"])
            t.add("dob")
        r["external_id"] = f"{system[:2]}-{seq:08d}"
    elif system == "zoom":
        if rng.random() < 0.7:
            r["first_name"], r["last_name"] = _case(rng, first), _case(rng, last)
            t.add("name")
        if mobile and (rng.random() < 0.85 or not p["landline"]):
            r["phone"] = _fmt_phone(rng, mobile)
            t.add("m")
        elif p["landline"]:
            r["phone"] = _fmt_phone(rng, p["landline"])
            t.add("l")
        else:  # no phone of their own: the caller gives their email instead
            r["email"] = _fmt_email(rng, p["email"])
            t.add("e")
        r["external_id"] = f"zc-{seq:08d}"
    elif system == "twilio":
        if mobile:
            r["phone"] = _fmt_phone(rng, mobile)
            t.add("m")
        else:
            r["email"] = _fmt_email(rng, p["email"])
            t.add("e")
    elif system == "segment":
        r["email"] = _fmt_email(rng, p["email"])
        r["cdp_user_id"] = p["cdp"]
        t.update(("e", "c"))
        if rng.random() < 0.5:
            r["first_name"], r["last_name"] = _case(rng, first), _case(rng, last)
            t.add("name")
    else:  # sendgrid
        if p.get("work_email") and rng.random() < 0.3:
            r["email"] = _fmt_email(rng, p["work_email"])
            t.add("w")
        else:
            r["email"] = _fmt_email(rng, p["email"])
            t.add("e")
    _ensure_link(rng, p, r, t, prior)
    # Junk: a form filled with a placeholder. Rich records keep the real value in the second slot.
    j = rng.random()
    if j < 0.02:
        junk = rng.choice(JUNK_EMAILS)
        if rich and r["email"] and not r["email2"]:
            r["email2"], r["email"] = r["email"], junk
        elif not r["email"] or not r["email2"]:
            _put(r, ("email", "email2"), junk)
    elif j < 0.04:
        junk = rng.choice(JUNK_PHONES)
        if rich and r["phone"] and not r["phone2"]:
            r["phone2"], r["phone"] = r["phone"], junk
        elif not r["phone"] or not r["phone2"]:
            _put(r, ("phone", "phone2"), junk)
    return r, t


_IDENT = ("m", "e", "w", "c")


def _linked(t: set[str], q: set[str]) -> bool:
    if t & q & set(_IDENT):
        return True
    named = "name" in t and "name" in q
    return named and bool(t & q & {"dob", "addr", "l"})


def _ensure_link(rng: random.Random, p: dict[str, Any], r: dict[str, str], t: set[str],
                 prior: list[tuple[dict[str, str], set[str]]]) -> None:
    """Make sure the record shares an identifier (or a name plus a date/address) with an earlier one."""
    if not prior:
        # The first record of a person is a rich one; it carries at least one personal identifier.
        if not t & {"m", "e", "w"}:
            _put(r, ("email", "email2"), _fmt_email(rng, p["email"]))
            t.add("e")
        return
    if any(_linked(t, q) for _, q in prior):
        return
    q = set().union(*(q for _, q in prior))
    if "m" in q:
        _put(r, ("phone", "phone2"), _fmt_phone(rng, p["mobile"]))
        t.add("m")
    elif "e" in q:
        _put(r, ("email", "email2"), _fmt_email(rng, p["email"]))
        t.add("e")
    elif "w" in q:
        _put(r, ("email", "email2"), _fmt_email(rng, p["work_email"]))
        t.add("w")
    elif "name" in t and "dob" in q:
        r["birth_date"] = _fmt_dob(rng, p["dob"])
        t.add("dob")
    elif "name" in t and "addr" in q:
        r["street"], r["postcode"] = _fmt_street(rng, p), p["place"][2]
        t.add("addr")


# --- accuracy -----------------------------------------------------------------------------------

def pairwise_accuracy(truth: Mapping[str, str], clusters: Mapping[str, Any]) -> dict[str, float]:
    """Pairwise precision, recall and F1 of a clustering against the truth (record id -> person).

    A pair of records is predicted when they share a cluster, true when they share a person.
    Counted through cluster x person cell sizes, so it is linear in the records.
    """
    def pairs(counter: Iterable[int]) -> int:
        return sum(n * (n - 1) // 2 for n in counter)

    cells = Counter((clusters[r], truth[r]) for r in truth)
    tp = pairs(cells.values())
    predicted = pairs(Counter(clusters[r] for r in truth).values())
    actual = pairs(Counter(truth.values()).values())
    precision = tp / predicted if predicted else 1.0
    recall = tp / actual if actual else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "true_pairs": actual,
            "predicted_pairs": predicted, "true_positive_pairs": tp}
