"""
A synthetic instruction-following task: the generator and the checker.

Eight small families, each a regex over the instruction and the full set of valid answers
(all but sum_to by default, see DEFAULT_FAMILIES):

    add             what is 47+8?                          55            one answer
    reverse         reverse lamp                           pmal          one answer
    sort            sort dbca                              abcd          one answer
    upper           uppercase cat                          CAT           one answer
    multiple        a multiple of 7 between 20 and 80      21, 28, ..    3 to 40 answers
    sum_to          a digit and a number adding up to 31   1+30, 2+29..  9 answers
    word_start      a word starting with b or c            bag, cab, ..  12 answers (fixed lexicon)
    letter_between  a letter between d and m               e, f, .., l   2 to 24 answers

Training data gives many-answer prompts a uniformly random valid answer, so a teacher's answer
distribution is multimodal, which is where forward and reverse KL students part ways: mixing
two valid answers token by token ('21' and '35' -> '25', 'bus' and 'bag' -> 'bug') gives an
invalid one.

Format: prompt "Q: <instruction>\nA:", response " <answer>", at most 48 and 16 bytes, so a
byte-level block of 64 holds prompt + response + <|endoftext|>.

Held-out prompts: every prompt text hashes to a fixed bucket (10% valid, 10% test, 80% train),
so valid/test prompts never occur in train, whatever the seed and sizes.
"""

import random
import re
import zlib

PROMPT_TEMPLATE = "Q: {instruction}\nA:"
MAX_PROMPT_BYTES = 48
MAX_RESPONSE_BYTES = 16
BLOCK_SIZE = 64  # prompt + response + eot must fit, in bytes = tokens
REFERENCE_LIMIT = 50

LETTERS = "abcdefghijklmnopqrstuvwxyz"

# The fixed lexicon of the word_start family: three-letter words, six per starting letter
# (none for q, u, x). Mixing two of them letter by letter ('bag', 'bus' -> 'bug') leaves it.
LEXICON = """
ant ape arm art ash axe  bag bat bed bee box bus  cab cap car cat cow cup
dam den dog dot dug dye  ear eel egg elf elk elm  fan fig fin fir fox fur
gap gas gem gum gym gut  hat hen hip hog hut hay  ice ink inn ion ivy imp
jam jar jaw jet jog jug  keg key kid kit kin koi  lab lad lap leg lid lip
map mat mob mop mud mug  nap net nib nod nut nun  oak oar oat odd oil owl
pad pan pea pen pig pot  rag ram rat ray rib rug  sap saw sea sip sky sun
tab tag tap tea tin toe  van vat vet vow vim vex  wag wax web wig win wok
yak yam yap yen yes yew  zap zen zip zoo zed zit
""".split()
WORDS_BY_LETTER = {c: [w for w in LEXICON if w[0] == c] for c in sorted({w[0] for w in LEXICON})}


def _letters(rng, lo, hi):
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi)))


def _multiples_between(k, lo, hi):
    # strictly between; generated prompts never put lo or hi on a multiple, so the
    # inclusive reading of "between" gives the same answers on the data.
    return [str(m) for m in range(lo + 1, hi) if k > 0 and m % k == 0]


class Family:
    """One task family: how to sample a prompt, and the full set of valid answers."""

    def __init__(self, name, pattern, sample, answers):
        self.name = name
        self.pattern = re.compile(pattern)
        self.sample = sample      # rng -> instruction text
        self.answers = answers    # regex groups (strings) -> sorted list of valid answers


def _sample_add(rng):
    return f"what is {rng.randint(10, 99)}+{rng.randint(2, 9)}?"


def _sample_multiple(rng):
    while True:
        k = rng.randint(2, 9)
        lo = rng.randint(1, 70)
        hi = rng.randint(lo + 3 * k, 99) if lo + 3 * k <= 99 else None
        if hi is not None and lo % k and hi % k and len(_multiples_between(k, lo, hi)) >= 3:
            return f"a multiple of {k} between {lo} and {hi}"


def _sample_letter_between(rng):
    i = rng.randint(0, 22)
    j = rng.randint(i + 3, 25)
    return f"a letter between {LETTERS[i]} and {LETTERS[j]}"


def _sample_word_start(rng):
    first, second = rng.sample(sorted(WORDS_BY_LETTER), 2)
    return f"a word starting with {first} or {second}"


