"""The offline suite: four seeded generators mirroring the paper's heterogeneous mix.

- ``arithmetic``: one-step word problems, exact match on the number (like GSM8K, much easier).
- ``logic``: ordering puzzles, answer chosen among 3 names by log-likelihood (like LogiQA).
- ``program``: "what does this program print", exact match on the output (code).
- ``format``: instruction following (reverse / uppercase / sort words), exact match.
"""

from __future__ import annotations

import random

from bench.suite.tasks.base import Row, Task

NAMES = ["Ann", "Bob", "Cat", "Dan", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim", "Lea"]
ITEMS = ["apples", "books", "coins", "pens", "cards", "shells", "stamps", "eggs"]
WORDS = ["sun", "tree", "bird", "lake", "stone", "cloud", "river", "moon", "leaf", "road", "fish", "rain"]


def arithmetic(rng: random.Random) -> Row:
    who, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 30), rng.randint(1, 20)
    if rng.random() < 0.5:
        q, ans = f"{who} has {a} {item} and gets {b} more. How many {item} does {who} have now?", a + b
    else:
        a, b = max(a, b), min(a, b)
        q, ans = f"{who} has {a} {item} and gives away {b}. How many {item} are left?", a - b
    return {"prompt": f"Question: {q}\nAnswer:", "target": str(ans)}


def logic(rng: random.Random) -> Row:
    people = rng.sample(NAMES, 3)  # people[0] > people[1] > people[2]
    adj, most, least = rng.choice([("taller", "tallest", "shortest"), ("older", "oldest", "youngest"),
                                   ("faster", "fastest", "slowest")])
    facts = [f"{people[0]} is {adj} than {people[1]}.", f"{people[1]} is {adj} than {people[2]}."]
    rng.shuffle(facts)
    top = rng.random() < 0.5
    choices = sorted(people)
    answer = people[0] if top else people[2]
    q = f"{' '.join(facts)} Who is the {most if top else least}?"
    return {"prompt": f"Question: {q}\nAnswer:", "target": answer, "choices": choices,
            "gold": choices.index(answer)}


def program(rng: random.Random) -> Row:
    x, y, k = rng.randint(1, 9), rng.randint(1, 9), rng.randint(2, 4)
    op, fn = rng.choice([("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("*", lambda a, b: a * b)])
    if rng.random() < 0.5:
        code, out = f"x = {x}\ny = {y}\nprint(x {op} y)", fn(x, y)
    else:
        code, out = f"x = {x}\nfor i in range({k}):\n    x = x {op} {y}\nprint(x)", x
        for _ in range(k):
            out = fn(out, y)
    return {"prompt": f"Program:\n{code}\nOutput:", "target": str(out)}


def format_following(rng: random.Random) -> Row:
    words = rng.sample(WORDS, 3)
    kind = rng.choice(["reverse", "upper", "sort"])
    if kind == "reverse":
        instr, out = "Reverse the order of the words", " ".join(reversed(words))
    elif kind == "upper":
        instr, out = "Write the words in capital letters", " ".join(words).upper()
    else:
        instr, out = "Sort the words alphabetically", " ".join(sorted(words))
    return {"prompt": f"Instruction: {instr}: {' '.join(words)}\nResponse:", "target": out}


# Distinct prompts of each generator, counted from its choices. arithmetic: "gets more" 12 names x
# 8 items x 29 x 20 = 55,680, plus "gives away" 96 x 409 (max, min) pairs = 39,264; logic: 1,320
# ordered triples x 3 relations x 2 fact orders x 2 questions; program: 9 x 9 x 3 + 9 x 9 x 3 x 3;
# format: 1,320 ordered word triples x 3 instructions.
DISTINCT = {"arithmetic": 94_944, "logic": 15_840, "program": 972, "format": 3_960}

OFFLINE_TASKS = [
    Task("arithmetic", "math", "generate", arithmetic, "one-step word problems, exact match on the number",
         distinct=DISTINCT["arithmetic"]),
    Task("logic", "logic", "choice", logic, "ordering puzzles, 3 names, log-likelihood accuracy",
         distinct=DISTINCT["logic"]),
    Task("program", "code", "generate", program, "what does this program print, exact match",
         distinct=DISTINCT["program"]),
    Task("format", "instructions", "generate", format_following, "reverse/uppercase/sort 3 words, exact match",
         distinct=DISTINCT["format"]),
]
