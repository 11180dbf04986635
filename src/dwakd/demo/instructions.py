"""A self-written instruction set for the demo: prompts generated from templates and topics.

No copied data: every template and topic below was written for dwakd. The teacher answers the
prompts to form the training targets (sequence-level distillation data); held-out prompts use
topics the training split never sees, so evaluation measures generalisation, not recall.
"""

from __future__ import annotations

import random

TOPICS = [
    "photosynthesis", "the water cycle", "volcanoes", "the moon", "rainbows", "honey bees", "glaciers",
    "the human heart", "electric circuits", "magnets", "recycling", "the internet", "bicycles", "bread",
    "coffee", "tides", "earthquakes", "the solar system", "vaccines", "clouds", "deserts", "rain forests",
    "the printing press", "solar panels", "wind turbines", "compost", "sleep", "exercise", "maps",
    "libraries", "trains", "airplanes", "bridges", "music", "chess", "gardening", "penguins", "owls",
    "sharks", "dolphins", "mountains", "rivers", "oceans", "snow", "thunderstorms", "batteries",
    "telescopes", "microscopes", "dinosaurs", "fossils", "seasons", "gravity", "friction", "soap",
    "email", "passwords", "spreadsheets", "budgets", "umbrellas", "lighthouses",
]
COUNTRIES = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("Canada", "Ottawa"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"),
    ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Poland", "Warsaw"),
    ("Austria", "Vienna"), ("Sweden", "Stockholm"), ("Chile", "Santiago"), ("Thailand", "Bangkok"),
]
CATEGORIES = ["fruits", "vegetables", "colours", "animals that live in the sea", "musical instruments",
              "kitchen tools", "sports", "planets", "birds", "trees", "metals", "board games"]
WORDS = ["bright", "quiet", "journey", "harvest", "gentle", "storm", "window", "garden", "river", "market"]

TOPIC_TEMPLATES = [
    "Explain {topic} in two sentences.",
    "What is the most important thing to know about {topic}?",
    "Give two interesting facts about {topic}.",
    "Describe {topic} to a ten-year-old.",
    "Why do people care about {topic}?",
    "Write one sentence that teaches something about {topic}.",
]
OTHER_TEMPLATES = [
    ("What is the capital of {country}?", "country"),
    ("Name three {category}.", "category"),
    ("Write a short sentence using the word '{word}'.", "word"),
    ("What is {a} plus {b}?", "sum"),
]


def _fill(template: str, kind: str, rng: random.Random) -> str:
    if kind == "country":
        return template.format(country=rng.choice(COUNTRIES)[0])
    if kind == "category":
        return template.format(category=rng.choice(CATEGORIES))
    if kind == "word":
        return template.format(word=rng.choice(WORDS))
    return template.format(a=rng.randint(2, 40), b=rng.randint(2, 40))


def generate_instructions(n_train: int, n_test: int, *, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Return ``(train, test)`` lists of Dolly-format records ``{"instruction", "context"}``.

    Test prompts use topics held out from training (the last fifth of :data:`TOPICS`, shuffled
    by ``seed``); instructions are unique within and across the two splits.
    """
    rng = random.Random(seed)
    topics = TOPICS[:]
    rng.shuffle(topics)
    cut = len(topics) * 4 // 5
    train_topics, test_topics = topics[:cut], topics[cut:]

    def make(n: int, pool: list[str], seen: set[str]) -> list[dict]:
        out: list[dict] = []
        tries = 0
        while len(out) < n and tries < 50 * n:
            tries += 1
            if rng.random() < 0.75:
                text = rng.choice(TOPIC_TEMPLATES).format(topic=rng.choice(pool))
            else:
                template, kind = rng.choice(OTHER_TEMPLATES)
                text = _fill(template, kind, rng)
            if text not in seen:
                seen.add(text)
                out.append({"instruction": text, "context": ""})
        return out

    seen: set[str] = set()
    train = make(n_train, train_topics, seen)
    test = make(n_test, test_topics, seen)
    return train, test
