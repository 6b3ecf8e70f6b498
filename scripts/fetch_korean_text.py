"""Build a held-out Korean text set offline-reproducibly from package registries (no model-hub downloads).

Sources (docs/commands/tokenizer-extend.md, "Measured"): the Korean help pages of the Debian packages
gimp-help-ko, libreoffice-help-ko and debian-faq-ko (`apt-get download`; HTML -> visible text, pages with
>= 30% Hangul and >= 200 Hangul characters) and the KoNLPy 0.6.0 corpora (`pip download --no-deps`; each .txt
file one document). Documents are deduplicated, sorted by content hash and split deterministically into
train/dev/test JSONL files ({"text": ...} per line) under --out, with a manifest (counts, characters, sources).

    python scripts/fetch_korean_text.py --out ~/.cache/kormed/korean_text

Also writes `medical_test.jsonl`: Korean medical text from the bundled sample data (the medical dictionary as
`term: definition` lines, and the KorMedMCQA-format train/few-shot questions with options and explanations) --
medical held-out text for the vocabulary benchmark, which trains on the general `train.jsonl` only.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEBIAN_PACKAGES = ["gimp-help-ko", "libreoffice-help-ko", "debian-faq-ko"]
KONLPY = "konlpy==0.6.0"
HANGUL = re.compile(r"[\uac00-\ud7a3]")
DROP_BLOCKS = re.compile(r"<(script|style)\b.*?</\1\s*>", re.S | re.I)
TAGS = re.compile(r"<[^>]+>")
SPACES = re.compile(r"\s+")


def html_text(raw: str) -> str:
    """Visible text of an HTML page: script/style dropped, tags removed, entities decoded, whitespace collapsed."""
    text = TAGS.sub(" ", DROP_BLOCKS.sub(" ", raw))
    return SPACES.sub(" ", html.unescape(text)).strip()


def korean_enough(text: str, min_share: float = 0.3, min_hangul: int = 200) -> bool:
    hangul = len(HANGUL.findall(text))
    return hangul >= min_hangul and hangul >= min_share * max(1, len(text))


def debian_documents(work: Path) -> list[str]:
    debs = work / "debs"
    debs.mkdir()
    subprocess.run(["apt-get", "download", *DEBIAN_PACKAGES], cwd=debs, check=True, capture_output=True)
    docs = []
    for deb in sorted(debs.glob("*.deb")):
        target = work / "ex" / deb.stem
        target.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
        for page in sorted(target.rglob("*.htm*")):
            text = html_text(page.read_text(encoding="utf-8", errors="replace"))
            if korean_enough(text):
                docs.append(text)
    return docs


def konlpy_documents(work: Path) -> list[str]:
    wheels = work / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", KONLPY, "-d", str(wheels)],
                   check=True)
    docs = []
    for wheel in sorted(wheels.glob("konlpy-*.whl")):
        with zipfile.ZipFile(wheel) as z:
            for name in sorted(n for n in z.namelist() if n.startswith("konlpy/data/corpus/") and n.endswith(".txt")):
                text = SPACES.sub(" ", z.read(name).decode("utf-8", errors="replace")).strip()
                if korean_enough(text, min_share=0.2):
                    docs.append(text)
    return docs


def medical_documents(per_doc: int = 20) -> list[str]:
    """Korean medical text from the bundled sample data: the medical dictionary as `term: definition` lines
    (`per_doc` entries per document) and the KorMedMCQA-format train/few-shot questions with their options and
    explanations (one document each)."""
    from kormed.sample_data import sample_data_root

    root = sample_data_root() / "data"
    entries = json.loads((root / "02_refined" / "01_medical_dict.json").read_text(encoding="utf-8"))
    lines = [f"{e['term']}: {e['definition']}" for e in entries if e.get("term") and e.get("definition")]
    docs = ["\n".join(lines[i:i + per_doc]) for i in range(0, len(lines), per_doc)]
    for name in ("train.jsonl", "fewshot.jsonl"):
        for line in (root / "01_raw" / "02_kor_med_test" / name).read_text(encoding="utf-8").splitlines():
            q = json.loads(line)
            options = " ".join(f"{k}. {q[k]}" for k in "ABCDE" if q.get(k))
            docs.append(" ".join(x for x in (q.get("question", ""), options, q.get("cot", "")) if x))
    return docs


def split(docs: list[str], dev_share: float, test_share: float) -> dict[str, list[str]]:
    """Deterministic split: unique documents ordered by sha256, every k-th to dev/test."""
    unique = sorted(set(docs), key=lambda t: hashlib.sha256(t.encode("utf-8")).hexdigest())
    parts: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    for i, text in enumerate(unique):
        frac = (i % 100) / 100
        name = "test" if frac < test_share else "dev" if frac < test_share + dev_share else "train"
        parts[name].append(text)
    return parts


def write_jsonl(path: Path, docs: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for text in docs:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    tmp.replace(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache" / "kormed" / "korean_text")
    ap.add_argument("--dev-share", type=float, default=0.1)
    ap.add_argument("--test-share", type=float, default=0.1)
    ap.add_argument("--no-debian", action="store_true", help="KoNLPy corpora only (when apt-get cannot download)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sources = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        debian = [] if args.no_debian else debian_documents(work)
        konlpy = konlpy_documents(work)
    sources = {"debian": {"packages": DEBIAN_PACKAGES if debian else [], "documents": len(debian)},
               "konlpy": {"package": KONLPY, "documents": len(konlpy)}}
    parts = split(debian + konlpy, args.dev_share, args.test_share)
    parts["medical_test"] = medical_documents()
    manifest = {"sources": sources, "files": {}}
    for name, docs in parts.items():
        write_jsonl(args.out / f"{name}.jsonl", docs)
        manifest["files"][f"{name}.jsonl"] = {"documents": len(docs), "characters": sum(len(d) for d in docs)}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                            encoding="utf-8")
    for name, row in manifest["files"].items():
        print(f"{args.out / name}: {row['documents']} documents, {row['characters']:,} characters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
