"""A small offline part-of-speech tagger for syntax masking: word lists plus suffix rules.

It only needs to rank words for CLIPA's syntax masking (noun > adjective > verb > other), so
it is deliberately coarse: closed-class words (articles, pronouns, prepositions, conjunctions,
auxiliaries, common adverbs, numbers) are "OTHER"; short lists of frequent caption adjectives
and verbs come next; then suffix rules; everything else is a noun. Pass your own tagger (e.g.
one built on NLTK or spaCy) to `syntax_reduce(tagger=...)` for better tags.
"""

import re
from collections.abc import Sequence

PRIORITY = {"NOUN": 0, "ADJ": 1, "VERB": 2}  # everything else ranks last

_CLOSED = set(
    """a an the this that these those some any each every no all both either neither
    i me my mine you your yours he him his she her hers it its we us our ours they them their
    theirs who whom whose which what there here
    of in on at by for with without from to into onto over under above below between among
    through during before after behind beside besides near across along around against
    toward towards upon within out off up down about like than as via per
    and or but nor so yet if while because although though when where whether
    is are was were be been being am do does did have has had will would can could shall
    should may might must not very too also just only still then now again almost quite
    rather really well even ever never always often sometimes
    one two three four five six seven eight nine ten several many much more most few less
    other another such own same""".split()
)

_ADJECTIVES = set(
    """red orange yellow green blue purple pink brown black white gray grey silver gold golden
    big small large little tiny huge tall short long wide narrow high low old young new
    good bad great beautiful pretty ugly happy sad cute nice clean dirty empty full hot cold
    warm cool dark bright light heavy open closed wet dry fresh round square flat soft hard
    sunny cloudy snowy busy quiet modern ancient wooden metal plastic glass striped colorful
    colourful various different multiple single double top bottom left right front back""".split()
)

_VERBS = set(
    """sit sits sat stand stands stood lie lies lay walk walks run runs ride rides rode
    hold holds held eat eats ate look looks play plays fly flies flew swim swims wear wears
    wore carry carries show shows shown make makes made take takes took go goes went
    get gets got see sees saw watch watches park parked parks use uses help helps""".split()
)

_ADJ_SUFFIXES = ("ous", "ful", "ive", "able", "ible", "less", "ical", "ish", "est", "ary")
_VERB_SUFFIXES = ("ing", "ed", "ize", "ise", "ify")
_NUMBER = re.compile(r"^[\d.,:/%-]+$")


def tag_word(word: str) -> str:
    """One of "NOUN", "ADJ", "VERB", "OTHER" for a single word (punctuation is stripped)."""
    w = word.lower().strip(".,;:!?\"'()[]{}")
    if not w or _NUMBER.match(w) or w in _CLOSED:
        return "OTHER"
    if w in _ADJECTIVES:
        return "ADJ"
    if w in _VERBS:
        return "VERB"
    if w.endswith("ly") and len(w) > 4:
        return "OTHER"  # adverbs
    if len(w) > 4 and w.endswith(_VERB_SUFFIXES):
        return "VERB"
    if len(w) > 4 and w.endswith(_ADJ_SUFFIXES):
        return "ADJ"
    return "NOUN"


def tag_words(words: Sequence[str]) -> list[str]:
    """Tags for a list of words."""
    return [tag_word(w) for w in words]
