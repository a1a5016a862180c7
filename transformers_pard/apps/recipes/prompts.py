"""A training prompt set of our own, generated from templates (no download, no benchmark prompts).

Three families, mixed: grade-school arithmetic word problems, "complete this Python function" tasks,
and general instructions. The draft learns to predict the *target's answers* to these (self-
distillation), so the prompts only need to cover the kinds of requests the model will serve.
"""

from __future__ import annotations

import random

NAMES = [
    "Maya", "Liam", "Sofia", "Noah", "Aisha", "Mateo", "Hana", "Omar", "Greta", "Ravi", "Chloe", "Diego",
    "Ingrid", "Kofi", "Lena", "Tariq", "Yuki", "Bruno", "Nadia", "Felix", "Zara", "Emeka", "Priya", "Tomas",
]
ITEMS = [
    ("apple", "apples"), ("marble", "marbles"), ("book", "books"), ("pencil", "pencils"), ("cookie", "cookies"),
    ("sticker", "stickers"), ("shell", "shells"), ("card", "cards"), ("cupcake", "cupcakes"), ("toy car", "toy cars"),
]
PLACES = ["the market", "the bakery", "a bookstore", "the fair", "a garage sale", "the school shop"]

MATH_TEMPLATES = [
    "{a} has {x} {ps}. {b} gives {a} {y} more {ps}, and then {a} gives away {z}. How many {ps} does {a} have now?",
    "{a} buys {x} {ps} at {place} for ${p} each and pays with a ${bill} bill. How much change does {a} get?",
    "A box holds {x} {ps}. {a} fills {y} boxes and has {z} {ps} left over. How many {ps} did {a} start with?",
    "{a} reads {x} pages every day. How many days does it take to finish a book with {tot} pages?",
    "{a} saves ${x} each week. After {y} weeks {a} spends ${z} on a gift. How much money is left?",
    "The ratio of {a}'s {ps} to {b}'s {ps} is {r1}:{r2}. Together they have {tot} {ps}. How many does {b} have?",
    "A train travels at {x} miles per hour for {y} hours and then at {z} miles per hour for {w} hours. "
    "How far does it travel in total?",
    "{a} is {x} years old. {b} is {y} years older than twice {a}'s age. How old will {b} be in {z} years?",
    "A shirt costs ${x}. It is on sale for {pct}% off. {a} buys {y} shirts. How much does {a} pay?",
    "{a} and {b} share {tot} {ps} so that {a} gets {x} more than {b}. How many {ps} does each get?",
    "A garden has {x} rows with {y} plants in each row. {a} picks {z} tomatoes from every plant. "
    "How many tomatoes does {a} pick?",
    "{a} runs {x} laps of a {y}-meter track on Monday and {z} laps on Tuesday. How many meters is that altogether?",
    "A bakery makes {x} {ps} in the morning and {y} in the afternoon. It sells {pct}% of them. How many are left?",
    "{a} earns ${x} per hour and works {y} hours a day for {z} days. Taxes take {pct}% of it. What is the take-home pay?",
]

FUNCTIONS = [
    ("count_vowels", "s: str", "Return the number of vowels (a, e, i, o, u) in the string s, ignoring case.",
     ["count_vowels('Hello') == 2", "count_vowels('xyz') == 0"]),
    ("reverse_words", "sentence: str", "Return the sentence with the order of its words reversed.",
     ["reverse_words('a b c') == 'c b a'"]),
    ("is_palindrome_number", "n: int", "Return True if the decimal digits of n read the same backwards.",
     ["is_palindrome_number(121) == True", "is_palindrome_number(10) == False"]),
    ("running_total", "numbers: list", "Return a list where element i is the sum of numbers[0..i].",
     ["running_total([1, 2, 3]) == [1, 3, 6]"]),
    ("second_largest", "values: list", "Return the second largest distinct value, or None if there is none.",
     ["second_largest([4, 1, 4, 3]) == 3", "second_largest([2]) == None"]),
    ("chunk_list", "items: list, size: int", "Split items into consecutive chunks of length size.",
     ["chunk_list([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]"]),
    ("word_lengths", "text: str", "Return a dict mapping each word of text to its length.",
     ["word_lengths('hi there') == {'hi': 2, 'there': 5}"]),
    ("celsius_to_fahrenheit", "temps: list", "Convert a list of Celsius temperatures to Fahrenheit.",
     ["celsius_to_fahrenheit([0, 100]) == [32.0, 212.0]"]),
    ("count_pairs_with_sum", "nums: list, target: int", "Count index pairs i < j with nums[i] + nums[j] == target.",
     ["count_pairs_with_sum([1, 2, 3, 4], 5) == 2"]),
    ("flatten", "nested: list", "Flatten a list of lists by one level.", ["flatten([[1, 2], [3]]) == [1, 2, 3]"]),
    ("most_common_char", "s: str", "Return the most frequent character of s (the first one on ties).",
     ["most_common_char('abca') == 'a'"]),
    ("digits_sum", "n: int", "Return the sum of the decimal digits of the absolute value of n.",
     ["digits_sum(-123) == 6"]),
    ("remove_duplicates", "items: list", "Remove duplicates from items while keeping the first occurrence order.",
     ["remove_duplicates([3, 1, 3, 2, 1]) == [3, 1, 2]"]),
    ("caesar_shift", "text: str, k: int", "Shift every lowercase letter of text by k places, wrapping around z.",
     ["caesar_shift('abz', 1) == 'bca'"]),
    ("is_sorted", "values: list", "Return True if values is sorted in non-decreasing order.",
     ["is_sorted([1, 2, 2, 5]) == True", "is_sorted([3, 1]) == False"]),
    ("matrix_transpose", "m: list", "Return the transpose of a rectangular matrix given as a list of rows.",
     ["matrix_transpose([[1, 2], [3, 4]]) == [[1, 3], [2, 4]]"]),
    ("count_words_starting_with", "text: str, letter: str", "Count the words of text that start with letter.",
     ["count_words_starting_with('big blue sky', 'b') == 2"]),
    ("gcd_list", "numbers: list", "Return the greatest common divisor of all numbers in the list.",
     ["gcd_list([12, 18, 24]) == 6"]),
    ("to_snake_case", "name: str", "Convert a CamelCase name to snake_case.", ["to_snake_case('HelloWorld') == 'hello_world'"]),
    ("nth_fibonacci", "n: int", "Return the n-th Fibonacci number with fib(0) = 0 and fib(1) = 1.",
     ["nth_fibonacci(7) == 13"]),
    ("merge_sorted", "a: list, b: list", "Merge two sorted lists into one sorted list.",
     ["merge_sorted([1, 4], [2, 3]) == [1, 2, 3, 4]"]),
    ("longest_word", "sentence: str", "Return the longest word in the sentence (the first one on ties).",
     ["longest_word('a quick fox') == 'quick'"]),
    ("product_except_self", "nums: list", "Return a list where element i is the product of all other elements.",
     ["product_except_self([1, 2, 3]) == [6, 3, 2]"]),
    ("is_anagram", "a: str, b: str", "Return True if a and b contain the same letters, ignoring spaces and case.",
     ["is_anagram('Dormitory', 'dirty room') == True"]),
]
CODE_STYLES = [
    "Complete the code I provided.\n\n{code}",
    "Complete the following Python function.\n\n{code}",
    "Write the body of this function.\n{code}",
    "Finish this Python code so that the examples pass.\n\n{code}",
]

