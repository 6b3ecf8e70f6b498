"""Record -> plain text converters with the seeds' exact text forms, and the Korean particle rule.

Text forms (seed 001 is the default, seed 000 through `mcq_style: with_english`):

- MCQ::

      {question}
      선택지: {A}, {B}, {C}, {D}, {E}
      정답: {Korean part of the answer}

      {answer option}{은/는} 의학적으로 중요한 개념이다.

  `korean_only` (001) writes each option without its parenthesised English gloss, `with_english` (000) writes
  the options as given. `정답:` always gives the Korean part; the last sentence always uses the full option.
- Medical dictionary: `고혈압(Hypertension)은 혈압이 정상 범위보다 높은 상태를 의미한다.`;
  an English-only definition: `약은 medicine을 의미하는 의학 용어이다.`
- Symbol dictionary: `의학 기호 ↑는 increased, elevated, or upward trend를 나타낸다.`

Particle rule (은/는, 이/가, 을/를) -- see `has_final_consonant`:

- The particle follows the last pronounced syllable of the word before it. A trailing parenthesised gloss
  (`항문열창(anal fissure)`) and trailing quotes/punctuation are skipped: Korean attaches the particle to the
  word before a parenthesis (`항문열창(anal fissure)은`).
- Hangul syllable: consonant form (은/이/을) when it has a final consonant (batchim, ㄹ included), else the vowel
  form (는/가/를). A lone jamo: consonant letters take the consonant form, vowel letters the vowel form.
- Digits: the Sino-Korean reading of the number: a last digit 0 (영/십/백/천/만), 1 (일), 3 (삼), 6 (육),
  7 (칠), 8 (팔) ends in a consonant; 2 (이), 4 (사), 5 (오), 9 (구) in a vowel.
- Latin letters: how the word is written in Hangul as a loanword. All-capital words of up to 5 letters and single
  letters are read letter by letter (L 엘, M 엠, N 엔, R 알 end in a consonant; the others in a vowel).
  Otherwise words ending in m, n, ng, l, gn, mb, or a silent e after m/n/l (medicine 메디신, syndrome 신드롬,
  cycle 사이클) end in a consonant; b/c/k/p/t or ck after a single short vowel (tablet 태블릿, clinic 클리닉,
  drop 드롭, back 백) end in a consonant; everything else (vowels, r, s, d, f, g, consonant clusters: fever 피버, trend
  트렌드, test 테스트) ends in a vowel.
- Symbols: by their usual Korean reading; those whose reading ends in a consonant (= 이퀄, # 샵, @ 앳, ~ 물결,
  ‰ 퍼밀, ∫ 인테그럴, Ω 옴, ♂ 남성, ♀ 여성, ㎎ 밀리그램, ㎏ 킬로그램) take the consonant form; every other symbol
  (↑ 위쪽 화살표, ± 플러스마이너스, % 퍼센트, ° 도, ...) and any other character takes the vowel form.

The symbol-dictionary sentence keeps the seeds' fixed particles `는` and `를` by default (`char_particles:
seed`), exactly as both seeds write them (`의학 기호 ±는 plus-minus sign를 나타낸다.`, where the rule above would
give `sign을`); `char_particles: rule` applies the rule there too.
"""

from __future__ import annotations

import re
from typing import Literal

from kormed.records import HANGUL_SYLLABLE, MCQ, DictEntry, split_definition  # split_definition: re-exported
from kormed.records import strip_final_period as _strip_final_period

MCQStyle = Literal["korean_only", "with_english"]
CharParticles = Literal["seed", "rule"]

# (after a final consonant, after a vowel)
PARTICLES: dict[str, tuple[str, str]] = {
    "은/는": ("은", "는"),
    "이/가": ("이", "가"),
    "을/를": ("을", "를"),
}

_HANGUL = HANGUL_SYLLABLE
_TRAILING_PUNCT = "\"'`”’」』》〉.,;:!?·…"
_OPEN = {")": "(", "）": "（", "]": "["}
_DIGIT_CONSONANT = {"0": True, "1": True, "2": False, "3": True, "4": False, "5": False, "6": True, "7": True,
                    "8": True, "9": False}  # fmt: skip
_SYMBOL_CONSONANT = set("=#@~‰∫Ωε♂♀㎎㎏")
_VOWELS = "aeiou"


def _strip_trailing_gloss(word: str) -> str:
    """Remove trailing balanced parenthesised groups and closing punctuation: the particle attaches before them."""
    w = word.rstrip()
    while w:
        last = w[-1]
        if last in _TRAILING_PUNCT:
            w = w[:-1].rstrip()
            continue
        if last in _OPEN:
            start = _matching_open(w)
            if start is None or start == 0:
                return w  # unbalanced, or the whole word is in parentheses: read it as it is
            w = w[:start].rstrip()
            continue
        return w
    return w


def _matching_open(w: str) -> int | None:
    """Index of the bracket opening the group that closes at the end of `w` (depth-counted), or None."""
    close = w[-1]
    open_ = _OPEN[close]
    depth = 0
    for i in range(len(w) - 1, -1, -1):
        if w[i] == close:
            depth += 1
        elif w[i] == open_:
            depth -= 1
            if depth == 0:
                return i
    return None


