"""`kormed bench prepare`: NamuMark cleaning throughput of kormed vs the PyPI `namu-wiki-extractor`, measured in the
same run on the same synthetic corpus, plus exact-match accuracy of both on the held-out NamuMark cases."""

from __future__ import annotations

import platform
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from kormed.errors import KormedError
from kormed.io import iter_jsonl
from kormed.prepare.namumark import namumark_to_text

_WORDS = [
    "고혈압",
    "당뇨병",
    "심장",
    "혈관",
    "폐렴",
    "감기",
    "독감",
    "항생제",
    "인슐린",
    "췌장",
    "간",
    "신장",
    "혈액",
    "적혈구",
    "백혈구",
    "혈소판",
    "면역",
    "바이러스",
    "세균",
    "염증",
    "통증",
    "발열",
    "기침",
    "두통",
    "수술",
    "마취",
    "진단",
    "치료",
    "예방",
    "백신",
    "환자",
    "의사",
    "간호사",
    "병원",
    "약물",
    "부작용",
    "증상",
    "원인",
    "합병증",
    "검사",
    "영상",
    "초음파",
    "내시경",
    "만성",
    "급성",
    "질환",
    "조직",
    "세포",
    "유전자",
    "단백질",
    "호르몬",
    "대사",
    "영양",
    "비타민",
    "운동",
    "식습관",
    "수면",
    "스트레스",
    "우울증",
    "불안",
    "치매",
    "뇌졸중",
    "관절염",
    "골다공증",
    "천식",
    "알레르기",
    "피부",
    "안과",
    "이비인후과",
    "소아",
    "노인",
    "임신",
    "출산",
]
_PARTICLES = ["은", "는", "이", "가", "을", "를", "의", "에", "에서", "으로", "와", "과", "도", "만"]
_ENDINGS = [
    "이다.",
    "한다.",
    "된다.",
    "있다.",
    "없다.",
    "알려져 있다.",
    "중요하다.",
    "필요하다.",
    "나타난다.",
    "사용된다.",
    "권장된다.",
]
_LATIN = ["Hypertension", "Insulin", "MRI", "CT", "WHO", "COVID-19", "ACE", "DNA", "mg/dL", "BMI"]


