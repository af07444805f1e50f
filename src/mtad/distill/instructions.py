"""A deterministic, seeded generator of varied instructions: topics x task types x modifiers.

The draft learns from text the target writes in answer to these. They are made here from short
templates written for mtad, never taken from an evaluation set, so they cannot repeat MT-Bench,
HumanEval or Spider prompts; `overlap_with` checks that claim against any prompt list at hand.
Held-out topics are disjoint from training topics so held-out scores measure generalisation.
"""

from __future__ import annotations

import hashlib
import random

GENERATOR_VERSION = 1

TOPICS = (
    "volcanoes",
    "honeybees",
    "the water cycle",
    "bread baking",
    "chess openings",
    "solar panels",
    "the Roman aqueducts",
    "jazz improvisation",
    "coral reefs",
    "bicycle maintenance",
    "compound interest",
    "black holes",
    "urban gardening",
    "the printing press",
    "marathon training",
    "photosynthesis",
    "knitting",
    "electric cars",
    "the immune system",
    "origami",
    "tea ceremonies",
    "glaciers",
    "public libraries",
    "board game design",
    "sleep hygiene",
    "lighthouses",
    "recycling plastics",
    "the stock market",
    "birdwatching",
    "pottery",
    "railway history",
    "quantum computing",
    "rainforests",
    "first aid",
    "composting",
    "mountain climbing",
    "podcasting",
    "wind turbines",
    "ancient Egypt",
    "cheese making",
    "time management",
    "octopuses",
    "street food",
    "satellites",
    "minimalism",
    "wildfires",
    "sourdough starters",
    "desert ecosystems",
    "video game music",
    "vaccines",
    "camping",
    "renewable energy",
    "the Silk Road",
    "chocolate",
    "earthquakes",
    "language learning",
    "bees and pollination",
    "container shipping",
    "meditation",
    "typography",
    "weather forecasting",
    "museums",
    "the moon landing",
    "home insulation",
    "sea turtles",
)

TASKS = (
    "Explain {topic} to a ten-year-old.",
    "Write a short poem about {topic}.",
    "List five interesting facts about {topic}.",
    "Give three tips for a beginner interested in {topic}.",
    "Summarize the history of {topic} in a paragraph.",
    "What are the main benefits and drawbacks of {topic}?",
    "Write a short story in which {topic} plays a central role.",
    "Describe a common misconception about {topic} and correct it.",
    "Write a friendly email inviting a colleague to a talk on {topic}.",
    "Compare {topic} with something from everyday life using an analogy.",
    "Write a product description for a book about {topic}.",
    "Create a quiz with three questions about {topic}, with answers.",
    "What questions would a journalist ask an expert on {topic}?",
    "Outline a five-minute presentation on {topic}.",
    "Write a Python function that stores notes about {topic} in a dictionary and prints them sorted.",
    "Write a Python class representing an item related to {topic}, with two methods.",
    "Write a SQL query that counts rows per category in a table of records about {topic}.",
    "Design a simple database table for tracking {topic}; give the CREATE TABLE statement.",
    "Explain step by step how someone could start learning about {topic}.",
    "Write a dialogue between two friends discussing {topic}.",
    "Give a one-sentence definition of {topic}, then expand on it.",
    "Why might someone find {topic} boring, and how would you change their mind?",
    "Write a haiku about {topic}.",
    "Plan a one-day workshop about {topic} for adults.",
)

MODIFIERS = (
    "",
    "",
    "",
    " Keep it brief.",
    " Use simple words.",
    " Answer in a numbered list.",
    " Be precise.",
    " Write in a cheerful tone.",
)

HELDOUT_EVERY = 8  # every 8th topic is reserved for held-out instructions


def split_topics(heldout: bool) -> tuple[str, ...]:
    return tuple(t for i, t in enumerate(TOPICS) if (i % HELDOUT_EVERY == HELDOUT_EVERY - 1) == heldout)


def instructions(count: int, seed: int, heldout: bool = False) -> list[str]:
    """`count` instructions drawn with `random.Random(seed)` from (topic, task, modifier) triples."""
    rng = random.Random(f"mtad-instructions-{GENERATOR_VERSION}-{seed}-{'heldout' if heldout else 'train'}")
    topics = split_topics(heldout)
    made = []
    for _ in range(count):
        task, topic, modifier = rng.choice(TASKS), rng.choice(topics), rng.choice(MODIFIERS)
        made.append(task.format(topic=topic) + modifier)
    return made


def fingerprint(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def overlap_with(ours: list[str], theirs: list[str], n: int = 6) -> int:
    """How many of `ours` share a word n-gram with any of `theirs` (0 means no overlap)."""
    their_grams = set().union(*(_ngrams(t, n) for t in theirs)) if theirs else set()
    return sum(1 for text in ours if _ngrams(text, n) & their_grams)


def describe() -> dict:
    """Everything needed to remake the instruction lists exactly, for `data_manifest.json`."""
    return {
        "generator": "mtad.distill.instructions",
        "version": GENERATOR_VERSION,
        "method": "random.Random(f'mtad-instructions-{version}-{seed}-{train|heldout}'); per item "
        "choice(TASKS), choice(topics of the split), choice(MODIFIERS)",
        "topics": list(TOPICS),
        "tasks": list(TASKS),
        "modifiers": list(MODIFIERS),
        "heldout_topics": list(split_topics(heldout=True)),
    }
