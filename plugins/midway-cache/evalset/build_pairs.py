"""Builds ``src/midway_cache/data/eval_pairs.json``, the labelled set of ``midway cache eval``.

Every pair here was written for midway (no public benchmark's pairs); the set is dedicated to
the public domain (CC0-1.0, see LICENSE in this folder). Deterministic: the same script gives
the same file. Run ``python plugins/midway-cache/evalset/build_pairs.py`` after editing it.

Families (``kind``): paraphrases that should be served —
``paraphrase-wording`` (other words, same question), ``paraphrase-syntax`` (another sentence
structure: fronted clause, passive, question vs imperative), ``paraphrase-surface`` (case,
contractions, punctuation, filler and politeness words), ``multi-turn-same`` (the same earlier
turns, the last one paraphrased) — and traps that must not be:
``numbers``, ``times`` (7am/7pm), ``negation``, ``antonym`` (safe/unsafe), ``inclusion``
(included/excluded), ``days`` (weekdays/weekends), ``entity-swap`` (USD→EUR / EUR→USD),
``entity-change`` (Python/Java), ``scope`` (all/only, first/last, more/less),
``multi-turn-different`` (the same last turn after different earlier turns).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "src" / "midway_cache" / "data" / "eval_pairs.json"

# (a, [paraphrases]) written by hand: each paraphrase asks exactly what ``a`` asks
WORDING: list[tuple[str, list[str]]] = [
    ("How do I reverse a list in Python?", ["How can I reverse a Python list?",
     "What's the way to reverse a list in Python?"]),
    ("What is the capital of France?", ["Which city is the capital of France?",
     "Name the capital city of France."]),
    ("How do I undo the last git commit?", ["How can I revert my most recent git commit?",
     "What's the way to undo my latest git commit?"]),
    ("How do I start a Docker container?", ["How do I begin running a Docker container?",
     "How can I launch a Docker container?"]),
    ("What does HTTP status 404 mean?", ["What is the meaning of HTTP status 404?",
     "Explain the HTTP 404 status code."]),
    ("How do I install numpy?", ["How can I get numpy installed?",
     "What's the command to install numpy?"]),
    ("Summarize the plot of Hamlet.", ["Give me a summary of the plot of Hamlet.",
     "Briefly summarise what happens in Hamlet."]),
    ("How do I center a div in CSS?", ["How can I center a div using CSS?",
     "What's the CSS to center a div?"]),
    ("What causes inflation?", ["What are the causes of inflation?",
     "Why does inflation happen?"]),
    ("How do I make a cup of green tea?", ["How should I brew a cup of green tea?",
     "What's the right way to make green tea?"]),
    ("How do I delete a branch in git?", ["How can I remove a git branch?",
     "What's the command to delete a branch in git?"]),
    ("What is a Python decorator?", ["What are decorators in Python?",
     "Explain Python decorators."]),
    ("How do I find the length of a string in JavaScript?", [
     "How can I get the length of a JavaScript string?",
     "How do you get a string's length in JavaScript?"]),
    ("What is photosynthesis?", ["Explain photosynthesis.",
     "Can you describe what photosynthesis is?"]),
    ("How do I convert a string to an integer in Python?", [
     "How can I turn a string into an int in Python?",
     "What's the way to parse a string as an integer in Python?"]),
    ("Do you accept Apple Pay?", ["Can I pay with Apple Pay?",
     "Is Apple Pay accepted?"]),
    ("What are your opening hours?", ["When are you open?",
     "What hours are you open?"]),
    ("How do I reset my password?", ["How can I reset my password?",
     "What do I do to reset my password?"]),
    ("How do I cancel my subscription?", ["How can I cancel my subscription?",
     "What are the steps to cancel my subscription?"]),
    ("Where can I find my invoices?", ["Where are my invoices?",
     "Where do I find my invoices?"]),
    ("How long does shipping take?", ["How long will shipping take?",
     "What's the usual shipping time?"]),
    ("Can I change my delivery address?", ["Is it possible to change my delivery address?",
     "Can my delivery address be changed?"]),
    ("How do I sort a dictionary by value in Python?", [
     "How can I sort a Python dictionary by its values?",
     "What's the way to order a dict by value in Python?"]),
    ("What is the difference between TCP and UDP?", [
     "How does TCP differ from UDP?", "Explain how TCP and UDP differ."]),
    ("How do I merge two dictionaries in Python?", [
     "How can I combine two dictionaries in Python?",
     "What's the way to merge two Python dicts?"]),
    ("What is a closure in JavaScript?", ["Explain closures in JavaScript.",
     "What are JavaScript closures?"]),
    ("How do I create a virtual environment in Python?", [
     "How can I make a Python virtual environment?",
     "How do I set up a virtualenv for Python?"]),
    ("Why is the sky blue?", ["What makes the sky blue?",
     "Why does the sky look blue?"]),
    ("How do I list files in a directory in Bash?", [
     "How can I list the files in a directory with Bash?",
     "What's the Bash command to list files in a directory?"]),
    ("What is the boiling point of water at sea level?", [
     "At what temperature does water boil at sea level?",
     "What temperature does water boil at, at sea level?"]),
    ("How do I rename a file in Linux?", ["How can I rename a file on Linux?",
     "What's the command to rename a file in Linux?"]),
    ("What is the time complexity of binary search?", [
     "What's binary search's time complexity?",
     "How fast is binary search in big-O terms?"]),
    ("How do I check which version of Node is installed?", [
     "How can I see which Node version I have installed?",
     "How do I find out my installed Node version?"]),
    ("Translate 'good morning' into Spanish.", ["How do you say 'good morning' in Spanish?",
     "What is 'good morning' in Spanish?"]),
    ("Write a haiku about autumn leaves.", ["Compose a haiku about autumn leaves.",
     "Write me a haiku on the subject of autumn leaves."]),
    ("How do I exit Vim?", ["How can I quit Vim?", "What's the way to get out of Vim?"]),
    ("What is a foreign key in SQL?", ["Explain foreign keys in SQL.",
     "What does a foreign key mean in SQL?"]),
    ("How do I add a column to a table in PostgreSQL?", [
     "How can I add a new column to a PostgreSQL table?",
     "What's the SQL to add a column to a table in PostgreSQL?"]),
    ("Is there a student discount?", ["Do you offer a student discount?",
     "Do students get a discount?"]),
    ("How do I return an item?", ["How can I return an item?",
     "What's the process for returning an item?"]),
    ("What is the refund policy?", ["What's your refund policy?",
     "Can you explain the refund policy?"]),
    ("How do I enable two-factor authentication?", [
     "How can I turn on two-factor authentication?",
     "How do I set up two-factor authentication?"]),
    ("What are the symptoms of dehydration?", ["What symptoms does dehydration cause?",
     "How can I tell if I'm dehydrated?"]),
    ("How do I make a pull request on GitHub?", [
     "How can I open a pull request on GitHub?",
     "What are the steps to create a pull request on GitHub?"]),
    ("What is recursion?", ["Explain recursion.", "Can you explain what recursion is?"]),
    ("How do I read a CSV file with pandas?", [
     "How can I load a CSV file using pandas?",
     "What's the way to read a CSV into pandas?"]),
    ("How do I kill a process on port 8080?", [
     "How can I kill whatever process is using port 8080?",
     "How do I stop the process listening on port 8080?"]),
    ("What is the speed of light?", ["How fast does light travel?",
     "What's the speed of light?"]),
    ("Give me a recipe for pancakes.", ["Can you give me a pancake recipe?",
     "Share a recipe for pancakes."]),
    ("How do I upgrade pip?", ["How can I update pip to the latest version?",
     "What's the command to upgrade pip?"]),
]

# questions whose surface forms are varied mechanically below (case, contractions, filler,
# politeness, punctuation, fronted clause)
SURFACE_BASES = [a for a, _ in WORDING]

FILLERS = [("", "just "), ("", "quickly "), ("", "actually ")]
POLITE = ["Please tell me: {q}", "{q} Thanks!", "Hi, {q}", "Could you help? {q}",
          "Quick question: {q}"]
FRONTED = [  # (question, the same with a clause moved to the front)
    ("How do I undo the last git commit in my repository?",
     "In my repository, how do I undo the last git commit?"),
    ("How do I center a div in CSS?", "In CSS, how do I center a div?"),
    ("How do I sort a dictionary by value in Python?",
     "In Python, how do I sort a dictionary by value?"),
    ("How do I list files in a directory in Bash?",
     "In Bash, how do I list files in a directory?"),
    ("How do I add a column to a table in PostgreSQL?",
     "In PostgreSQL, how do I add a column to a table?"),
    ("How do I reset my password if I forgot it?",
     "If I forgot my password, how do I reset it?"),
    ("How do I find the length of a string in JavaScript?",
     "In JavaScript, how do I find the length of a string?"),
    ("How do I rename a file in Linux?", "On Linux, how do I rename a file?"),
    ("How do I read a CSV file with pandas?", "With pandas, how do I read a CSV file?"),
    ("What should I do when my build fails on CI?",
     "When my build fails on CI, what should I do?"),
    ("How do I exit Vim without saving?", "Without saving, how do I exit Vim?"),
    ("How do I upgrade pip on Windows?", "On Windows, how do I upgrade pip?"),
    ("Can I pay by card at the front desk?", "At the front desk, can I pay by card?"),
    ("How do I convert a string to an integer in Python?",
     "In Python, how do I convert a string to an integer?"),
    ("How do I install numpy on a Mac?", "On a Mac, how do I install numpy?"),
    ("What is the capital of Australia?", "Of Australia, what is the capital?"),
    ("How do I check disk usage in Linux?", "In Linux, how do I check disk usage?"),
    ("How do I merge two dictionaries in Python?",
     "In Python, how do I merge two dictionaries?"),
    ("How do I make a pull request on GitHub?", "On GitHub, how do I make a pull request?"),
    ("How do I create an index in MySQL?", "In MySQL, how do I create an index?"),
]
SYNTAX = [  # other sentence structures
    ("Explain how a hash map works.", "How does a hash map work?"),
    ("Tell me what a mutex is.", "What is a mutex?"),
    ("Describe the water cycle.", "What is the water cycle?"),
    ("List the planets of the solar system.", "What are the planets of the solar system?"),
    ("Define entropy in thermodynamics.", "What is entropy in thermodynamics?"),
    ("Give an example of a Python list comprehension.",
     "What does a Python list comprehension look like, for example?"),
    ("Show me how to write a for loop in Go.", "How do I write a for loop in Go?"),
    ("I need to know how to reset my password.", "How do I reset my password?"),
    ("I'd like to cancel my order.", "How do I cancel my order?"),
    ("I want to change my email address.", "How can I change my email address?"),
    ("Tell me the opening hours.", "What are the opening hours?"),
    ("Explain what Kubernetes does.", "What does Kubernetes do?"),
    ("Describe how vaccines work.", "How do vaccines work?"),
    ("Explain why the sky is blue.", "Why is the sky blue?"),
    ("Tell me how to boil an egg.", "How do I boil an egg?"),
    ("Explain the difference between a process and a thread.",
     "What is the difference between a process and a thread?"),
    ("Describe what a REST API is.", "What is a REST API?"),
    ("Explain how HTTPS keeps traffic private.", "How does HTTPS keep traffic private?"),
    ("Tell me what a black hole is.", "What is a black hole?"),
    ("Explain how compound interest works.", "How does compound interest work?"),
]

# traps: (template, [values]) — every two different values give a pair that must not share
NUMBERS = [
    ("Convert {} USD to EUR.", ["100", "150", "1000", "10"]),
    ("Set the timeout to {} seconds.", ["30", "300", "3", "60"]),
    ("What is {} squared?", ["12", "13", "21", "120"]),
    ("Book a table for {} people.", ["2", "4", "6", "12"]),
    ("How many calories are in {} grams of rice?", ["100", "200", "50", "1000"]),
    ("Write a {}-word summary of the French Revolution.", ["50", "100", "500", "200"]),
    ("What was the population of London in {}?", ["1900", "1950", "2000", "1800"]),
    ("Increase the font size to {} px.", ["14", "16", "18", "24"]),
    ("Round {} to two decimal places.", ["3.14159", "2.71828", "1.41421", "1.73205"]),
    ("Give me {} ideas for a birthday party.", ["3", "5", "10", "20"]),
    ("Is {} a prime number?", ["91", "97", "51", "53"]),
    ("How do I install Python {}?", ["3.11", "3.12", "3.9", "2.7"]),
    ("What is {}% of 80?", ["15", "20", "25", "50"]),
    ("Convert {} miles to kilometres.", ["5", "10", "26.2", "100"]),
    ("List the top {} programming languages.", ["3", "5", "10", "20"]),
    ("Can I return an item after {} days?", ["14", "30", "60", "90"]),
]
NUMBER_WORDS = [
    ("Give me {} examples of mammals.", ["three", "five", "ten", "two"]),
    ("Write {} sentences about the ocean.", ["two", "three", "four", "six"]),
    ("What happened in the {} world war?", ["first", "second"]),
    ("Who was the {} president of the United States?", ["first", "second", "third", "last"]),
]
TIMES = [
    ("Set an alarm for {}.", ["7am", "7pm", "7:30am", "7:30pm"]),
    ("Is the store open at {}?", ["2pm", "2am", "9am", "9pm"]),
    ("Remind me to call mum at {}.", ["6 am", "6 pm", "8am", "8pm"]),
    ("Book a meeting room for {} tomorrow.", ["10am", "10pm", "3pm", "3am"]),
    ("Is there a train to Leeds at {}?", ["5am", "5pm", "11am", "11pm"]),
    ("Can I check in at {}?", ["1pm", "1am", "12pm", "12am"]),
    ("Schedule the backup for {}.", ["2 a.m.", "2 p.m.", "4am", "4pm"]),
    ("Does the pharmacy open at {}?", ["8 AM", "8 PM", "6:45am", "6:45pm"]),
    ("What is {} Eastern time in London time?", ["9am", "9pm", "noon", "midnight"]),
    ("Order a taxi for {}.", ["4:15pm", "4:15am", "7pm", "7am"]),
]
NEGATION = [
    ("Why is my Python script slow?", "Why is my Python script not slow?"),
    ("Should I use a VPN on public Wi-Fi?", "Should I not use a VPN on public Wi-Fi?"),
    ("Can I freeze cooked rice?", "Can't I freeze cooked rice?"),
    ("How do I make the build fail on warnings?",
     "How do I make the build not fail on warnings?"),
    ("Is it safe to eat raw eggs?", "Is it never safe to eat raw eggs?"),
    ("Write a function that handles empty input.",
     "Write a function that doesn't handle empty input."),
    ("Which fruits contain vitamin C?", "Which fruits contain no vitamin C?"),
    ("Does the hotel allow pets?", "Does the hotel not allow pets?"),
    ("How do I commit with a message?", "How do I commit without a message?"),
    ("Is the museum open on holidays?", "Is the museum closed on holidays?"),
    ("Can I take ibuprofen with food?", "Can I take ibuprofen without food?"),
    ("How do I run the tests with coverage?", "How do I run the tests without coverage?"),
    ("Do I need a visa to visit Japan?", "Do I not need a visa to visit Japan?"),
    ("Is the parking free?", "Is the parking not free?"),
    ("List the countries that use the euro.", "List the countries that don't use the euro."),
    ("Should I water cacti often?", "Should I never water cacti often?"),
    ("Why does my code compile?", "Why doesn't my code compile?"),
    ("Is it possible to cancel an order?", "Is it impossible to cancel an order?"),
    ("Does this laptop support USB-C charging?",
     "Does this laptop not support USB-C charging?"),
    ("Are dogs allowed in the park?", "Are dogs forbidden in the park?"),
    ("Can children join the tour?", "Can children not join the tour?"),
    ("Will the flight be delayed?", "Will the flight not be delayed?"),
    ("Is the water drinkable?", "Is the water undrinkable?"),
    ("Should I include a cover letter?", "Should I skip the cover letter?"),
]
ANTONYM = [
    ("Is it safe to swim here?", "Is it unsafe to swim here?"),
    ("Is this laptop suitable for gaming?", "Is this laptop unsuitable for gaming?"),
    ("Is the data encrypted?", "Is the data unencrypted?"),
    ("Why is my variable defined?", "Why is my variable undefined?"),
    ("Is this medicine legal in France?", "Is this medicine illegal in France?"),
    ("Is this action reversible?", "Is this action irreversible?"),
    ("Is the result likely?", "Is the result unlikely?"),
    ("Is this setting enabled by default?", "Is this setting disabled by default?"),
    ("How do I lock the screen?", "How do I unlock the screen?"),
    ("Is the room available on Friday?", "Is the room unavailable on Friday?"),
    ("Is this mushroom edible?", "Is this mushroom inedible?"),
    ("Is the contract valid?", "Is the contract invalid?"),
    ("Why is the connection secure?", "Why is the connection insecure?"),
    ("Is this symptom common?", "Is this symptom uncommon?"),
    ("How do I mount the drive?", "How do I unmount the drive?"),
    ("Is the bridge passable in winter?", "Is the bridge impassable in winter?"),
    ("How do I install the extension?", "How do I uninstall the extension?"),
    ("Is the function pure?", "Is the function impure?"),
    ("How do I increase the volume?", "How do I decrease the volume?"),
    ("Is the account active?", "Is the account inactive?"),
    ("How do I follow this account?", "How do I unfollow this account?"),
    ("Is this answer correct?", "Is this answer incorrect?"),
    ("How do I compress the folder?", "How do I decompress the folder?"),
    ("Is the package signed?", "Is the package unsigned?"),
]
INCLUSION = [
    ("Is breakfast included in the price?", "Is breakfast excluded from the price?"),
    ("Which taxes are included?", "Which taxes are excluded?"),
    ("Is VAT included in the total?", "Is VAT excluded from the total?"),
    ("Are tips included in the bill?", "Are tips excluded from the bill?"),
    ("How do I include a file in the build?", "How do I exclude a file from the build?"),
    ("Is insurance included with the rental?", "Is insurance excluded from the rental?"),
    ("Which fields are included in the export?", "Which fields are excluded from the export?"),
    ("Are weekends included in the delivery estimate?",
     "Are weekends excluded from the delivery estimate?"),
    ("Is shipping included in the price?", "Is shipping extra on top of the price?"),
    ("Which tests are included in the quick run?", "Which tests are excluded from the quick run?"),
    ("Is the charger included in the box?", "Is the charger excluded from the box?"),
    ("Are drinks included in the menu price?", "Are drinks excluded from the menu price?"),
]
DAYS = [
    ("Is the office open on weekdays?", "Is the office open on weekends?"),
    ("What are the bus times on weekdays?", "What are the bus times on weekends?"),
    ("Do you deliver on weekdays?", "Do you deliver on weekends?"),
    ("Is parking free on weekends?", "Is parking free on weekdays?"),
    ("Is the gym open on Monday?", "Is the gym open on Sunday?"),
    ("What time does the library close on Saturday?",
     "What time does the library close on Friday?"),
    ("Are there trains on Sunday morning?", "Are there trains on Monday morning?"),
    ("Can I book a slot on Tuesday?", "Can I book a slot on Thursday?"),
    ("What's the weather forecast for today?", "What's the weather forecast for tomorrow?"),
    ("Is the museum free in January?", "Is the museum free in June?"),
    ("What are the opening hours in summer?", "What are the opening hours in winter?"),
    ("Is the pool open in the morning?", "Is the pool open in the evening?"),
    ("Do you offer support at night?", "Do you offer support during the day?"),
    ("Is the market open on public holidays?", "Is the market open on school holidays?"),
]
SWAP = [  # (template with two slots, x, y): swapped order must not share
    ("Convert 100 {} to {}.", "USD", "EUR"),
    ("Translate this sentence from {} to {}.", "French", "German"),
    ("Is a {} bigger than a {}?", "cat", "dog"),
    ("How far is {} from {}?", "Paris", "Berlin"),
    ("Migrate my database from {} to {}.", "MySQL", "PostgreSQL"),
    ("Port this code from {} to {}.", "Python", "Rust"),
    ("Is {} older than {}?", "Alice", "Bob"),
    ("How do I switch from {} to {}?", "Windows", "Linux"),
    ("Compare {} with {}, focusing on the first one.", "React", "Vue"),
    ("Is {} faster than {}?", "Go", "Java"),
    ("How do I transfer money from {} to {}?", "savings", "checking"),
    ("What is the flight time from {} to {}?", "London", "Tokyo"),
    ("Does {} beat {} in chess openings?", "Carlsen", "Nakamura"),
    ("Copy the files from {} to {}.", "staging", "production"),
    ("Is {} heavier than {}?", "gold", "lead"),
    ("Convert the temperature from {} to {}.", "Celsius", "Fahrenheit"),
    ("Should I upgrade from {} to {}?", "Ubuntu", "Debian"),
    ("Redirect traffic from {} to {}.", "blue", "green"),
]
CHANGE = [  # the same question about another thing
    ("How do I reverse a list in {}?", ["Python", "Java", "Ruby", "Go"]),
    ("What is the capital of {}?", ["France", "Spain", "Italy", "Portugal"]),
    ("How do I install {} on Ubuntu?", ["Docker", "Node", "PostgreSQL", "Redis"]),
    ("Who wrote {}?", ["Hamlet", "Macbeth", "Othello", "Ulysses"]),
    ("What is the population of {}?", ["Tokyo", "Delhi", "Lagos", "Lima"]),
    ("How do I uninstall {}?", ["Zoom", "Slack", "Teams", "Skype"]),
    ("Summarize the plot of {}.", ["Hamlet", "Dune", "Emma", "Beloved"]),
    ("What is the exchange rate of the {} today?", ["dollar", "euro", "yen", "rupee"]),
    ("How do I cook {}?", ["rice", "quinoa", "pasta", "lentils"]),
    ("What are the side effects of {}?", ["ibuprofen", "aspirin", "paracetamol",
                                          "codeine"]),
    ("How do I fix {} in my React app?", ["parse_config", "load_config", "useEffect",
                                          "useState"]),
    ("What does the {} command do?", ["ls", "cd", "rm", "mv"]),
    ("Is {} a mammal?", ["a whale", "a shark", "a bat", "an eel"]),
    ("How do I get to the {} from the station?", ["museum", "stadium", "airport",
                                                  "hospital"]),
    ("What is the best way to learn {}?", ["piano", "guitar", "violin", "drums"]),
    ("Can I bring {} on the plane?", ["a laptop", "a knife", "perfume", "batteries"]),
    ("What is {} used for?", ["Kafka", "Redis", "Nginx", "Terraform"]),
    ("How do I grow {} indoors?", ["basil", "tomatoes", "mint", "lettuce"]),
]
SCOPE = [
    ("Delete all files in the folder.", "Delete only the old files in the folder."),
    ("What is the first element of the list?", "What is the last element of the list?"),
    ("Which planet is the largest?", "Which planet is the smallest?"),
    ("Sort the rows in ascending order.", "Sort the rows in descending order."),
    ("Show me the most expensive flights to Rome.", "Show me the cheapest flights to Rome."),
    ("Should I drink more water?", "Should I drink less water?"),
    ("What happened before the war?", "What happened after the war?"),
    ("Find the maximum value in the array.", "Find the minimum value in the array."),
    ("How do I read a file in Python?", "How do I write a file in Python?"),
    ("Convert the text to uppercase.", "Convert the text to lowercase."),
    ("How do I open a port on the firewall?", "How do I close a port on the firewall?"),
    ("What are the benefits of running?", "What are the risks of running?"),
    ("How do I add a user to the group?", "How do I remove a user from the group?"),
    ("Who is the youngest member of the band?", "Who is the oldest member of the band?"),
    ("What is the best pizza topping?", "What is the worst pizza topping?"),
    ("How do I speed up my laptop?", "How do I slow down my laptop?"),
    ("Summarize every chapter of the book.", "Summarize the first chapter of the book."),
    ("Is the price higher online?", "Is the price lower online?"),
    ("How do I import data into Excel?", "How do I export data from Excel?"),
    ("List the advantages of remote work.", "List the disadvantages of remote work."),
    ("How do I encrypt a file?", "How do I decrypt a file?"),
    ("How do I push to the remote?", "How do I pull from the remote?"),
    ("What should I pack for a hot climate?", "What should I pack for a cold climate?"),
    ("How do I upload a photo?", "How do I download a photo?"),
    ("How do I hide a column in Excel?", "How do I show a column in Excel?"),
    ("Explain the pros of nuclear power.", "Explain the cons of nuclear power."),
    ("Is it cheaper to buy or rent?", "Is it cheaper to rent?"),
    ("Which is the tallest building in Europe?", "Which is the tallest building in Asia?"),
]
HISTORIES = [  # earlier turns: (user, assistant)
    ("I am writing a Rust web server.", "Great, what do you need?"),
    ("I am writing a Python web server.", "Great, what do you need?"),
    ("I'm planning a trip to Japan in April.", "Sounds lovely. How can I help?"),
    ("I'm planning a trip to Norway in January.", "Sounds lovely. How can I help?"),
    ("My son is 4 years old.", "Okay, noted."),
    ("My son is 14 years old.", "Okay, noted."),
    ("I have a Windows laptop.", "Got it."),
    ("I have a MacBook.", "Got it."),
    ("I'm vegetarian.", "Thanks for letting me know."),
    ("I eat everything, no restrictions.", "Thanks for letting me know."),
    ("Here is my function: def add(a, b): return a - b", "I see the function."),
    ("Here is my function: def add(a, b): return a + b", "I see the function."),
    ("We use PostgreSQL 16 in production.", "Understood."),
    ("We use MySQL 8 in production.", "Understood."),
    ("I live in Canada.", "Okay."),
    ("I live in Germany.", "Okay."),
]
FOLLOW_UPS = [  # (last turn, a paraphrase of it)
    ("How do I add logging?", "How can I add logging?"),
    ("What should I pack?", "What do I need to pack?"),
    ("Is it a good idea?", "Is that a good idea?"),
    ("What would you recommend?", "What do you recommend?"),
    ("Can you suggest a recipe?", "Could you suggest a recipe?"),
    ("Is this correct?", "Is that correct?"),
    ("How do I back up the database?", "How can I back up the database?"),
    ("What are the tax rules?", "What are the rules on tax?"),
    ("How do I fix it?", "How can I fix it?"),
    ("Any tips?", "Do you have any tips?"),
    ("What's the best option?", "What is the best option?"),
    ("How long will it take?", "How long does it take?"),
]
CONTRACTIONS = [("can't", "cannot"), ("don't", "do not"), ("What's", "What is"),
                ("it's", "it is"), ("isn't", "is not"), ("I'm", "I am"),
                ("doesn't", "does not"), ("won't", "will not")]
CONTRACTION_QS = [
    "Why can't I push to the main branch?", "Why don't my tests run?",
    "What's the difference between a list and a set?", "Why isn't my cron job running?",
    "I'm getting a 403 error, what does it mean?", "Why doesn't pip find my package?",
    "Why won't my laptop turn on?", "Is it true that it's cheaper to fly on Tuesdays?",
    "Why can't I log in to my account?", "What's the best way to learn SQL?",
    "Why don't plants grow in the dark?", "Why isn't the page loading?",
    "Why doesn't my phone charge?", "Why won't the app open?",
    "I'm locked out of my account, what now?", "What's a good name for a cat?",
]


def pair(kind: str, should_hit: bool, a: str, b: str, **context: Any) -> dict[str, Any]:
    return {"kind": kind, "should_hit": should_hit, "a": a, "b": b, **context}


def surface(rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for q in SURFACE_BASES:
        out.append(pair("paraphrase-surface", True, q, q.lower()))
        out.append(pair("paraphrase-surface", True, q, q.title()))
        out.append(pair("paraphrase-surface", True, q, "  " + q.rstrip("?.!") + "  "))
        out.append(pair("paraphrase-surface", True, q, rng.choice(POLITE).format(q=q)))
        words = q.split(" ")
        if len(words) > 3:  # a filler word before the verb
            i = 3 if words[0].lower() in {"how", "what", "why", "where"} else 1
            filler = rng.choice(FILLERS)[1].strip()
            out.append(pair("paraphrase-surface", True, q,
                            " ".join([*words[:i], filler, *words[i:]])))
    for q in CONTRACTION_QS:
        for short, long in CONTRACTIONS:
            if short in q:
                out.append(pair("paraphrase-surface", True, q, q.replace(short, long)))
    return out


def dedupe(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for p in pairs:
        key = (p["a"], p["b"], str(p.get("context_a")), str(p.get("context_b")))
        if (p["a"] == p["b"] and "context_a" not in p) or key in seen:
            continue
        seen.add(key)
        out.append(p)
    return out


def history(turn: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]


def build() -> list[dict[str, Any]]:
    rng = random.Random(25)
    pairs: list[dict[str, Any]] = []
    for a, bs in WORDING:
        for b in bs:
            pairs.append(pair("paraphrase-wording", True, a, b))
        pairs.append(pair("paraphrase-wording", True, bs[0], bs[1]))
    for a, b in FRONTED + SYNTAX:
        pairs.append(pair("paraphrase-syntax", True, a, b))
        pairs.append(pair("paraphrase-syntax", True, b, a))
    pairs += surface(rng)

    def values(kind: str, table: list[tuple[str, list[str]]]) -> None:
        for template, vals in table:
            for i, x in enumerate(vals):
                for y in vals[i + 1:]:
                    pairs.append(pair(kind, False, template.format(x), template.format(y)))

    values("numbers", NUMBERS + NUMBER_WORDS)
    values("times", TIMES)
    values("entity-change", CHANGE)
    for kind, table in (("negation", NEGATION), ("antonym", ANTONYM),
                        ("inclusion", INCLUSION), ("days", DAYS), ("scope", SCOPE)):
        for a, b in table:
            pairs.append(pair(kind, False, a, b))
            pairs.append(pair(kind, False, b, a))
    for template, x, y in SWAP:
        pairs.append(pair("entity-swap", False, template.format(x, y), template.format(y, x)))
        pairs.append(pair("entity-swap", False, template.format(y, x), template.format(x, y)))
    for h in HISTORIES:  # the same history: the last turn paraphrased (or repeated)
        for last, para in FOLLOW_UPS:
            pairs.append(pair("multi-turn-same", True, last, para,
                              context_a=history(h), context_b=history(h)))
    for i in range(0, len(HISTORIES), 2):  # a different history, the same last turn
        h1, h2 = HISTORIES[i], HISTORIES[i + 1]
        for last, para in FOLLOW_UPS:
            pairs.append(pair("multi-turn-different", False, last, last,
                              context_a=history(h1), context_b=history(h2)))
            pairs.append(pair("multi-turn-different", False, last, para,
                              context_a=history(h2), context_b=history(h1)))
    return dedupe(pairs)


def main() -> None:
    pairs = build()
    doc = {"description": "Labelled prompt pairs for `midway cache eval`: paraphrases that "
           "should be served from the cache, and traps that must not. Written for midway; "
           "built by plugins/midway-cache/evalset/build_pairs.py.",
           "licence": "CC0-1.0", "pairs": pairs}
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    counts: dict[str, int] = {}
    for p in pairs:
        counts[p["kind"]] = counts.get(p["kind"], 0) + 1
    print(len(pairs), counts)


if __name__ == "__main__":
    main()