def _latin_final_consonant(word: str) -> bool:
    """Whether the English word, written in Hangul as a loanword, ends in a final consonant (see module doc)."""
    if len(word) == 1 or (word.isupper() and len(word) <= 5):
        return word[-1].upper() in "LMNR"
    w = word.lower()
    if w.endswith(("ng", "gn", "mb")) or w[-1] in "mnl":
        return True
    if w[-1] == "e" and len(w) > 2 and w[-2] not in _VOWELS + "y":
        return w[-2] in "mnl"
    if w.endswith("ck"):  # back -> 백, neck -> 넥
        return len(w) >= 3 and w[-3] in _VOWELS and (len(w) == 3 or w[-4] not in _VOWELS)
    # b/c/k/p/t after a single short vowel: tablet -> 태블릿, clinic -> 클리닉
    return w[-1] in "bckpt" and len(w) >= 2 and w[-2] in _VOWELS and (len(w) == 2 or w[-3] not in _VOWELS)


def has_final_consonant(word: str) -> bool:
    """Whether the word before a particle ends in a consonant sound (the rule in the module docstring)."""
    w = _strip_trailing_gloss(word)
    if not w:
        return False
    c = w[-1]
    code = ord(c)
    if 0xAC00 <= code <= 0xD7A3:
        return (code - 0xAC00) % 28 != 0
    if 0x3131 <= code <= 0x314E:  # compatibility consonant letters ㄱ..ㅎ
        return True
    if 0x314F <= code <= 0x3163:  # compatibility vowel letters ㅏ..ㅣ
        return False
    if c.isascii() and c.isdigit():
        return _DIGIT_CONSONANT[c]
    if c.isascii() and c.isalpha():
        m = re.search(r"[A-Za-z]+\Z", w)
        return _latin_final_consonant(m.group(0) if m else c)
    return c in _SYMBOL_CONSONANT


def josa(word: str, pair: str) -> str:
    """The particle of `pair` ('은/는', '이/가', '을/를') that follows `word`."""
    try:
        consonant, vowel = PARTICLES[pair]
    except KeyError:
        raise ValueError(f"unknown particle pair {pair!r} (known: {', '.join(PARTICLES)})") from None
    return consonant if has_final_consonant(word) else vowel


def with_josa(word: str, pair: str) -> str:
    """`word` followed by its particle: with_josa('항문열창(anal fissure)', '은/는') -> '항문열창(anal fissure)은'."""
    return word + josa(word, pair)


def split_gloss(text: str) -> tuple[str, str]:
    """Split `직장질루(rectovaginal fistula)` into ('직장질루', 'rectovaginal fistula').

    Only a final parenthesised group that contains Latin letters and no Hangul counts as the English gloss;
    anything else (`비타민(vitamin) 결핍`, `A형(혈액형)`) is returned whole with an empty gloss.
    """
    s = text.strip()
    if not s or s[-1] not in ")）":
        return s, ""
    start = _matching_open(s)
    if start is None or start == 0:
        return s, ""
    gloss = s[start + 1 : -1].strip()
    head = s[:start].rstrip()
    if not head or _HANGUL.search(gloss) or not re.search("[A-Za-z]", gloss):
        return s, ""
    return head, gloss


def korean_part(option: str) -> str:
    """The Korean name of an option: the text before its parenthesised English gloss."""
    return split_gloss(option)[0]


def render_mcq(mcq: MCQ, style: MCQStyle = "korean_only") -> str:
    """One KorMedMCQA question as CPT text (seed 001 form by default, seed 000 with `with_english`)."""
    if style not in ("korean_only", "with_english"):
        raise ValueError(f"unknown MCQ style {style!r}")
    options = [o.strip() for o in mcq.options]
    shown = [korean_part(o) for o in options] if style == "korean_only" else options
    answer = options[mcq.answer - 1]
    # A sentence answer ("아침 공복에 복용한다.") loses its final period before the particle, so the closing
    # sentence stays Korean ("...복용한다는 의학적으로 중요한 개념이다.") instead of "복용한다.는".
    return (
        f"{mcq.question.strip()}\n선택지: {', '.join(shown)}\n정답: {korean_part(answer)}\n\n"
        f"{with_josa(_strip_final_period(answer), '은/는')} 의학적으로 중요한 개념이다."
    )


def render_medical(entry: DictEntry) -> str:
    """A medical dictionary entry as one Korean definition sentence (the seeds' two forms)."""
    term = entry.term.strip()
    english, korean = split_definition(entry.definition)
    if not korean:
        return f"{with_josa(term, '은/는')} {with_josa(english, '을/를')} 의미하는 의학 용어이다."
    head = f"{term}({english})" if english else term
    return f"{with_josa(head, '은/는')} {with_josa(korean, '을/를')} 의미한다."


def render_symbol(entry: DictEntry, particles: CharParticles = "seed") -> str:
    """A medical-symbol entry: `의학 기호 ↑는 increased, ... trend를 나타낸다.` (seed particles by default)."""
    term = entry.term.strip()
    definition = _strip_final_period(entry.definition)
    if particles == "seed":
        return f"의학 기호 {term}는 {definition}를 나타낸다."
    if particles != "rule":
        raise ValueError(f"unknown char_particles {particles!r}")
    return f"의학 기호 {with_josa(term, '은/는')} {with_josa(definition, '을/를')} 나타낸다."


def render_dictionary(source: str, entries: list[DictEntry], particles: CharParticles = "seed") -> list[str]:
    """The corpus sentences of one dictionary source (`medical_dict`: :func:`render_medical`, `char_dict`:
    :func:`render_symbol`), one per entry in order: what `kormed prepare` writes (each `multiplier` times)."""
    if source == "medical_dict":
        return [render_medical(e) for e in entries]
    return [render_symbol(e, particles) for e in entries]
