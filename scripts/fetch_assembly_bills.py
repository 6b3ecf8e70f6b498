"""Real Korean prose offline: National Assembly bills' propose-reason texts, split by Assembly term.

The sdist of `korean-assembly-bills` (PyPI, CC-BY-4.0; its wheel has no data and downloads at run time, the sdist
ships `data/bills.parquet` + `data/bill_texts.parquet`) is downloaded once into --out (`pip download --no-deps
--no-binary :all:`; `--sdist FILE` uses a local copy) and read with pyarrow, newlines kept:

- general: bills of every committee but Health & Welfare (보건복지위원회);
- medical_law: bills amending a medical law (MEDICAL_LAWS: 의료법, 국민건강보험법, 감염병예방법, 약사법, 응급의료법,
  ..., by the law name in the bill title);
- Health & Welfare bills on other laws (welfare, pensions, childcare ...) are in neither set (counted).

Train = the 20th and 21st Assembly; held out = the 22nd. Held-out candidates (at most --heldout-docs per set, in
sha256 order) that share a 13-word span with any training text (kormed's own decontamination,
`kormed.prepare.decontaminate`) or repeat one are dropped and counted; the rest are split alternately into dev and
test. Writes under --out (`{"text": ...}` per line, deterministic bytes):

    train.jsonl dev.jsonl test.jsonl                              general (what `kormed bench quality
                                                                  --korean-text DIR` reads)
    medical_law_train.jsonl medical_law_dev.jsonl medical_law_test.jsonl
    manifest.json                                                 documents and characters per file, sources,
                                                                  what was dropped and why

    python scripts/fetch_assembly_bills.py --out ~/.cache/kormed/assembly_bills
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import unicodedata
from pathlib import Path
from typing import Any

PACKAGE = "korean-assembly-bills"
LICENSE = "CC-BY-4.0"
HEALTH_WELFARE = "보건복지위원회"
TRAIN_TERMS = (20, 21)
HELDOUT_TERM = 22
SPAN_WORDS = 13
# Laws whose amendments are medical text (the law name as the bill title starts). Welfare, pension, childcare,
# food-safety and cosmetics laws of the same committee are not medical and are left out.
MEDICAL_LAWS = frozenset({
    "의료법", "국민건강보험법", "감염병의 예방 및 관리에 관한 법률", "약사법", "응급의료에 관한 법률", "모자보건법",
    "정신건강증진 및 정신질환자 복지서비스 지원에 관한 법률", "의료기기법", "마약류 관리에 관한 법률",
    "국민건강증진법", "의료급여법", "장기등 이식에 관한 법률", "치매관리법", "농어촌 등 보건의료를 위한 특별조치법",
    "장애인 건강권 및 의료접근성 보장에 관한 법률", "의료기사 등에 관한 법률", "보건의료기본법",
    "공공보건의료에 관한 법률", "지역보건법", "의료사고 피해구제 및 의료분쟁 조정 등에 관한 법률",
    "지방의료원의 설립 및 운영에 관한 법률", "생명윤리 및 안전에 관한 법률", "혈액관리법", "보건의료기술 진흥법",
    "결핵예방법", "암관리법", "구강보건법", "검역법", "후천성면역결핍증 예방법", "희귀질환관리법", "간호법",
    "한의약 육성법", "의료해외진출 및 외국인환자 유치 지원에 관한 법률",
    "전공의의 수련환경 개선 및 지위 향상을 위한 법률",
    "호스피스ㆍ완화의료 및 임종과정에 있는 환자의 연명의료결정에 관한 법률",
    "첨단재생의료 및 첨단바이오의약품 안전 및 지원에 관한 법률", "심뇌혈관질환의 예방 및 관리에 관한 법률",
    "보건의료인력지원법", "인체조직안전 및 관리 등에 관한 법률", "시체 해부 및 보존 등에 관한 법률",
    "영양사에 관한 법률", "국민영양관리법", "제약산업 육성 및 지원에 관한 특별법", "의약품 등의 안전에 관한 법률",
    "난임치료 지원에 관한 법률",
})
_LAW_NAME = re.compile(r"^(.*?)\s*(?:일부개정법률안|전부개정법률안|제정법률안|폐지법률안|법률안)")


def law_name(bill_name: str) -> str:
    """The law a bill amends, from its title: `의료법 일부개정법률안(대안)` -> `의료법`."""
    name = unicodedata.normalize("NFC", bill_name or "").strip()
    m = _LAW_NAME.match(name)
    return (m.group(1) if m else name).strip()


def clean_text(text: str) -> str:
    """The propose-reason text, newlines kept: NFC, line endings unified, each line's edge spaces and blank runs
    removed."""
    lines = [ln.strip() for ln in unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
             .split("\n")]
    return "\n".join(ln for ln in lines if ln)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def download_sdist(cache: Path) -> Path:
    """The package's sdist in `cache` (downloaded once with pip; reused when present)."""
    found = sorted(cache.glob("korean_assembly_bills-*.tar.gz"))
    if found:
        return found[-1]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", PACKAGE,
                    "-d", str(cache)], check=True)
    found = sorted(cache.glob("korean_assembly_bills-*.tar.gz"))
    if not found:
        raise SystemExit(f"error: pip download left no korean_assembly_bills-*.tar.gz in {cache}")
    return found[-1]