class _Gen:
    """Deterministic generator of NamuMark articles with a realistic mix of constructs."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def word(self) -> str:
        return self.r.choice(_WORDS)

    def phrase(self) -> str:
        r = self.r
        w = self.word()
        x = r.random()
        if x < 0.10:
            w = f"[[{w}]]"
        elif x < 0.15:
            w = f"[[{w}|{self.word()}]]"
        elif x < 0.17:
            w = f"[[{w}#s-{r.randint(1, 5)}.{r.randint(1, 3)}|{self.word()}]]"
        elif x < 0.21:
            w = f"'''{w}'''"
        elif x < 0.23:
            w = f"''{w}''"
        elif x < 0.24:
            w = f"__{w}__"
        elif x < 0.25:
            w = f"{{{{{{#{r.choice(['red', 'blue', '00a495', 'f00'])} {w}}}}}}}"
        elif x < 0.26:
            w = f"{{{{{{+{r.randint(1, 3)} {w}}}}}}}"
        elif x < 0.27:
            w = f"~~{w}~~"
        elif x < 0.28:
            w = f"{w}({r.choice(_LATIN)})"
        elif x < 0.29:
            w = f"[ruby({w},ruby={self.word()})]"
        return w + r.choice(_PARTICLES)

    def sentence(self) -> str:
        r = self.r
        parts = [self.phrase() for _ in range(r.randint(3, 9))]
        s = " ".join(parts) + " " + r.choice(_ENDINGS)
        x = r.random()
        if x < 0.25:
            s += f"[* {self.word()}{r.choice(_PARTICLES)} {self.word()} {r.choice(_ENDINGS)}]"
        elif x < 0.30:
            s += f"[[https://example.org/{r.randint(1, 99999)}|#]]"
        elif x < 0.32:
            s += f" 수치는 {r.randint(90, 200)} > {r.randint(1, 89)} 이다."
        elif x < 0.33:
            s += f"[math(\\frac{{{r.randint(1, 9)}}}{{{r.randint(1, 9)}}})]"
        return s

    def paragraph(self) -> str:
        return " ".join(self.sentence() for _ in range(self.r.randint(1, 5)))

    def table(self) -> str:
        r = self.r
        rows = [f"||<-2><bgcolor=#00a495> '''{self.word()}''' ||"]
        for _ in range(r.randint(2, 8)):
            rows.append(f"|| {self.word()} ||<(> {self.phrase()} {r.randint(1, 500)} ||")
        if r.random() < 0.3:
            rows.insert(1, f"||<-2> [[파일:{self.word()}.{r.choice(['png', 'jpg', 'svg', 'webp'])}|width=200]] ||")
        return "\n".join(rows)

    def infobox(self) -> str:
        return (
            '{{{#!wiki style="margin: 0 -10px"\n'
            f"{{{{{{#!folding [ 펼치기 · 접기 ]\n"
            f"|| {self.word()} || {self.phrase()} ||\n"
            f"|| {self.word()} || {self.phrase()} ||\n"
            "}}}}}}"
        )

    def listing(self) -> str:
        r = self.r
        items = []
        for _ in range(r.randint(2, 7)):
            indent = " " * r.choice([1, 1, 1, 2])
            items.append(f"{indent}{r.choice(['*', '1.'])} {self.sentence()}")
        return "\n".join(items)

    def document(self) -> str:
        r = self.r
        out = []
        if r.random() < 0.5:
            out.append(f"[include(틀:{self.word()}, 분류={self.word()})]")
        out.append("[목차]")
        if r.random() < 0.3:
            out.append(self.infobox())
        for i in range(r.randint(2, 8)):
            level = "==" if i == 0 or r.random() < 0.6 else "==="
            fold = "#" if r.random() < 0.1 else ""
            out.append(f"{level}{fold} {self.word()} {fold}{level}")
            for _ in range(r.randint(1, 4)):
                x = r.random()
                if x < 0.6:
                    out.append(self.paragraph())
                elif x < 0.75:
                    out.append(self.listing())
                elif x < 0.85:
                    out.append(self.table())
                elif x < 0.90:
                    out.append("> " + self.sentence())
                elif x < 0.93:
                    out.append("{{{#!syntax python\nprint('hello')\n}}}")
                elif x < 0.96:
                    out.append("## 편집자 주석: " + self.sentence())
                else:
                    out.append("----")
        out.append("[각주]")
        out.append(f"[[분류:{self.word()}]]")
        return "\n".join(out)


def generate_corpus(n_docs: int, seed: int) -> list[str]:
    """`n_docs` synthetic NamuMark articles, identical for the same seed."""
    gen = _Gen(seed)
    return [gen.document() for _ in range(n_docs)]


def _time_once(fn: Callable[[str], Any], docs: list[str]) -> tuple[float, int]:
    """Single-process CPU seconds to clean all docs once, and how many docs raised."""
    errors = 0
    t0 = time.process_time()
    for d in docs:
        try:
            fn(d)
        except Exception:  # the third-party extractor crashes on some inputs; count, don't stop
            errors += 1
    return time.process_time() - t0, errors


def time_cleaners(cleaners: dict[str, Callable[[str], Any]], docs: list[str], repeats: int) -> dict[str, tuple]:
    """Best-of-`repeats` CPU time per cleaner; the cleaners alternate within each repeat so that load on a shared
    machine hits all of them alike. Returns name -> (seconds, errors)."""
    best: dict[str, tuple[float, int]] = {}
    for _ in range(repeats):
        for name, fn in cleaners.items():
            secs, errors = _time_once(fn, docs)
            if name not in best or secs < best[name][0]:
                best[name] = (secs, errors)
    return best


def load_cases(path: Path) -> list[dict[str, Any]]:
    """Held-out cases: JSONL of {"id", "markup", "expected"}."""

    cases = []
    for lineno, rec in iter_jsonl(path, what="NamuMark cases file"):
        for field in ("markup", "expected"):
            if not isinstance(rec.get(field), str):
                raise KormedError("missing or not a string", path=path, line=lineno, field=field)
        cases.append(rec)
    return cases


def exact_matches(fn: Callable[[str], Any], cases: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """How many cases fn renders exactly as expected, and the ids it gets wrong (a crash counts as wrong)."""
    ok = 0
    wrong = []
    for c in cases:
        try:
            got = fn(c["markup"])
        except Exception:
            got = None
        if got == c["expected"]:
            ok += 1
        else:
            wrong.append(str(c.get("id", "?")))
    return ok, wrong


def _extractor() -> Callable[[str], str] | None:
    try:
        from namuwiki.extractor import extract_text
    except ImportError:
        return None
    return extract_text


def default_cases_path() -> Path:
    return Path(__file__).resolve().parents[3] / "tests" / "data" / "namumark_cases.jsonl"


def run_bench(docs: int, seed: int, repeats: int, cases_path: Path | None) -> dict[str, Any]:
    """Run the benchmark and return its figures as a dict."""


    corpus = generate_corpus(docs, seed)
    n_bytes = sum(len(d.encode("utf-8")) for d in corpus)
    result: dict[str, Any] = {
        "docs": docs,
        "seed": seed,
        "repeats": repeats,
        "corpus_mb": round(n_bytes / 1e6, 3),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }
    ext = _extractor()
    cleaners: dict[str, Callable[[str], Any]] = {"kormed": namumark_to_text}
    if ext is not None:
        cleaners["namu_wiki_extractor"] = ext
    timings = time_cleaners(cleaners, corpus, repeats)
    for name, (secs, errors) in timings.items():
        result[name] = {
            "seconds": round(secs, 4),
            "mb_per_s_per_core": round(n_bytes / 1e6 / secs, 3),
            "errors": errors,
        }
    if ext is not None:
        result["speed_ratio_kormed_over_extractor"] = round(timings["namu_wiki_extractor"][0] / timings["kormed"][0], 3)
    path = cases_path or default_cases_path()
    if path.exists():
        cases = load_cases(path)
        ok, wrong = exact_matches(namumark_to_text, cases)
        try:  # a repository-relative name keeps the JSON the same on every checkout
            shown = str(path.resolve().relative_to(Path(__file__).resolve().parents[3]))
        except ValueError:
            shown = str(path)
        result["cases"] = {"file": shown, "total": len(cases), "kormed_exact": ok, "kormed_wrong": wrong}
        if ext is not None:
            ok_e, _ = exact_matches(ext, cases)
            result["cases"]["extractor_exact"] = ok_e
    return result


def register(app: typer.Typer, subapps: dict[str, typer.Typer]) -> None:
    """Add `kormed bench prepare`."""

    @subapps["bench"].command("prepare")
    def bench_prepare(
        docs: int = typer.Option(2000, "--docs", min=1, help="Number of synthetic NamuMark articles to generate."),
        seed: int = typer.Option(0, "--seed", help="Seed of the synthetic corpus (same seed -> same corpus)."),
        repeats: int = typer.Option(3, "--repeats", min=1, help="Timed passes per cleaner; the best is reported."),
        cases: Path = typer.Option(None, "--cases", help="Held-out cases JSONL (default: tests/data/...)."),
        output: Path = typer.Option(None, "--output", help="Also write the figures to this JSON file."),
    ) -> None:
        """Cleaning throughput (MB/s per core) of kormed vs namu-wiki-extractor, and held-out exact matches."""
        if cases is not None and not cases.exists():
            raise KormedError("cases file does not exist", path=cases)
        if output is not None:
            from kormed.io import check_output_path

            check_output_path(output, "file", "--output", inputs={"--cases": cases})
        typer.echo(f"generating {docs} synthetic NamuMark documents (seed {seed}) ...", err=True)
        res = run_bench(docs, seed, repeats, cases)
        typer.echo(f"corpus: {res['docs']} documents, {res['corpus_mb']} MB (single process, best of {repeats})")
        k = res["kormed"]
        typer.echo(f"kormed namumark_to_text : {k['mb_per_s_per_core']:8.3f} MB/s per core ({k['seconds']} s)")
        e = res.get("namu_wiki_extractor")
        if e is None:
            typer.echo("namu-wiki-extractor     : not installed (pip install 'kormed[dev]')")
        else:
            typer.echo(
                f"namu-wiki-extractor     : {e['mb_per_s_per_core']:8.3f} MB/s per core ({e['seconds']} s, "
                f"{e['errors']} documents raised)"
            )
            typer.echo(f"ratio kormed / extractor: {res['speed_ratio_kormed_over_extractor']:.2f}x")
        c = res.get("cases")
        if c is not None:
            line = f"held-out cases exactly right: kormed {c['kormed_exact']}/{c['total']}"
            if "extractor_exact" in c:
                line += f", namu-wiki-extractor {c['extractor_exact']}/{c['total']}"
            typer.echo(line)
            if c["kormed_wrong"]:
                typer.echo(f"kormed wrong on: {', '.join(c['kormed_wrong'])}")
        if output is not None:
            from kormed.io import write_json

            write_json(output, res)
            typer.echo(f"wrote {output}", err=True)
