#!/usr/bin/env python3
"""Recall data for FAM training and evaluation: a fact planted early, natural text, a question late.

A sample is token ids laid out on FAM blocks of B tokens (fam.md):

    block 0 ........ fact sentence at a random offset inside natural text
    blocks 1..k-1 .. natural text (the filler; never a repeated sentence)
    block k ........ natural text, then "Question: ... Answer: <prefix>" and the answer tokens

so the fact is k windows behind the question. With M = 0 memory blocks the question block sees
nothing of block 0 but the FAM rows: an answer above chance is memory. The answer is scored on
its tokens only (loss and exact-match recall); the sample ends with the answer.

Splits, so that evaluation measures what was not trained on:
- filler: training reads Emma and the plays (their first 90%); evaluation reads Moby-Dick, and
  the last 10% of the other two for a held-out check during training (`split="val"`).
- fact templates: five kinds (code, name, number, place, date), each with training templates
  and held-out templates (different wording, different question);
- values: held-out names and places come from their own lists; training ones from disjoint
  lists (`values="pools"`, the runs before session 19) or made up from syllables
  (`values="generated"`, too many to memorize); codes, numbers and dates are random (seeded).

    python3 tools/fam_data.py --tokenizer DIR/tokenizer.json --show 3     # print samples
"""
import argparse
import os
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the public-domain texts; FAMSTREAM_DATA points elsewhere (a GPU machine gets a copy: device_train.sh)
DATA = Path(os.environ["FAMSTREAM_DATA"]) if os.environ.get("FAMSTREAM_DATA") else ROOT.parent / "shared" / "data"

FIRST_TRAIN = ["Alice", "Bernard", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ingrid", "Jonas",
               "Keiko", "Lucas", "Marta", "Nikolai", "Olga", "Pablo", "Quentin", "Rosa", "Stefan", "Tamsin"]
LAST_TRAIN = ["Abbott", "Brennan", "Castillo", "Dumont", "Eriksen", "Fischer", "Garnier", "Holloway",
              "Ivanov", "Jansen", "Kowalski", "Lindqvist", "Moreau", "Novak", "Okafor", "Petrov"]
FIRST_EVAL = ["Ursula", "Victor", "Wanda", "Xavier", "Yasmin", "Zoltan", "Amara", "Boris", "Celine", "Desmond"]
LAST_EVAL = ["Quinlan", "Rasmussen", "Sorensen", "Takahashi", "Underwood", "Valdez", "Whitfield", "Yamamoto"]
PLACES_TRAIN = ["Lisbon", "Oslo", "Nairobi", "Montreal", "Kyoto", "Valparaiso", "Tbilisi", "Reykjavik",
                "Marseille", "Krakow", "Hobart", "Cusco", "Tangier", "Bergen", "Dublin", "Seville"]
PLACES_EVAL = ["Salzburg", "Zanzibar", "Quito", "Tromso", "Adelaide", "Ljubljana", "Mombasa", "Halifax"]
HELD_OUT_WORDS = frozenset(FIRST_EVAL + LAST_EVAL + PLACES_EVAL)  # never a made-up training word
# training names and places made from syllables (--train-values generated): some 14k words, too
# many to learn as a closed set, so a memory must carry the value's tokens, not which of a few
# known values it saw (session 19: with the lists above, a trained FAM recalled 13/18 training
# places and names and 0/17 held-out ones)
SYLLABLES = ["ka", "lo", "mir", "ten", "vash", "dor", "bel", "qui", "ra", "sen", "tho", "ul", "fen", "gar",
             "is", "mo", "zan", "pe", "ri", "co", "lun", "dra", "ve", "hal"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]

# kind -> (fact, question, answer prefix); {v} is the value. The answer is " {v}".
TEMPLATES = {
    "train": {
        "code": [("The secret code is {v}.", "What is the secret code?", "The secret code is"),
                 ("The locker combination is {v}.", "What is the locker combination?", "The combination is")],
        "name": [("The winner of the prize was {v}.", "Who won the prize?", "The winner was"),
                 ("The letter was signed by {v}.", "Who signed the letter?", "It was signed by")],
        "number": [("The ship carried {v} barrels of oil.", "How many barrels did the ship carry?", "It carried"),
                   ("The library owns {v} old maps.", "How many old maps does the library own?", "It owns")],
        "place": [("The meeting will be held in {v}.", "Where will the meeting be held?", "It will be held in"),
                  ("The parcel was sent to {v}.", "Where was the parcel sent?", "It was sent to")],
        "date": [("The contract was signed on {v}.", "When was the contract signed?", "It was signed on"),
                 ("The festival begins on {v}.", "When does the festival begin?", "It begins on")],
    },
    "eval": {
        "code": [("Remember this: the vault opens with {v}.", "What number opens the vault?", "The vault opens with")],
        "name": [("The new harbour master is {v}.", "Who is the new harbour master?", "The harbour master is")],
        "number": [("The farm has exactly {v} sheep.", "How many sheep does the farm have?", "The farm has")],
        "place": [("Her brother lives in {v}.", "Where does her brother live?", "He lives in")],
        "date": [("The bridge will reopen on {v}.", "When will the bridge reopen?", "It will reopen on")],
    },
}


