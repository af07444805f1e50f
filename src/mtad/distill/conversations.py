"""Instruction set v2: eight kinds of request, some with a second turn, made from mtad's own templates.

Why: chat benchmarks ask for writing, role play, reasoning, maths, coding, extraction, STEM and
humanities, often in two turns; a draft trained only on explanatory prose (set v1,
`instructions.py`) meets text it never saw. Every template and filler here was written for mtad
(none is taken from an evaluation set; `instructions.overlap_with` checks that against MT-Bench
when data is made). Numbers, names and passages are drawn at random, so the same template yields
many distinct requests. Held-out requests use subjects (every 8th filler of each kind's subject
list) that training never sees. A conversation is a list of user turns (one or two); the target
answers each turn in order.
"""

from __future__ import annotations

import random

VERSION = 2
KINDS = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
SECOND_TURN_SHARE = 0.3
HELDOUT_EVERY = 8

_NAMES = (
    "Ana",
    "Bilal",
    "Chen",
    "Dara",
    "Elif",
    "Farid",
    "Greta",
    "Hiro",
    "Ines",
    "Jonas",
    "Kemi",
    "Lars",
    "Mira",
    "Nikhil",
    "Olga",
    "Pablo",
    "Quinn",
    "Rosa",
    "Sami",
    "Tariq",
    "Uma",
    "Viktor",
    "Wen",
    "Yara",
)
_CITIES = (
    "Lisbon",
    "Nairobi",
    "Osaka",
    "Toronto",
    "Krakow",
    "Lima",
    "Hanoi",
    "Tunis",
    "Oslo",
    "Perth",
    "Seville",
    "Tbilisi",
    "Quito",
    "Dakar",
    "Bergen",
    "Cebu",
)
_COMPANIES = (
    "Northwind Labs",
    "Bluefin Foods",
    "Kestrel Robotics",
    "Amber Rail",
    "Solace Health",
    "Tidewater Energy",
    "Lumen Books",
    "Granite Bank",
    "Orchid Textiles",
    "Pioneer Drones",
)