TOPICS = [
    "photosynthesis", "the water cycle", "how vaccines work", "compound interest", "black holes", "recursion",
    "the French Revolution", "how a bicycle stays upright", "machine learning", "the immune system", "volcanoes",
    "binary search", "supply and demand", "how bread rises", "plate tectonics", "the internet", "climate change",
]
INSTRUCTIONS = [
    "Explain {topic} in simple terms.",
    "Give three key facts about {topic}.",
    "Write a short paragraph for a ten-year-old about {topic}.",
    "What are common misconceptions about {topic}?",
    "Summarize {topic} in five bullet points.",
    "Write a short poem about {topic}.",
]


def _math_prompt(rng: random.Random) -> str:
    a, b = rng.sample(NAMES, 2)
    s, ps = rng.choice(ITEMS)
    r1, r2 = rng.randint(2, 9), rng.randint(2, 9)
    values = dict(
        a=a, b=b, s=s, ps=ps, place=rng.choice(PLACES), x=rng.randint(3, 60), y=rng.randint(2, 30),
        z=rng.randint(1, 20), w=rng.randint(1, 9), p=rng.randint(1, 12), bill=rng.choice([20, 50, 100]),
        pct=rng.choice([10, 15, 20, 25, 30, 40, 50]), r1=r1, r2=r2, tot=(r1 + r2) * rng.randint(3, 20),
    )
    return rng.choice(MATH_TEMPLATES).format(**values)


def _code_prompt(rng: random.Random) -> str:
    name, args, doc, examples = rng.choice(FUNCTIONS)
    shown = "\n".join(f"    >>> {example}" for example in examples)
    code = f'def {name}({args}):\n    """{doc}\n{shown}\n    """\n'
    return rng.choice(CODE_STYLES).format(code=code)


def _function_request(rng: random.Random) -> str:
    name, args, doc, _ = rng.choice(FUNCTIONS)
    task = doc[0].lower() + doc[1:].rstrip(".")
    return rng.choice([
        "Write a Python function `{name}({args})` that does the following: {task}.",
        "Implement `{name}` in Python. It should {task}. Include a docstring.",
        "In Python, how would I {task}? Show a function named {name}.",
    ]).format(name=name, args=args, task=task.replace("Return", "return"))


def _instruction_prompt(rng: random.Random) -> str:
    return rng.choice(INSTRUCTIONS).format(topic=rng.choice(TOPICS))


FAMILIES = {"math": _math_prompt, "code": _code_prompt, "function": _function_request, "general": _instruction_prompt}


def build_prompt_records(n: int, *, seed: int = 0, mix: dict[str, float] | None = None) -> list[tuple[str, str]]:
    """``n`` distinct ``(family, prompt)`` pairs drawn in proportion ``mix`` (default 45/20/15/20).

    The non-arithmetic families have a few hundred distinct prompts in all; once they are used up,
    the remaining prompts are arithmetic. A mix that cannot give ``n`` distinct prompts is refused."""
    mix = mix or {"math": 0.45, "code": 0.20, "function": 0.15, "general": 0.20}
    rng = random.Random(seed)
    families, weights = zip(*mix.items())
    records, seen = [], set()
    attempts = 0
    while len(records) < n and attempts < 50 * n:
        attempts += 1
        family = rng.choices(families, weights)[0]
        prompt = FAMILIES[family](rng)
        if prompt not in seen:
            seen.add(prompt)
            records.append((family, prompt))
    if len(records) < n:
        raise ValueError(f"The prompt families {list(families)} yield only {len(records)} distinct prompts, "
                         f"fewer than the {n} asked for; add 'math' (unbounded) to the mix or ask for fewer.")
    return records


def build_prompts(n: int, *, seed: int = 0, mix: dict[str, float] | None = None) -> list[str]:
    """``n`` distinct prompts (see ``build_prompt_records``)."""
    return [prompt for _, prompt in build_prompt_records(n, seed=seed, mix=mix)]
