"""A second, smaller set written after the verifier's thresholds were chosen and measured
once with them (docs/cache.md): a check that the figures of the main set are not only the
tuning's. CC0-1.0 like the main set. ``python fresh_pairs.py > fresh_pairs.json``, then
``midway cache eval --pairs fresh_pairs.json``."""

from __future__ import annotations

import json

HIT = [
    ("How do I make my bash prompt show the git branch?",
     "How can I show the current git branch in my bash prompt?"),
    ("What's a good way to learn touch typing?", "How should I go about learning touch typing?"),
    ("How do I stop my cat from scratching the sofa?",
     "How can I keep my cat from scratching the couch?"),
    ("Explain the difference between RAM and storage.",
     "What is the difference between RAM and storage?"),
    ("How do I freeze fresh basil?", "What's the best way to freeze fresh basil?"),
    ("Why does my car battery keep dying?", "Why does my car's battery keep going flat?"),
    ("How do I take a screenshot on Windows 11?", "How can I capture a screenshot on Windows 11?"),
    ("What is a Roth IRA?", "Can you explain what a Roth IRA is?"),
    ("How do I remove duplicates from a list in Python?",
     "How can I get rid of duplicates in a Python list?"),
    ("How do I change the default shell on macOS?", "How can I switch my default shell on macOS?"),
    ("What does a product manager do?", "What is the job of a product manager?"),
    ("How long should I boil an egg for a runny yolk?",
     "How many minutes should I boil an egg to get a runny yolk?"),
    ("How do I clear the DNS cache on a Mac?", "How can I flush the DNS cache on a Mac?"),
    ("What's the etiquette for tipping in Japan?", "What are the tipping customs in Japan?"),
    ("How do I write a cover letter for an internship?",
     "How should I write a cover letter for an internship?"),
    ("How do I set up SSH keys for GitHub?", "How can I configure SSH keys for GitHub?"),
    ("Why do onions make you cry?", "What makes onions make people cry?"),
    ("How can I improve my sleep quality?", "What can I do to sleep better?"),
    ("How do I print a table in LaTeX?", "How do I make a table in LaTeX?"),
    ("WHAT TIME DOES THE POST OFFICE CLOSE?", "What time does the post office close?"),
    ("i cant log into my account", "I can't log in to my account"),
    ("How do I convert a PDF to Word?", "How can I turn a PDF into a Word document?"),
    ("What are the rules of chess castling?", "How does castling work in chess?"),
    ("How do I calm down before an exam?", "How can I calm my nerves before an exam?"),
    ("Is it OK to run a dishwasher half full?", "Is it fine to run the dishwasher half full?"),
]
TRAP = [
    ("How do I make my bash prompt show the git branch?",
     "How do I make my zsh prompt show the git branch?"),
    ("How long should I boil an egg for a runny yolk?",
     "How long should I boil an egg for a hard yolk?"),
    ("How do I take a screenshot on Windows 11?", "How do I take a screenshot on Windows 10?"),
    ("What is a Roth IRA?", "What is a traditional IRA?"),
    ("How do I freeze fresh basil?", "How do I dry fresh basil?"),
    ("Is the pharmacy open until 9pm?", "Is the pharmacy open until 9am?"),
    ("Is the hike suitable for beginners?", "Is the hike unsuitable for beginners?"),
    ("Can I bring my dog into the restaurant?", "Can't I bring my dog into the restaurant?"),
    ("Is lunch included in the course fee?", "Is lunch excluded from the course fee?"),
    ("Do you open on weekends?", "Do you open on weekdays?"),
    ("How do I remove duplicates from a list in Python?",
     "How do I keep only duplicates in a list in Python?"),
    ("Convert 30 degrees Celsius to Fahrenheit.", "Convert 30 degrees Fahrenheit to Celsius."),
    ("How many teaspoons are in a tablespoon?", "How many tablespoons are in a teaspoon?"),
    ("What's the tallest mountain in Africa?", "What's the tallest mountain in Europe?"),
    ("How do I lose weight fast?", "How do I gain weight fast?"),
    ("Is it legal to drive barefoot in the UK?", "Is it illegal to drive barefoot in the UK?"),
    ("What are the side effects of melatonin?", "What are the benefits of melatonin?"),
    ("How do I turn off dark mode in Chrome?", "How do I turn on dark mode in Chrome?"),
    ("How do I sign in to Outlook?", "How do I sign out of Outlook?"),
    ("Write a poem about the sea.", "Write a poem about the desert."),
    ("What year did the Berlin Wall fall?", "What year was the Berlin Wall built?"),
    ("How do I decrease my screen brightness?", "How do I increase my screen brightness?"),
    ("Is coffee bad for your heart?", "Is coffee good for your heart?"),
    ("Which is heavier, a kilo of feathers or a kilo of steel?",
     "Which is heavier, a pound of feathers or a kilo of steel?"),
    ("Set a reminder for Tuesday at 8.", "Set a reminder for Thursday at 8."),
]
HISTORY = [({"role": "user", "content": "I use a Kindle."},
            {"role": "user", "content": "I use a Kobo."}),
           ({"role": "user", "content": "My budget is 500 euros."},
            {"role": "user", "content": "My budget is 5000 euros."})]
REPLY = {"role": "assistant", "content": "Noted."}

pairs = [{"kind": "fresh-paraphrase", "should_hit": True, "a": a, "b": b} for a, b in HIT]
pairs += [{"kind": "fresh-trap", "should_hit": False, "a": a, "b": b} for a, b in TRAP]
for h1, h2 in HISTORY:
    for q in ("How do I add books to it?", "What would you recommend?"):
        pairs.append({"kind": "fresh-multi-turn", "should_hit": False, "a": q, "b": q,
                      "context_a": [h1, REPLY], "context_b": [h2, REPLY]})
print(json.dumps({"licence": "CC0-1.0", "pairs": pairs}, indent=1))
