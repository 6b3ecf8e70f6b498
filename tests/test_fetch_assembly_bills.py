"""scripts/fetch_assembly_bills.py on a small synthetic sdist (no network): newlines kept, split by Assembly
term, medical by the amended law, Health & Welfare's other bills in neither set, held-out texts sharing a 13-word
span with training text dropped (a 12-word overlap kept), counts in the manifest, same bytes on a rerun."""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from kormed.prepare.decontaminate import EvalIndex

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fetch_assembly_bills.py"


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("fetch_assembly_bills", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _words(tag: str, n: int) -> str:
    return " ".join(f"{tag}단어{i}" for i in range(n))


SHARED = _words("공유", 13)  # a 13-word span also in a training text
NEAR = _words("근접", 12)  # only 12 words shared


def _bills() -> list[dict[str, Any]]:
    rows = [
        # id, title, committee, term, text
        ("T1", "지방세법 일부개정법률안", "행정안전위원회", 20, f"현행법 첫째 줄\r\n둘째 줄 {SHARED} {NEAR} 끝"),
        ("T2", "의료법 일부개정법률안(대안)", "보건복지위원회", 21,
         "의료인의 면허 규정을 정비함.\n환자 안전을 높이고자 함."),
        ("T3", "국민연금법 일부개정법률안", "보건복지위원회", 21, "연금 급여를 조정함."),
        ("H1", "도로교통법 일부개정법률안", "행정안전위원회", 22, f"새 문단 하나\n  {SHARED} 다른 내용  \n"),
        ("H2", "주택법 일부개정법률안", "국토교통위원회", 22, f"주택 공급을 늘림.\n{NEAR} 새로운 끝맺음"),
        ("H3", "약사법 일부개정법률안", "보건복지위원회", 22, "의약품 안전 관리를 강화함.\n약국 개설 요건을 정비함."),
        ("H4", "응급의료에 관한 법률 일부개정법률안", "보건복지위원회", 22, "응급실 인력을 확충함."),
        ("H5", "아동복지법 일부개정법률안", "보건복지위원회", 22, "아동 보호 체계를 개선함."),
        ("H6", "건축법 일부개정법률안", "국토교통위원회", 22, f"현행법, 첫째 줄\n둘째 줄 {SHARED} {NEAR} 끝."),
        ("H7", "세법 일부개정법률안", None, 22, "위원회 없음."),
        ("H8", "소방법 일부개정법률안", "행정안전위원회", 22, ""),
    ]
    return rows


def build_sdist(path: Path) -> Path:
    rows = _bills()
    bills = pa.table({"BILL_ID": [r[0] for r in rows], "BILL_NAME": [r[1] for r in rows],
                      "COMMITTEE": [r[2] for r in rows], "AGE": [r[3] for r in rows],
                      "PROPOSER": ["x"] * len(rows)})
    texts = pa.table({"BILL_ID": [r[0] for r in rows], "propose_reason": [r[4] or None for r in rows],
                      "scrape_status": ["ok"] * len(rows)})
    with tarfile.open(path, "w:gz") as tar:
        for name, table in (("bills", bills), ("bill_texts", texts)):
            buf = io.BytesIO()
            pq.write_table(table, buf)
            info = tarfile.TarInfo(f"korean_assembly_bills-0.1.0/data/{name}.parquet")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    return path


def _read(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_split_by_term_medical_by_law_decontaminated(tmp_path: Path) -> None:
    sdist = build_sdist(tmp_path / "korean_assembly_bills-0.1.0.tar.gz")
    out = tmp_path / "bills"
    assert _script().main(["--sdist", str(sdist), "--out", str(out)]) == 0
    general = {name: _read(out / f"{name}.jsonl") for name in ("train", "dev", "test")}
    medical = {name: _read(out / f"medical_law_{name}.jsonl") for name in ("train", "dev", "test")}
    assert general["train"] == [f"현행법 첫째 줄\n둘째 줄 {SHARED} {NEAR} 끝"]  # newline kept, \r\n unified
    assert medical["train"] == ["의료인의 면허 규정을 정비함.\n환자 안전을 높이고자 함."]
    held_general = general["dev"] + general["test"]
    # H1 shares 13 words with T1 (dropped); H6 repeats T1's words (a duplicate); H2 shares 12 (kept).
    assert held_general == [f"주택 공급을 늘림.\n{NEAR} 새로운 끝맺음"]
    assert sorted(medical["dev"] + medical["test"]) == sorted(
        ["의약품 안전 관리를 강화함.\n약국 개설 요건을 정비함.", "응급실 인력을 확충함."])
    everything = [t for part in (*general.values(), *medical.values()) for t in part]
    assert not any("연금" in t or "아동" in t or "위원회 없음" in t for t in everything)  # welfare, no committee
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["decontamination"]["general"] == {"candidates": 2, "dropped": 1,
                                                      "dropped_characters": len(f"새 문단 하나\n{SHARED} 다른 내용")}
    assert manifest["source"]["left_out"]["duplicate"] == 1
    assert manifest["source"]["left_out"]["welfare_heldout"] == 1
    assert manifest["source"]["left_out"]["no_committee"] == 1
    assert manifest["source"]["left_out"]["no_text"] == 1
    assert manifest["files"]["medical_law_train.jsonl"] == {"documents": 1, "characters": len(medical["train"][0]),
                                                            "newlines": 1}
    first = {p.name: p.read_bytes() for p in out.glob("*.json*")}
    assert _script().main(["--sdist", str(sdist), "--out", str(out)]) == 0
    assert {p.name: p.read_bytes() for p in out.glob("*.json*")} == first


def test_match_all_names_every_document_a_text_touches() -> None:
    index = EvalIndex(13, 13)
    index.add_documents([("a", _words("가", 20)), ("b", _words("나", 20)), ("short", _words("다", 5))])
    text = _words("가", 14) + " 사이 " + _words("나", 13)
    assert index.names(index.match_all(text)) == ["a", "b"]
    assert index.names(index.match(text)) == ["a"]  # match stops at the first span found
    assert index.sets[2].too_short == 1