def made_word(rng):
    """A capitalized made-up word of 2-3 syllables, never one of the held-out names or places."""
    while True:
        w = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()
        if w not in HELD_OUT_WORDS:
            return w


def value(kind, rng, split, values="pools"):
    """A fact's value. Held-out names and places come from the eval lists; training ones from the
    training lists (`values="pools"`) or made up (`values="generated"`)."""
    ev = split == "eval"
    if not ev and values == "generated" and kind in ("name", "place"):
        return f"{made_word(rng)} {made_word(rng)}" if kind == "name" else made_word(rng)
    if kind == "code":
        return "".join(rng.choice("0123456789") for _ in range(5))
    if kind == "name":
        return f"{rng.choice(FIRST_EVAL if ev else FIRST_TRAIN)} {rng.choice(LAST_EVAL if ev else LAST_TRAIN)}"
    if kind == "number":
        return str(rng.randint(101, 9899))
    if kind == "place":
        return rng.choice(PLACES_EVAL if ev else PLACES_TRAIN)
    return f"{rng.choice(MONTHS)} {rng.randint(1, 28)}"


class Filler:
    """Token ids of natural text, drawn as random contiguous spans (never repeated sentences)."""

    def __init__(self, tok, split):
        if split == "eval":
            texts = [(DATA / "moby_dick.txt").read_text(encoding="utf-8")]
        else:
            texts = []
            for f in ("austen_emma.txt", "shakespeare_37_plays.txt"):
                t = (DATA / f).read_text(encoding="utf-8")
                cut = int(len(t) * 0.9)
                texts.append(t[:cut] if split == "train" else t[cut:])
        self.ids = []
        for t in texts:
            self.ids += tok.encode(" ".join(t.split())).ids  # whitespace folded: prose, not layout

    def span(self, rng, n):
        s = rng.randrange(0, len(self.ids) - n)
        return self.ids[s:s + n]


class RecallData:
    """Batches of recall samples; every sample in a batch has the same layout (lengths, offsets)."""

    def __init__(self, tok, block, split, templates=None, values="pools"):
        assert values in ("pools", "generated"), values
        self.tok, self.B, self.split, self.values = tok, block, split, values
        self.templates = TEMPLATES[templates or ("eval" if split == "eval" else "train")]
        self.filler = Filler(tok, split)
        self.enc = lambda s: tok.encode(s).ids

    def sample_parts(self, rng):
        kind = rng.choice(sorted(self.templates))
        fact, q, prefix = rng.choice(self.templates[kind])
        v = value(kind, rng, "eval" if self.split == "eval" else "train", self.values)
        return dict(kind=kind, value=v, fact=self.enc(" " + fact.format(v=v)),
                    question=self.enc(" Question: " + q + " Answer: " + prefix), answer=self.enc(" " + v))

    def batch(self, rng, n, k, fact_block=0):
        """n samples, fact in block `fact_block`, question k blocks later. Returns (ids [n][T],
        answer_pos: positions p whose logits predict the answer tokens ids[p+1], lm_pos: filler
        positions after the fact block for the LM loss, meta per sample)."""
        B = self.B
        parts = [self.sample_parts(rng) for _ in range(n)]
        max_fact = max(len(p["fact"]) for p in parts)
        max_qa = max(len(p["question"]) + len(p["answer"]) for p in parts)
        assert max_fact < B and max_qa < B, "block too small for the fact or the question"
        fact_off = rng.randrange(0, B - max_fact)
        q_block = fact_block + k
        # the question+answer run ends at the same position in every sample: each is right-aligned
        qa_end = q_block * B + rng.randrange(max_qa, B + 1)
        ids, ans_pos, meta = [], [], []
        for p in parts:
            a, qa = p["answer"], p["question"] + p["answer"]
            pre = fact_block * B + fact_off
            body = self.filler.span(rng, pre) + p["fact"]
            body += self.filler.span(rng, qa_end - len(qa) - len(body)) + qa
            assert len(body) == qa_end
            ids.append(body)
            ans_pos.append(list(range(qa_end - len(a) - 1, qa_end - 1)))
            meta.append(dict(kind=p["kind"], value=p["value"], fact_pos=pre, q_pos=qa_end - len(qa)))
        return ids, ans_pos, meta


def main():
    from tokenizers import Tokenizer
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--split", default="train", choices=["train", "val", "eval"])
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--show", type=int, default=2)
    ap.add_argument("--values", choices=["pools", "generated"], default="generated",
                    help="training names and places (as fam_train.py --train-values)")
    a = ap.parse_args()
    tok = Tokenizer.from_file(a.tokenizer)
    d = RecallData(tok, a.block, a.split, values=a.values)
    ids, ans, meta = d.batch(random.Random(0), a.show, a.k)
    for s, p, m in zip(ids, ans, meta):
        print(m, len(s))
        print(repr(tok.decode(s)))
        print("answer:", repr(tok.decode([s[i + 1] for i in p])))


if __name__ == "__main__":
    main()