FAMILIES = {f.name: f for f in [
    # one answer
    Family("add", r"what is (\d{1,3})\+(\d{1,3})\?", _sample_add,
           lambda a, b: [str(int(a) + int(b))]),
    Family("reverse", r"reverse ([a-z]{1,12})", lambda rng: f"reverse {_letters(rng, 3, 5)}",
           lambda s: [s[::-1]]),
    Family("sort", r"sort ([a-z]{1,12})", lambda rng: f"sort {_letters(rng, 3, 4)}",
           lambda s: ["".join(sorted(s))]),
    Family("upper", r"uppercase ([a-z]{1,12})", lambda rng: f"uppercase {_letters(rng, 3, 6)}",
           lambda s: [s.upper()]),
    # many answers
    Family("multiple", r"a multiple of (\d) between (\d{1,3}) and (\d{1,3})", _sample_multiple,
           lambda k, lo, hi: _multiples_between(int(k), int(lo), int(hi))),
    Family("sum_to", r"a digit and a number adding up to (\d{1,3})",
           lambda rng: f"a digit and a number adding up to {rng.randint(20, 99)}",
           lambda n: [f"{a}+{int(n) - a}" for a in range(1, 10) if int(n) - a >= 1]),
    Family("word_start", r"a word starting with ([a-z]) or ([a-z])", _sample_word_start,
           lambda a, b: sorted(w for w in LEXICON if w[0] in (a, b))),
    Family("letter_between", r"a letter between ([a-z]) and ([a-z])", _sample_letter_between,
           lambda a, b: [c for c in LETTERS if a < c < b]),
]}
TASKS = tuple(FAMILIES)
SINGLE_ANSWER = ("add", "reverse", "sort", "upper")
# sum_to is opt-in: held-out sums need 2-digit subtraction, which a ~1M-parameter model only
# picks up after ~1500 steps of 64 examples (measured: 0.16 greedy validity after 1000 steps,
# 1.0 after 1500), while the other seven reach >= 0.96 but add (~0.7-0.9) by 1000 steps.
DEFAULT_FAMILIES = tuple(f for f in TASKS if f != "sum_to")


def _instruction(prompt):
    """Accept a full 'Q: ...\\nA:' prompt or a bare instruction."""
    if prompt.startswith("Q: ") and prompt.endswith("\nA:"):
        return prompt[3:-3]
    return prompt


def _parse(prompt):
    """(family, all valid answers) for a prompt, or (None, []) if no family matches."""
    if not isinstance(prompt, str):
        return None, []
    instruction = _instruction(prompt)
    for family in FAMILIES.values():
        m = family.pattern.fullmatch(instruction)
        if m:
            return family.name, family.answers(*m.groups())
    return None, []


def task_of(prompt):
    """The family name of a prompt, or None."""
    return _parse(prompt)[0]


def reference_answers(prompt, limit=REFERENCE_LIMIT):
    """Valid answers of a prompt, sorted; evenly spaced down to `limit` if there are more.
    Empty for a prompt of no family."""
    answers = _parse(prompt)[1]
    if limit is not None and len(answers) > limit:
        step = (len(answers) - 1) / (limit - 1)
        answers = [answers[round(i * step)] for i in range(limit)]
    return answers


def is_valid(prompt, answer):
    """True iff `answer`, stripped of surrounding whitespace, is a correct answer to `prompt`.
    Never raises: garbage prompts or answers are simply invalid."""
    if not isinstance(answer, str):
        return False
    return answer.strip() in _parse(prompt)[1]


def heldout_split(prompt):
    """'train', 'valid' or 'test': a fixed function of the prompt text (CRC32 mod 10)."""
    bucket = zlib.crc32(prompt.encode("utf-8")) % 10
    return "valid" if bucket == 0 else "test" if bucket == 1 else "train"


def make_example(family, rng):
    """One example of `family` with a uniformly random valid answer, drawn with `rng`
    (a random.Random)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown toy task family {family!r}; choose from {', '.join(TASKS)}")
    instruction = FAMILIES[family].sample(rng)
    prompt = PROMPT_TEMPLATE.format(instruction=instruction)
    answers = FAMILIES[family].answers(*FAMILIES[family].pattern.fullmatch(instruction).groups())
    response = " " + rng.choice(answers)
    assert len(prompt.encode()) <= MAX_PROMPT_BYTES, prompt
    assert len(response.encode()) <= MAX_RESPONSE_BYTES, response
    assert len(prompt.encode()) + len(response.encode()) + 1 <= BLOCK_SIZE
    return {"prompt": prompt, "response": response,
            "references": reference_answers(prompt), "task": family}


def generate(split, n, seed, families=DEFAULT_FAMILIES):
    """n examples for `split`, families drawn uniformly, prompts restricted to the split's
    hash bucket. Deterministic in (split, n, seed, families). Train repeats prompts (with fresh
    random answers for many-answer families); valid/test may too, but never share a prompt
    with train or with each other."""
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be train, valid or test, got {split!r}")
    for f in families:
        if f not in FAMILIES:
            raise ValueError(f"unknown toy task family {f!r}; choose from {', '.join(TASKS)}")
    rng = random.Random(f"toy_instruct/{seed}/{split}")
    examples = []
    for _ in range(n):
        family = rng.choice(list(families))  # drawn first, so families stay balanced in every split
        for _attempt in range(10_000):
            ex = make_example(family, rng)
            if heldout_split(ex["prompt"]) == split:
                examples.append(ex)
                break
        else:
            raise RuntimeError(f"family {family} has no {split} prompts")
    return examples