SUBJECTS = {
    "writing": (
        "a rainy market day",
        "learning to swim as an adult",
        "a lighthouse keeper",
        "moving to a new city",
        "an old bicycle",
        "the first snow of winter",
        "a neighbourhood bakery",
        "a lost umbrella",
        "a night train",
        "a community garden",
        "a retired robot",
        "a family recipe",
        "a power outage",
        "a mountain village",
        "an unexpected letter",
        "a school science fair",
        "a street musician",
        "a forgotten attic",
        "a late-night diner",
        "a long-distance friendship",
    ),
    "roleplay": (
        "a ship's cook in 1850",
        "a museum night guard",
        "a tour guide in an old castle",
        "a detective in a foggy city",
        "a beekeeper",
        "a spaceship's navigation computer",
        "a kindergarten teacher",
        "a medieval blacksmith",
        "a radio host at midnight",
        "a park ranger",
        "a retired circus performer",
        "a hotel concierge",
        "a volcano scientist",
        "a lighthouse cat",
        "a personal fitness coach",
        "a bookshop owner",
        "a train conductor",
        "a deep-sea diver",
    ),
    "stem": (
        "photosynthesis",
        "plate tectonics",
        "vaccines",
        "black holes",
        "the greenhouse effect",
        "electric motors",
        "antibiotic resistance",
        "the water cycle",
        "nuclear fission",
        "DNA replication",
        "ocean tides",
        "semiconductors",
        "the immune response",
        "rainbows",
        "lithium batteries",
        "sound waves",
        "enzymes",
        "GPS positioning",
        "earthquake waves",
        "wind turbines",
    ),
    "humanities": (
        "the printing press",
        "the Silk Road",
        "the Industrial Revolution",
        "the Renaissance",
        "the fall of the Western Roman Empire",
        "the abolition of slavery",
        "the invention of writing",
        "the French Revolution",
        "the rise of city-states",
        "the spread of universities",
        "the Meiji Restoration",
        "the Harlem Renaissance",
        "the Reformation",
        "ancient Athenian democracy",
        "the Mughal Empire",
        "the age of exploration",
        "the suffrage movement",
        "the Cold War",
    ),
    "coding": (
        "reverses the words in a sentence",
        "checks whether a string is a palindrome",
        "returns the k largest numbers of a list",
        "merges two sorted lists",
        "counts word frequencies",
        "computes Fibonacci numbers with memoization",
        "removes duplicates while keeping order",
        "validates a simple email address",
        "flattens a nested list",
        "finds the longest common prefix",
        "converts Roman numerals to integers",
        "groups anagrams together",
        "rotates a matrix by 90 degrees",
        "computes a running average",
        "parses 'key=value' lines into a dictionary",
        "checks balanced brackets",
        "finds the first non-repeating character",
        "computes the greatest common divisor",
    ),
}
_FORMS = (
    "a short story",
    "a poem",
    "a persuasive paragraph",
    "a diary entry",
    "a letter to a friend",
    "a product review",
    "a short speech",
    "a blog post introduction",
    "a limerick",
    "a news report",
)
_ROLE_REQUESTS = (
    "Greet a visitor and describe your typical day.",
    "Explain your work to a curious child.",
    "Tell me about the strangest thing that happened to you this week.",
    "Give me three pieces of advice from your experience.",
    "Describe your workplace in detail.",
    "A customer is unhappy. Calm them down and solve the problem.",
)
_STEM_ASKS = (
    "Explain how {s} works, step by step.",
    "What are the most common misunderstandings about {s}?",
    "Describe a simple experiment that shows {s}.",
    "Why does {s} matter in everyday life?",
    "Explain {s} using an analogy, then say where the analogy breaks down.",
)
_HUMANITIES_ASKS = (
    "Discuss the main causes and consequences of {s}.",
    "How did {s} change ordinary people's lives?",
    "Write a balanced short essay on the legacy of {s}.",
    "What are two competing interpretations of {s}? Compare them.",
    "Which lessons from {s} still apply today, and why?",
)
_LANGUAGES = ("Python", "Python", "Python", "JavaScript", "C++", "Java", "Go", "Rust")
_SECOND_TURNS = {
    "writing": (
        "Rewrite it in exactly four sentences.",
        "Now give it a title and explain your choice.",
        "Rewrite it from the point of view of another character.",
        "Make the tone more formal.",
    ),
    "roleplay": (
        "Stay in character: what is your biggest worry?",
        "Still in character, describe your best memory.",
        "Now step out of the role and say what made it convincing.",
    ),
    "reasoning": (
        "Explain your reasoning again in a different way.",
        "Are you sure? Check each step.",
        "How would the answer change if one fact were the opposite?",
    ),
    "math": (
        "Check your answer by a different method.",
        "Explain the steps to a classmate who is stuck.",
        "Now generalise the method to any numbers.",
    ),
    "coding": (
        "Now write three unit tests for it.",
        "What is its time complexity, and can you improve it?",
        "Add type hints and a docstring.",
        "How would you handle invalid input?",
    ),
    "extraction": (
        "Return the same information as a Markdown table.",
        "Which of these facts is the most important? Why?",
        "Now summarise the passage in one sentence.",
    ),
    "stem": (
        "Explain it again for a twelve-year-old.",
        "Give a real-world example and one open question.",
        "Summarise your answer in three bullet points.",
    ),
    "humanities": (
        "Summarise your answer in three bullet points.",
        "What would a critic of that view say?",
        "Recommend two kinds of sources to learn more, and why.",
    ),
}


def conversations(count: int, seed: int, heldout: bool = False) -> list[list[str]]:
    """`count` conversations (lists of user turns), drawn with `random.Random`, kinds in turn."""
    rng = random.Random(f"mtad-conversations-{VERSION}-{seed}-{'heldout' if heldout else 'train'}")
    made = []
    for index in range(count):
        kind = KINDS[index % len(KINDS)]
        first = _FIRST_TURNS[kind](rng, heldout)
        turns = [first]
        if rng.random() < SECOND_TURN_SHARE:
            turns.append(rng.choice(_SECOND_TURNS[kind]))
        made.append(turns)
    return made


def _subject(kind: str, rng: random.Random, heldout: bool) -> str:
    chosen = [s for i, s in enumerate(SUBJECTS[kind]) if (i % HELDOUT_EVERY == HELDOUT_EVERY - 1) == heldout]
    return rng.choice(chosen)


def _writing(rng, heldout):
    form, subject = rng.choice(_FORMS), _subject("writing", rng, heldout)
    extra = rng.choice(("", " Keep it under 150 words.", " Use vivid details.", " End with a surprise."))
    return f"Write {form} about {subject}.{extra}"