def read_sdist(sdist: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(bills: BILL_ID, BILL_NAME, COMMITTEE, AGE), {BILL_ID: propose_reason} from the sdist's parquet files."""
    import pyarrow.parquet as pq

    tables: dict[str, Any] = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name.split("/", 1)[-1]
            if name in ("data/bills.parquet", "data/bill_texts.parquet") and member.isfile():
                raw = tar.extractfile(member)
                assert raw is not None
                tables[name] = pq.read_table(io.BytesIO(raw.read()))
    missing = {"data/bills.parquet", "data/bill_texts.parquet"} - set(tables)
    if missing:
        raise SystemExit(f"error: {sdist} has no {', '.join(sorted(missing))}")
    bills = tables["data/bills.parquet"].select(["BILL_ID", "BILL_NAME", "COMMITTEE", "AGE"]).to_pylist()
    texts_table = tables["data/bill_texts.parquet"]
    reasons = {row["BILL_ID"]: row["propose_reason"] for row in texts_table.select(["BILL_ID", "propose_reason"])
               .to_pylist() if row["propose_reason"]}
    return bills, reasons


def classify(bill: dict[str, Any]) -> str | None:
    """"medical_law", "general", "welfare" (Health & Welfare, not a medical law) or None (no committee)."""
    if law_name(bill["BILL_NAME"]) in MEDICAL_LAWS:
        return "medical_law"
    committee = bill.get("COMMITTEE")
    if not committee:
        return None
    return "welfare" if committee == HEALTH_WELFARE else "general"


def build(bills: list[dict[str, Any]], reasons: dict[str, str], *, heldout_docs: int,
          log: Any = print) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """The files' texts and the manifest's counts (see the module docstring)."""
    from kormed.prepare.decontaminate import EvalIndex, words

    skipped = {"no_text": 0, "no_committee": 0, "other_term": 0, "duplicate": 0}
    train: dict[str, set[str]] = {"general": set(), "medical_law": set(), "welfare": set()}
    held: dict[str, set[str]] = {"general": set(), "medical_law": set(), "welfare": set()}
    for bill in bills:
        text = clean_text(reasons.get(bill["BILL_ID"]) or "")
        if not text:
            skipped["no_text"] += 1
            continue
        kind = classify(bill)
        if kind is None:
            skipped["no_committee"] += 1
            continue
        term = bill.get("AGE")
        target = train if term in TRAIN_TERMS else held if term == HELDOUT_TERM else None
        if target is None:
            skipped["other_term"] += 1
            continue
        if text in target[kind]:
            skipped["duplicate"] += 1
        target[kind].add(text)
    train_all = set().union(*train.values())
    train_words = {tuple(words(t)) for t in train_all}
    candidates: dict[str, list[str]] = {}
    for kind in ("general", "medical_law"):
        ordered = sorted(held[kind] - train_all, key=sha)
        skipped["duplicate"] += len(held[kind] & train_all)
        fresh = [t for t in ordered if tuple(words(t)) not in train_words]  # not a training text re-punctuated
        skipped["duplicate"] += len(ordered) - len(fresh)
        candidates[kind] = fresh[:heldout_docs]
    # Held-out documents are the index (each its own set), training texts are matched against it: the index stays
    # small (a few thousand documents), however large the training side.
    index = EvalIndex(SPAN_WORDS, SPAN_WORDS)
    named = [(f"{kind}:{i}", text) for kind in candidates for i, text in enumerate(candidates[kind])]
    index.add_documents(named)
    contaminated = 0
    for text in sorted(train_all, key=sha):
        contaminated |= index.match_all(text)
    dropped = set(index.names(contaminated))
    files: dict[str, list[str]] = {}
    decontam: dict[str, Any] = {"span_words": SPAN_WORDS, "against": "every 20th-21st Assembly text"}
    for kind, prefix in (("general", ""), ("medical_law", "medical_law_")):
        kept = [t for i, t in enumerate(candidates[kind]) if f"{kind}:{i}" not in dropped]
        decontam[kind] = {"candidates": len(candidates[kind]), "dropped": len(candidates[kind]) - len(kept),
                          "dropped_characters": sum(len(t) for i, t in enumerate(candidates[kind])
                                                    if f"{kind}:{i}" in dropped)}
        files[f"{prefix}train.jsonl"] = sorted(train[kind], key=sha)
        files[f"{prefix}dev.jsonl"] = kept[1::2]
        files[f"{prefix}test.jsonl"] = kept[0::2]
        log(f"{kind}: {decontam[kind]['dropped']} of {len(candidates[kind])} held-out candidates share a "
            f"{SPAN_WORDS}-word span with training text (dropped)")
    manifest = {
        "source": {"package": PACKAGE, "license": LICENSE, "train_terms": list(TRAIN_TERMS),
                   "heldout_term": HELDOUT_TERM, "general": f"every committee but {HEALTH_WELFARE}",
                   "medical_law": "bills amending a law of MEDICAL_LAWS (scripts/fetch_assembly_bills.py)",
                   "left_out": {"welfare_train": len(train["welfare"]), "welfare_heldout": len(held["welfare"]),
                                **skipped}},
        "decontamination": decontam,
        "heldout_docs": heldout_docs,
        "files": {name: {"documents": len(docs), "characters": sum(len(d) for d in docs),
                         "newlines": sum(d.count("\n") for d in docs)} for name, docs in files.items()},
    }
    return files, manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache" / "kormed" / "assembly_bills")
    ap.add_argument("--sdist", type=Path, help="a local korean_assembly_bills-*.tar.gz (default: pip download once)")
    ap.add_argument("--heldout-docs", type=int, default=2000,
                    help="held-out candidates per set (general, medical_law), in sha256 order, before "
                         "decontamination")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sdist = args.sdist or download_sdist(args.out)
    bills, reasons = read_sdist(sdist)
    files, manifest = build(bills, reasons, heldout_docs=args.heldout_docs)
    manifest["source"]["sdist"] = {"file": sdist.name, "sha256": hashlib.sha256(sdist.read_bytes()).hexdigest()}
    from kormed.io import write_jsonl  # kormed's atomic JSONL writer (temp file + rename)

    for name, docs in files.items():
        write_jsonl(args.out / name, ({"text": text} for text in docs))
    tmp = args.out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(args.out / "manifest.json")
    for name, row in manifest["files"].items():
        print(f"{args.out / name}: {row['documents']:,} documents, {row['characters']:,} characters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
