"""A deterministic generator of fictional facts: invented people, companies, cities, rivers and works, their
attributes and relations, written out as short encyclopedia-like passages with paraphrase templates.

Nothing here exists in the real world (names are built from syllables), so a model cannot answer from memory:
a question is answerable only from the passage that states its fact. Everything is a pure function of a seed.

    world = FactWorld("rag-nq-4096-0-3")          # one independent random stream per row
    q = world.single_hop("nq")                    # a Question: text, answers, gold passages, relation
    q = world.two_hop()                           # HotpotQA-like: a bridge entity links two gold passages
    p = world.distractor(q)                       # a Passage about a fresh entity, never containing an answer
    world.haystack_sentence()                     # one sentence of filler prose (NIAH haystack)

Passages are ``Passage(title, text)``; :func:`contains_answer` is the answer-freeness test every distractor
passes (SQuAD-normalised substring, the same normalisation the scorer uses).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from .scoring import normalize_answer

# Bump when anything below changes what is generated: cached rows made by another version are rebuilt.
GENERATOR_VERSION = "facts-2"

_ONSETS = [
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "th",
    "kr",
    "br",
    "st",
    "dr",
    "qu",
    "vel",
    "sh",
]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou", "y"]
_CODAS = ["", "", "", "n", "r", "l", "s", "th", "nd", "rk", "x"]
_CITY_SUFFIX = ["holm", "grad", "ora", "mont", "vik", "stead", "burg", "ane", "port", "wick"]
_ORG_KIND = [
    "Instruments",
    "Shipping",
    "Foundry",
    "Textiles",
    "Observatory Trust",
    "Mills",
    "Press",
    "Works",
    "Holdings",
    "Guild",
]
_WORK_KIND = ["novel", "opera", "film", "symphony", "poem", "play"]
_WORK_NOUNS = [
    "Lantern",
    "Harbor",
    "Orchard",
    "Mirror",
    "Staircase",
    "Comet",
    "Tide",
    "Meadow",
    "Engine",
    "Glacier",
    "Archive",
    "Bell",
]
_WORK_ADJ = [
    "Silent",
    "Crimson",
    "Hollow",
    "Seventh",
    "Distant",
    "Paper",
    "Broken",
    "Quiet",
    "Gilded",
    "Last",
    "Northern",
    "Tin",
]
_OCCUPATIONS = [
    "cartographer",
    "glassblower",
    "astronomer",
    "violinist",
    "architect",
    "botanist",
    "engraver",
    "chemist",
    "playwright",
    "surveyor",
]
# NIAH keys are two invented-free common words joined by a hyphen, as RULER's needles use; the words are harmless.
_KEY_ADJ = [
    "amber",
    "brisk",
    "calm",
    "dusty",
    "eager",
    "faint",
    "gentle",
    "hidden",
    "icy",
    "jolly",
    "keen",
    "lucky",
    "mellow",
    "noble",
    "odd",
    "proud",
    "quick",
    "rusty",
    "shy",
    "tidy",
    "vivid",
    "wry",
]
_KEY_NOUN = [
    "anchor",
    "basket",
    "candle",
    "dragon",
    "engine",
    "falcon",
    "garden",
    "hammer",
    "island",
    "jacket",
    "kettle",
    "ladder",
    "magnet",
    "needle",
    "oyster",
    "pepper",
    "quilt",
    "rocket",
    "saddle",
    "tunnel",
    "violin",
    "wagon",
]


@dataclass(frozen=True)
class Passage:
    """One document: ``title`` (the entity's name) and ``text`` (a few sentences)."""

    title: str
    text: str


@dataclass
class Question:
    """A question with its gold answer(s) and the passage(s) that state it (two for two-hop questions).

    ``relation`` names the asked fact (``person.birthplace``...), which the closed-book reader uses to guess."""

    text: str
    answers: list[str]
    gold: list[Passage]
    relation: str
    hops: int = 1
    bridge: str | None = None
    subject: str = ""
    meta: dict = field(default_factory=dict)


def _articles(text: str) -> str:
    """``a engraver`` -> ``an engraver`` (templates say ``a {o}`` whatever the object)."""
    return re.sub(r"\b([Aa]) ([aeiouAEIOU])", r"\1n \2", text)


def contains_answer(text: str, answers: list[str]) -> bool:
    """True when any answer (SQuAD-normalised) occurs in the normalised ``text`` as a substring."""
    norm = normalize_answer(text)
    return any((a := normalize_answer(x)) and a in norm for x in answers)


# Paraphrase templates: a fact can be stated in several ways; a passage picks one per fact.
_FACT_TEMPLATES = {
    "person.birthplace": [
        "{s} was born in {o}.",
        "Born in {o}, {s} spent a childhood by the old market.",
        "{s} is a native of {o}.",
    ],
    "person.occupation": ["{s} worked as a {o}.", "By trade, {s} was a {o}.", "{s} made a living as a {o}."],
    "person.employer": ["{s} was employed by {o}.", "For many years {s} worked at {o}.", "{s} held a post at {o}."],
    "person.birth_year": ["{s} was born in the year {o}.", "The year of {s}'s birth was {o}."],
    "org.headquarters": [
        "{s} is headquartered in {o}.",
        "The head office of {s} stands in {o}.",
        "{s} has its headquarters in {o}.",
    ],
    "org.founder": ["{s} was founded by {o}.", "{o} founded {s}.", "The founder of {s} was {o}."],
    "org.founded_year": [
        "{s} was established in {o}.",
        "{s} opened its doors in {o}.",
        "The founding year of {s} is {o}.",
    ],
    "city.river": [
        "The river {o} flows through {s}.",
        "{s} lies on the banks of the {o}.",
        "{s} grew up around the {o} river.",
    ],
    "city.mayor": ["The mayor of {s} is {o}.", "{o} serves as mayor of {s}.", "{s} is governed by mayor {o}."],
    "work.author": ["{s} was written by {o}.", "{o} is the author of {s}.", "{s} is a work by {o}."],
    "work.year": ["{s} first appeared in {o}.", "{s} was published in {o}.", "{s} was completed in {o}."],
}

# Which entity kind each relation's subject and object are.
_RELATIONS = {
    "person.birthplace": ("person", "city"),
    "person.occupation": ("person", "occupation"),
    "person.employer": ("person", "org"),
    "person.birth_year": ("person", "year"),
    "org.headquarters": ("org", "city"),
    "org.founder": ("org", "person"),
    "org.founded_year": ("org", "year"),
    "city.river": ("city", "river"),
    "city.mayor": ("city", "person"),
    "work.author": ("work", "person"),
    "work.year": ("work", "year"),
}
_KIND_RELATIONS = {k: [r for r, (s, _) in _RELATIONS.items() if s == k] for k in ("person", "org", "city", "work")}

# Question phrasings per flavour, mirroring each dataset's style: NQ (lower-case search queries), TriviaQA
# (quiz sentences), PopQA (one template per relation, subject first).
_QUESTION_TEMPLATES = {
    "nq": {
        "person.birthplace": "where was {s} born",
        "person.employer": "who did {s} work for",
        "person.birth_year": "when was {s} born",
        "org.headquarters": "where is the headquarters of {s}",
        "org.founder": "who founded {s}",
        "org.founded_year": "when was {s} established",
        "city.river": "what river runs through {s}",
        "city.mayor": "who is the mayor of {s}",
        "work.author": "who wrote {s}",
        "work.year": "when did {s} come out",
    },
    "triviaqa": {
        "person.birthplace": "In which town was the figure {s} born?",
        "person.employer": "{s} spent many years employed by which organisation?",
        "org.headquarters": "The firm {s} has its head office in which city?",
        "org.founder": "Which person set up the company {s}?",
        "city.river": "On which river does the town of {s} stand?",
        "city.mayor": "Who holds the office of mayor in {s}?",
        "work.author": "Who was the author of the {k} {s}?",
        "work.year": "In what year was the {k} {s} first released?",
    },
    "popqa": {
        "person.birthplace": "In what city was {s} born?",
        "person.occupation": "What is {s}'s occupation?",
        "person.employer": "Who was {s}'s employer?",
        "org.founder": "Who was the founder of {s}?",
        "org.headquarters": "Where is {s} headquartered?",
        "city.river": "What river is {s} located on?",
        "work.author": "Who is the author of {s}?",
    },
    "squad": {
        "person.birthplace": "Where was {s} born?",
        "person.occupation": "What was {s}'s profession?",
        "person.employer": "Which organisation employed {s}?",
        "person.birth_year": "In what year was {s} born?",
        "org.headquarters": "In which city does {s} have its headquarters?",
        "org.founder": "Who founded {s}?",
        "org.founded_year": "In what year was {s} established?",
        "city.river": "Which river flows through {s}?",
        "city.mayor": "Who is the mayor of {s}?",
        "work.author": "Who wrote {s}?",
        "work.year": "When was {s} published?",
    },
}

# Two-hop questions: (first relation, second relation, template). The first fact's object is the bridge entity,
# the subject of the second fact; the question names only the first subject.
_TWO_HOP = [
    ("org.founder", "person.birthplace", "In which city was the founder of {s} born?"),
    ("person.employer", "org.headquarters", "Where is the headquarters of the company that employed {s}?"),
    ("work.author", "person.birthplace", "What is the birthplace of the author of {s}?"),
    ("org.headquarters", "city.river", "Which river flows through the city where {s} is headquartered?"),
    ("org.founder", "person.birth_year", "In what year was the founder of {s} born?"),
    ("work.author", "person.employer", "Which organisation employed the writer of {s}?"),
    ("city.mayor", "person.employer", "Which organisation employed the mayor of {s}?"),
]

_FILLER = [
    "Records from that period are incomplete.",
    "Local archives hold several letters on the subject.",
    "The matter was discussed at length in regional newspapers.",
    "Later historians have offered differing accounts of these years.",
    "A small exhibition on the topic opened some decades later.",
    "Travellers of the time described the place as busy and crowded.",
    "Little else is known with certainty.",
    "Several surveys mention it only briefly.",
]


class FactWorld:
    """One random stream of fictional entities and facts (``random.Random(seed)``; seed may be any str/int).

    Every entity name drawn is fresh within the world (collisions are re-drawn), so no two passages describe the
    same entity unless a question's construction makes them (two-hop bridges)."""

    def __init__(self, seed: str | int):
        self.rng = random.Random(str(seed))
        self.used: set[str] = set()

    # ------------------------------------------------------------------------------------------ names

    def _word(self, syllables: int) -> str:
        r = self.rng
        w = "".join(r.choice(_ONSETS) + r.choice(_VOWELS) for _ in range(syllables)) + r.choice(_CODAS)
        return w.capitalize()

    def _fresh(self, make) -> str:
        for _ in range(100):
            name = make()
            if name not in self.used:
                self.used.add(name)
                return name
        raise RuntimeError("name space exhausted")  # 100 collisions in a row: cannot happen at these sizes

    def value(self, kind: str) -> str:
        """A fresh value of ``kind``: person, org, city, river, work (names), occupation, year (strings)."""
        r = self.rng
        if kind == "person":
            return self._fresh(lambda: f"{self._word(r.randint(2, 3))} {self._word(r.randint(2, 3))}")
        if kind == "city":
            return self._fresh(lambda: self._word(r.randint(1, 2)) + r.choice(_CITY_SUFFIX))
        if kind == "org":
            return self._fresh(lambda: f"{self._word(r.randint(2, 3))} {r.choice(_ORG_KIND)}")
        if kind == "river":
            return self._fresh(lambda: self._word(r.randint(2, 3)))
        if kind == "work":
            return self._fresh(lambda: f"The {r.choice(_WORK_ADJ)} {r.choice(_WORK_NOUNS)} of {self._word(2)}")
        if kind == "occupation":
            return r.choice(_OCCUPATIONS)
        if kind == "year":
            return str(r.randint(1520, 1980))
        raise ValueError(f"unknown value kind {kind!r}")

    def niah_key(self) -> str:
        """A RULER-like needle key: ``adjective-noun`` plus an invented word, fresh in this world."""
        r = self.rng
        return self._fresh(lambda: f"{r.choice(_KEY_ADJ)}-{r.choice(_KEY_NOUN)}-{self._word(1).lower()}")

    def number(self, digits: int = 7) -> str:
        return str(self.rng.randint(10 ** (digits - 1), 10**digits - 1))

    def uuid(self) -> str:
        """A uuid4-shaped hex string drawn from this world's stream (deterministic, unlike ``uuid.uuid4``)."""
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"

    # ------------------------------------------------------------------------------------------ facts

    def facts_about(
        self, kind: str, name: str, fixed: dict[str, str] | None = None, n: int | None = None
    ) -> dict[str, str]:
        """Relation -> object for entity ``name``: the ``fixed`` ones plus ``n`` (default 2-3) random others."""
        fixed = dict(fixed or {})
        others = [r for r in _KIND_RELATIONS[kind] if r not in fixed]
        self.rng.shuffle(others)
        n = self.rng.randint(2, 3) if n is None else n
        for rel in others[:n]:
            fixed[rel] = self.value(_RELATIONS[rel][1])
        return fixed

    def passage(self, kind: str, name: str, facts: dict[str, str]) -> Passage:
        """A passage stating every fact in ``facts`` (one paraphrase each, in random order) plus one filler line."""
        r = self.rng
        rels = list(facts)
        r.shuffle(rels)
        sents = [r.choice(_FACT_TEMPLATES[rel]).format(s=name, o=facts[rel]) for rel in rels]
        sents.insert(r.randint(1, len(sents)), r.choice(_FILLER))
        if kind == "work":
            sents.insert(0, f"{name} is a {r.choice(_WORK_KIND)}.")
        return Passage(name, _articles(" ".join(sents)))

    def entity_passage(self, kind: str | None = None, avoid: list[str] = ()) -> Passage:
        """A passage about a fresh entity (a distractor), re-drawn until it contains none of ``avoid``."""
        for _ in range(50):
            k = kind or self.rng.choice(["person", "person", "org", "city", "work"])
            name = self.value(k)
            p = self.passage(k, name, self.facts_about(k, name))
            if not avoid or not contains_answer(p.text + " " + p.title, list(avoid)):
                return p
        raise RuntimeError(f"could not draw a passage free of {avoid!r}")

    def distractor(self, q: Question, same_kind: float = 0.5) -> Passage:
        """A distractor for ``q``: with probability ``same_kind`` about an entity of the same kind as a gold
        passage's (another company for a company question, as a retriever's near misses are), else any kind;
        never containing an answer."""
        kinds = [k for k in q.meta.get("kinds", [])]
        kind = self.rng.choice(kinds) if kinds and self.rng.random() < same_kind else None
        return self.entity_passage(kind, avoid=q.answers)

    def single_hop(self, flavour: str) -> Question:
        """A one-fact question in ``flavour``'s style (nq, triviaqa, popqa, squad) and its gold passage."""
        templates = _QUESTION_TEMPLATES[flavour]
        rel = self.rng.choice(sorted(templates))
        kind, okind = _RELATIONS[rel]
        name = self.value(kind)
        obj = self.value(okind)
        facts = self.facts_about(kind, name, {rel: obj})
        gold = self.passage(kind, name, facts)
        text = templates[rel].format(s=name, k=self.rng.choice(_WORK_KIND))
        return Question(text, [obj], [gold], rel, hops=1, subject=name, meta={"kinds": [kind]})

    def two_hop(self) -> Question:
        """A HotpotQA-like bridge question: two gold passages (subject's, bridge's), answer from the second."""
        rel1, rel2, template = self.rng.choice(_TWO_HOP)
        kind1, bkind = _RELATIONS[rel1]
        name = self.value(kind1)
        bridge = self.value(bkind)
        answer = self.value(_RELATIONS[rel2][1])
        g1 = self.passage(kind1, name, self.facts_about(kind1, name, {rel1: bridge}, n=2))
        g2 = self.passage(bkind, bridge, self.facts_about(bkind, bridge, {rel2: answer}, n=2))
        if contains_answer(g1.text, [answer]):  # the answer must need the second hop
            return self.two_hop()
        return Question(template.format(s=name), [answer], [g1, g2], f"{rel1}>{rel2}", hops=2, bridge=bridge, subject=name,
                        meta={"kinds": [kind1, bkind]})  # fmt: skip

    def haystack_sentence(self) -> str:
        """One sentence of fictional prose (a fact about a fresh entity or a filler line)."""
        r = self.rng
        if r.random() < 0.25:
            return r.choice(_FILLER)
        kind = r.choice(["person", "org", "city", "work"])
        rel = r.choice(_KIND_RELATIONS[kind])
        return r.choice(_FACT_TEMPLATES[rel]).format(s=self.value(kind), o=self.value(_RELATIONS[rel][1]))


def guess_answer(relation: str, seed: str) -> str:
    """What a reader without the context could say: a plausible value of the relation's answer kind.

    For two-hop relations (``a>b``) the answer kind is the second relation's object."""
    last = relation.split(">")[-1]
    kind = _RELATIONS[last][1] if last in _RELATIONS else "person"
    return FactWorld(f"guess-{seed}").value(kind)