def _roleplay(rng, heldout):
    return f"Pretend you are {_subject('roleplay', rng, heldout)}. {rng.choice(_ROLE_REQUESTS)}"


def _reasoning(rng, heldout):
    a, b, c = rng.sample(_NAMES if not heldout else _NAMES[::-1], 3)
    n, m, k = rng.randint(2, 9), rng.randint(2, 12), rng.randint(10, 99)
    return rng.choice(
        (
            f"{a} is older than {b}, and {c} is younger than {b}. Who is the oldest? Explain.",
            f"If {n} workers build {n} sheds in {m} days, "
            f"how many days do {n * 2} workers need for {n * 2} sheds?",
            f"A box holds {k} marbles. All but {n} are blue. How many are not blue? Explain the trick.",
            f"{a} says {b} is lying. {b} says {c} is lying. "
            f"{c} says both {a} and {b} are lying. Who tells the truth?",
            f"Every {a.lower()}-style puzzle has {n} clues and each clue removes {m} options from {k}. "
            "How many options remain? Show your reasoning.",
            f"A clock shows {n}:{m * 5 % 60:02d}. What is the angle between the hands?",
        )
    )


def _math(rng, heldout):
    a, b, c, d = (rng.randint(2, 40) for _ in range(4))
    return rng.choice(
        (
            f"Solve for x: {a}x + {b} = {c * a + b}.",
            f"What is {a}% of {b * 10}? Show the calculation.",
            f"A shop sells notebooks at {a} dollars each, with a {b}% discount on orders above {c}. "
            f"What does an order of {c + d} notebooks cost?",
            f"Find the area of a triangle with vertices (0, 0), ({a}, 0) and ({b}, {c}).",
            f"What is the probability of rolling a total of {min(12, max(2, a % 11 + 2))} "
            "with two fair dice?",
            f"Compute the derivative of f(x) = {a}x^3 - {b}x^2 + {c}x - {d}.",
            f"What is the sum of the integers from {a} to {a + b * 3}?",
            f"A train travels {a * 10} km in {b % 5 + 1} hours. What is its average speed in m/s?",
        )
    )


def _coding(rng, heldout):
    task, language = _subject("coding", rng, heldout), rng.choice(_LANGUAGES)
    return rng.choice(
        (
            f"Write a {language} function that {task}.",
            f"Write a {language} function that {task}, and explain how it works.",
            f"Implement a function that {task} in {language}, with comments.",
        )
    )


def _extraction(rng, heldout):
    names, city, company = rng.sample(_NAMES, 2), rng.choice(_CITIES), rng.choice(_COMPANIES)
    year, amount = rng.randint(1990, 2030), rng.randint(2, 900)
    month = rng.choice(("January", "March", "May", "July", "September", "November"))
    passage = (
        f"In {month} {year}, {company} opened an office in {city}. {names[0]} was named director and "
        f"{names[1]} joined as chief engineer. The company expects revenue of {amount} million euros "
        f"and plans to hire {amount // 3 + 5} people."
    )
    ask = rng.choice(
        (
            "Extract every person, place, organisation, date and number from this text as JSON:",
            "List the people in this text with their roles, then the key figures:",
            "Answer in one line each: who, where, when, how much? Text:",
        )
    )
    return f"{ask}\n{passage}"


def _stem(rng, heldout):
    return rng.choice(_STEM_ASKS).format(s=_subject("stem", rng, heldout))


def _humanities(rng, heldout):
    return rng.choice(_HUMANITIES_ASKS).format(s=_subject("humanities", rng, heldout))


_FIRST_TURNS = {
    "writing": _writing,
    "roleplay": _roleplay,
    "reasoning": _reasoning,
    "math": _math,
    "coding": _coding,
    "extraction": _extraction,
    "stem": _stem,
    "humanities": _humanities,
}


def describe() -> dict:
    """What remakes the conversations exactly, for `data_manifest.json`."""
    return {
        "generator": "mtad.distill.conversations",
        "version": VERSION,
        "method": "random.Random(f'mtad-conversations-{version}-{seed}-{train|heldout}'); kinds in turn; "
        f"a second turn with probability {SECOND_TURN_SHARE}; held-out subjects every {HELDOUT_EVERY}th",
        "kinds": list(KINDS),
        "subjects": {kind: list(values) for kind, values in SUBJECTS.items()},
    }
