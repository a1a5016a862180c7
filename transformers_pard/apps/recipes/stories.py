"""Multi-step word problems composed from story steps, with numbers that stay consistent.

``prompts.MATH_TEMPLATES`` are one-sentence problems of fourteen shapes; the self-instruct stage asks the
target to write longer ones, and a 135M target mostly cannot (about one in ten of its math requests is
usable). Here a problem is composed instead: a scenario draws its people, things and numbers, chains three
to five steps that each change a running quantity (never below zero, fractions only of amounts they
divide), and ends with one question about the result. Unbounded, deterministic for a seed, written by us,
never from the benchmark prompts; the target's answers to them are the training data (greedy, like every
other request), so a problem need not be solved here.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from .prompts import NAMES

THINGS = [
    ("apple", "apples"), ("marble", "marbles"), ("sticker", "stickers"), ("cupcake", "cupcakes"),
    ("notebook", "notebooks"), ("seashell", "seashells"), ("trading card", "trading cards"), ("egg", "eggs"),
    ("candle", "candles"), ("bead", "beads"), ("comic book", "comic books"), ("tulip bulb", "tulip bulbs"),
]
CONTAINERS = ["bag", "box", "jar", "basket", "crate", "pack"]
FRACTIONS = {2: "half", 3: "a third", 4: "a quarter", 5: "a fifth"}
JOBS = ["babysitting", "walking dogs", "tutoring", "mowing lawns", "working at a cafe", "washing cars"]
SHOP = [("T-shirt", "T-shirts", 8, 25), ("book", "books", 6, 20), ("sandwich", "sandwiches", 4, 9),
        ("ticket", "tickets", 5, 30), ("plant", "plants", 3, 15), ("scarf", "scarves", 7, 22),
        ("puzzle", "puzzles", 9, 18), ("lamp", "lamps", 12, 40)]
VEHICLES = [("walks", 2, 4), ("cycles", 8, 16), ("drives", 30, 65), ("jogs", 4, 7)]
MAKERS = [("A bakery", "loaves of bread"), ("A farm", "eggs"), ("A workshop", "wooden toys"),
          ("A factory", "bottles of juice"), ("A school club", "paper cranes")]


def _people(rng: random.Random, n: int) -> list[str]:
    return rng.sample(NAMES, n)


def _multiple(rng: random.Random, of: int, low: int, high: int) -> int:
    """A multiple of ``of`` in [low, high] (at least ``of``)."""
    return of * rng.randint(max(1, -(-low // of)), max(1, high // of))


def _items_flow(rng: random.Random) -> str:
    a, b, c = _people(rng, 3)
    one, many = rng.choice(THINGS)
    have = rng.randint(8, 40)
    steps = [rng.choice([f"{a} has {have} {many}.", f"{a} starts the week with {have} {many}."])]
    changes = rng.randint(2, 4)
    while len(steps) <= changes:  # a step that cannot apply (too few to lose, no fraction divides) is drawn again
        kind = rng.choice(["gift", "packs", "lose", "fraction"])
        if kind == "gift":
            k = rng.randint(3, 25)
            steps.append(rng.choice([f"{b} gives {a} {k} more.", f"On Tuesday, {b} gives {a} another {k} {many}."]))
            have += k
        elif kind == "packs":
            packs, per = rng.randint(2, 6), rng.randint(4, 12)
            steps.append(f"{a} buys {packs} {rng.choice(CONTAINERS)}s of {many} with {per} {many} in each.")
            have += packs * per
        elif kind == "lose" and have > 4:
            k = rng.randint(1, have // 3)
            steps.append(rng.choice([f"{a} loses {k} of them on the way home.", f"{a} gives {k} {many} to {c}."]))
            have -= k
        elif kind == "fraction":
            d = rng.choice([d for d in FRACTIONS if have % d == 0] or [1])
            if d > 1:
                steps.append(f"Then {a} gives {FRACTIONS[d]} of all the {many} to {b}.")
                have -= have // d
    friends = rng.choice([d for d in (2, 3, 4, 5, 6) if have % d == 0] or [0])
    if friends and rng.random() < 0.4:
        steps.append(f"{a} shares the rest equally among {friends} friends. How many {many} does each friend get?")
    else:
        steps.append(rng.choice([f"How many {many} does {a} have now?", f"How many {many} does {a} have at the end?"]))
    return " ".join(steps)


def _earnings(rng: random.Random) -> str:
    a = _people(rng, 1)[0]
    rate, hours, days = rng.randint(8, 25), rng.randint(2, 6), rng.randint(3, 6)
    steps = [f"{a} earns ${rate} an hour {rng.choice(JOBS)}.",
             f"{a} works {hours} hours a day for {days} days this week."]
    if rng.random() < 0.5:
        extra = rng.randint(2, 8)
        steps.append(f"On Saturday {a} works {extra} more hours at ${rate + rng.randint(2, 6)} an hour.")
    one, many, low, high = rng.choice(SHOP)
    k = rng.randint(1, 4)
    steps.append(f"{a} buys {k} {many if k > 1 else one} for ${rng.randint(low, high)} each")
    pct = rng.choice([10, 20, 25, 50])
    steps[-1] += rng.choice([f" and saves {pct}% of what is left.", "."])
    question = ("How much money does " + a + (" save?" if "saves" in steps[-1] else " have left at the end of the week?"))
    return " ".join(steps + [question])


def _shopping(rng: random.Random) -> str:
    a = _people(rng, 1)[0]
    picks = rng.sample(SHOP, rng.randint(2, 3))
    parts = [f"{rng.randint(2, 5)} {many} at ${rng.randint(low, high)} each" for _, many, low, high in picks]
    steps = [f"{a} goes shopping and buys " + ", ".join(parts[:-1]) + f" and {parts[-1]}."]
    if rng.random() < 0.6:
        steps.append(f"The store takes {rng.choice([10, 15, 20, 25])}% off the whole bill.")
    if rng.random() < 0.5:
        steps.append(f"{a} also pays ${rng.randint(3, 12)} for delivery.")
    bill = rng.choice([100, 200, 500])
    steps.append(rng.choice([f"{a} pays with ${bill}. How much change does {a} get?",
                             f"How much does {a} spend in total?"]))
    return " ".join(steps)


def _travel(rng: random.Random) -> str:
    a, b = _people(rng, 2)
    verb, low, high = rng.choice(VEHICLES)
    s1, t1 = rng.randint(low, high), rng.randint(1, 4)
    s2, t2 = rng.randint(low, high), rng.randint(1, 3)
    steps = [f"{a} {verb} at {s1} miles per hour for {t1} hour{'s' if t1 > 1 else ''}.",
             f"After a {rng.choice([15, 20, 30, 45])}-minute break, {a} {verb} at {s2} miles per hour for {t2} more hour{'s' if t2 > 1 else ''}."]
    if rng.random() < 0.5:
        other = rng.randint(low * 2, high * 5)
        steps.append(f"{b} covers {other} miles on the same day. How many more miles does the one who went "
                     "farther travel?")
    else:
        steps.append(rng.choice([f"How far does {a} travel in total?",
                                 f"How many hours does {a} spend on the trip, breaks included?"]))
    return " ".join(steps)


def _production(rng: random.Random) -> str:
    maker, goods = rng.choice(MAKERS)
    per_day, days = rng.randint(20, 120), rng.randint(3, 7)
    made = per_day * days
    d = rng.choice([d for d in FRACTIONS if made % d == 0] or [1])
    box = rng.choice([4, 6, 8, 10, 12])
    steps = [f"{maker} makes {per_day} {goods} a day for {days} days."]
    if d > 1:
        steps.append(f"It sells {FRACTIONS[d]} of them at the market.")
    steps.append(rng.choice([f"The rest are packed in boxes of {box}. How many full boxes can be filled, and how "
                             "many are left over?",
                             f"Each one sells for ${rng.randint(1, 6)}. How much money does it get for the rest if "
                             "it sells them all?"]))
    return " ".join(steps)


def _ages(rng: random.Random) -> str:
    a, b, c = _people(rng, 3)
    age = rng.randint(6, 15)
    steps = [f"{a} is {age} years old.", f"{b} is {rng.randint(2, 9)} years older than {a}."]
    steps.append(rng.choice([f"{c} is twice as old as {a}.", f"{c} is {rng.randint(2, 5)} years younger than {b}."]))
    steps.append(rng.choice([f"What will be the sum of their ages in {rng.randint(2, 10)} years?",
                             f"How old was {c} {rng.randint(2, 5)} years ago?"]))
    return " ".join(steps)


def _groups(rng: random.Random) -> str:
    a = _people(rng, 1)[0]
    d = rng.choice([2, 4, 5])
    students = _multiple(rng, d * 4, 20, 60)
    pct = rng.choice([25, 50, 75])
    steps = [f"There are {students} students in {a}'s class.",
             f"{FRACTIONS[d].capitalize()} of them walk to school, and the rest take the bus."]
    steps.append(rng.choice([f"Of those who take the bus, {pct}% sit at the back. How many students sit at the back?",
                             "How many more students take the bus than walk?"]))
    return " ".join(steps)


def _geometry(rng: random.Random) -> str:
    a = _people(rng, 1)[0]
    length, width = rng.randint(6, 30), rng.randint(4, 20)
    place, cover = rng.choice([("garden", "bag of grass seed"), ("backyard", "bag of grass seed"),
                               ("classroom floor", "box of tiles"), ("patio", "box of tiles")])
    steps = [f"{a}'s {place} is a rectangle {length} meters long and {width} meters wide."]
    steps.append(rng.choice([f"A border costs ${rng.randint(5, 15)} a meter. How much does a border around the whole "
                             f"{place} cost?",
                             f"One {cover} covers {rng.choice([4, 5, 8, 10])} square meters. How many does {a} need "
                             f"for the whole {place}?"]))
    return " ".join(steps)


SCENARIOS: dict[str, Callable[[random.Random], str]] = {
    "items": _items_flow, "earnings": _earnings, "shopping": _shopping, "travel": _travel,
    "production": _production, "ages": _ages, "groups": _groups, "geometry": _geometry,
}


def story_problems(n: int, *, seed: int = 0) -> list[str]:
    """``n`` distinct word problems, scenarios drawn uniformly; deterministic for ``seed``."""
    rng = random.Random(seed)
    problems: dict[str, None] = {}
    while len(problems) < n:
        problems[SCENARIOS[rng.choice(sorted(SCENARIOS))](rng)] = None
    return list(problems)
