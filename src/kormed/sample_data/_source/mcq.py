# ruff: noqa: E501  (authored prose: long Korean lines read better unbroken)
"""Sample questions in the KorMedMCQA schema (original questions written for kormed, not exam items).

Each question is authored with its correct option and four wrong ones; the builder places the correct option at
a balanced, deterministic position (A-E) and replaces `{ans}` in `cot` with that letter.
Train: exam years 2012-2021; fewshot: 2019-2021 (5 per exam, each with expert reasoning); test: 2022-2024.
"""

from __future__ import annotations

from typing import Any


def _q(
    subject: str,
    year: int,
    period: int,
    q_number: int,
    question: str,
    correct: str,
    wrong: list[str],
    cot: str = "",
) -> dict[str, Any]:
    return {
        "subject": subject,
        "year": year,
        "period": period,
        "q_number": q_number,
        "question": question,
        "correct": correct,
        "wrong": wrong,
        "cot": cot,
    }


TRAIN: list[dict[str, Any]] = [
    # doctor
    _q("doctor", 2012, 1, 3, "제1형 당뇨병의 주된 병태생리는?",
       "췌장 베타세포의 자가면역 파괴(autoimmune destruction of beta cells)",
       ["말초 인슐린 저항성(peripheral insulin resistance)", "글루카곤 과다 분비(glucagon hypersecretion)",
        "코르티솔 과다(hypercortisolism)", "갑상선 호르몬 과다(thyroid hormone excess)"],
       "제1형 당뇨병은 췌장 랑게르한스섬의 베타세포가 자가면역 기전으로 파괴되어 인슐린이 절대적으로 부족해지는 "
       "질환이다. 말초 인슐린 저항성은 제2형 당뇨병의 특징이다. 따라서 정답은 {ans}이다."),
    _q("doctor", 2013, 1, 17, "급성 심근경색 진단에 가장 특이도가 높은 혈액 표지자는?",
       "트로포닌(troponin)",
       ["미오글로빈(myoglobin)", "젖산탈수소효소(lactate dehydrogenase)",
        "아스파르테이트아미노전이효소(aspartate aminotransferase)", "C-반응단백(C-reactive protein)"],
       "트로포닌은 심장 근육에만 있는 조절 단백질이라 혈중에서 올라가면 심근 손상을 강하게 시사한다. 미오글로빈은 "
       "일찍 오르지만 골격근에도 있어 특이도가 낮고, 젖산탈수소효소와 AST는 여러 장기에 있다. 따라서 정답은 {ans}이다."),
    _q("doctor", 2014, 2, 8, "지역사회획득 폐렴의 가장 흔한 원인균은?",
       "폐렴사슬알균(Streptococcus pneumoniae)",
       ["녹농균(Pseudomonas aeruginosa)", "대장균(Escherichia coli)",
        "아시네토박터(Acinetobacter baumannii)", "칸디다(Candida albicans)"],
       "지역사회에서 발생한 폐렴의 원인균으로는 폐렴사슬알균이 가장 흔하다. 녹농균과 아시네토박터는 주로 "
       "병원획득 폐렴이나 면역저하 환자에서 문제가 된다. 따라서 정답은 {ans}이다."),
    _q("doctor", 2015, 1, 42, "철결핍빈혈의 검사 소견으로 옳은 것은?",
       "혈청 페리틴 감소(decreased serum ferritin)",
       ["평균적혈구용적 증가(increased MCV)", "총철결합능 감소(decreased TIBC)",
        "혈청철 증가(increased serum iron)", "트랜스페린 포화도 증가(increased transferrin saturation)"],
       "철결핍빈혈에서는 저장철을 반영하는 페리틴이 가장 먼저 떨어진다. 적혈구는 작아져 평균적혈구용적이 감소하고, "
       "총철결합능은 증가하며 혈청철과 트랜스페린 포화도는 감소한다. 따라서 정답은 {ans}이다."),
    _q("doctor", 2016, 2, 25, "헬리코박터 파일로리(Helicobacter pylori) 감염과 관련성이 가장 큰 질환은?",
       "위 말트림프종(gastric MALT lymphoma)",
       ["급성 충수염(acute appendicitis)", "담석증(cholelithiasis)", "급성 췌장염(acute pancreatitis)",
        "궤양성 대장염(ulcerative colitis)"]),
    _q("doctor", 2017, 1, 31, "갑상선기능항진증의 가장 흔한 원인은?",
       "그레이브스병(Graves disease)",
       ["하시모토갑상선염(Hashimoto thyroiditis)", "요오드 결핍(iodine deficiency)",
        "뇌하수체기능저하증(hypopituitarism)", "갑상선 전절제술 후 상태(post-thyroidectomy state)"],
       "그레이브스병은 TSH 수용체를 자극하는 자가항체가 갑상선 호르몬 분비를 늘리는 병으로, 갑상선기능항진증의 "
       "가장 흔한 원인이다. 하시모토갑상선염, 뇌하수체기능저하증, 갑상선 절제 후 상태는 오히려 기능저하를 "
       "일으킨다. 따라서 정답은 {ans}이다."),
    _q("doctor", 2018, 2, 12, "천식 급성 악화 시 증상 완화를 위해 가장 먼저 사용하는 약물은?",
       "흡입 속효성 베타2작용제(short-acting beta2 agonist)",
       ["류코트리엔 조절제(leukotriene modifier)", "경구 항히스타민제(oral antihistamine)",
        "흡입 지속성 항콜린제(long-acting muscarinic antagonist)", "크로몰린(cromolyn)"],
       "천식 급성 악화에서 기관지를 빠르게 확장하는 약은 흡입 속효성 베타2작용제이다. 류코트리엔 조절제와 "
       "지속성 항콜린제는 유지 치료에 쓰이며 급성 증상을 빨리 풀지 못한다. 따라서 정답은 {ans}이다."),
    _q("doctor", 2019, 1, 55, "폐경 후 여성에서 골다공증 진단 기준이 되는 골밀도 T-점수는?",
       "-2.5 이하", ["-1.0 이상", "-1.0 미만 -2.5 초과", "+1.0 이상", "-0.5 이상 +0.5 이하"]),
    _q("doctor", 2020, 2, 7, "급성 허혈뇌졸중에서 정맥 내 혈전용해제(alteplase) 투여가 일반적으로 권고되는, 증상 발생 후 최대 시간은?",
       "4.5시간", ["1시간", "12시간", "24시간", "72시간"]),
    _q("doctor", 2021, 1, 64, "B형 간염에서 과거 감염 후 회복되어 면역이 생긴 상태를 시사하는 혈청 검사 결과는?",
       "HBsAg 음성, anti-HBs 양성, anti-HBc IgG 양성",
       ["HBsAg 양성, anti-HBc IgM 양성", "HBsAg 음성, anti-HBs 양성, anti-HBc 음성",
        "HBsAg 양성, HBeAg 양성, anti-HBs 음성", "HBsAg 음성, anti-HBs 음성, anti-HBc 음성"],
       "anti-HBc는 실제 감염이 있었을 때만 생기며, anti-HBs 양성은 면역을 뜻한다. 예방접종만 한 경우에는 "
       "anti-HBc가 음성이다. HBsAg가 음성이고 anti-HBs와 anti-HBc IgG가 모두 양성이면 과거 감염 후 회복이다. "
       "따라서 정답은 {ans}이다."),
    # nurse
    _q("nurse", 2012, 1, 11, "성인 심폐소생술에서 권장되는 가슴압박 속도는?",
       "분당 100~120회", ["분당 60~80회", "분당 80~100회", "분당 120~140회", "분당 140~160회"],
       "성인 가슴압박은 분당 100~120회의 속도로 약 5 cm 깊이로 누르고, 누른 뒤에는 가슴이 완전히 올라오게 한다. "
       "너무 빠르면 심장이 혈액으로 채워질 시간이 부족해진다. 따라서 정답은 {ans}이다."),
    _q("nurse", 2013, 1, 22, "성인 심폐소생술에서 권장되는 가슴압박 깊이는?",
       "약 5cm", ["약 2cm", "약 3cm", "약 8cm", "약 10cm"]),
    _q("nurse", 2014, 1, 37, "욕창(pressure ulcer) 예방을 위한 간호중재로 옳은 것은?",
       "적어도 2시간마다 체위를 변경한다.",
       ["뼈 돌출 부위를 세게 마사지한다.", "침상 머리를 60도 이상으로 계속 올려 둔다.",
        "도넛 모양 쿠션을 받쳐 준다.", "피부를 늘 축축하게 유지한다."],
       "욕창 예방의 핵심은 압력을 분산하는 것이다. 규칙적인 체위 변경이 기본이며, 뼈 돌출 부위 마사지와 도넛 "
       "모양 쿠션은 오히려 조직 손상을 늘린다. 침상 머리를 높이 올리면 전단력이 커진다. 따라서 정답은 {ans}이다."),
    _q("nurse", 2015, 1, 9, "인슐린 피하주사 부위 중 흡수 속도가 가장 빠른 곳은?",
       "복부(abdomen)", ["상완 후면(posterior upper arm)", "대퇴 전면(anterior thigh)", "둔부(buttock)",
                        "견갑 하부(subscapular area)"]),
    _q("nurse", 2016, 1, 48, "저칼륨혈증(hypokalemia) 환자의 심전도에서 나타날 수 있는 소견은?",
       "U파 출현(prominent U wave)",
       ["뾰족한 T파(peaked T wave)", "P파 소실(loss of P wave)", "QT 간격 단축(shortened QT interval)",
        "ST분절 상승(ST elevation)"],
       "저칼륨혈증에서는 T파가 낮아지고 U파가 뚜렷해지며 ST분절이 내려간다. 뾰족한 T파와 P파 소실은 고칼륨혈증, "
       "QT 간격 단축은 고칼슘혈증의 소견이다. 따라서 정답은 {ans}이다."),
    _q("nurse", 2017, 1, 63, "헤파린(heparin) 과다 투여로 출혈이 있을 때 사용하는 길항제는?",
       "프로타민 황산염(protamine sulfate)",
       ["비타민 K(vitamin K)", "날록손(naloxone)", "플루마제닐(flumazenil)", "아세틸시스테인(acetylcysteine)"]),
    _q("nurse", 2018, 1, 15, "수혈 중 환자가 오한, 허리 통증, 호흡곤란을 호소할 때 가장 먼저 해야 할 간호중재는?",
       "즉시 수혈을 중단한다.",
       ["수혈 속도를 늦추고 계속 관찰한다.", "해열제를 투여한 뒤 수혈을 계속한다.",
        "다리를 올려 주고 수혈을 계속한다.", "남은 혈액을 바로 폐기한다."],
       "오한, 허리 통증, 호흡곤란은 급성 용혈성 수혈반응을 의심하게 한다. 가장 먼저 수혈을 멈추고 정맥로는 "
       "생리식염수로 유지하며, 남은 혈액은 폐기하지 않고 검사를 위해 혈액은행으로 보낸다. 따라서 정답은 {ans}이다."),
    _q("nurse", 2019, 1, 28, "좌심부전 환자에게 흔히 나타나는 증상은?",
       "기좌호흡(orthopnea)",
       ["경정맥 팽대(jugular venous distension)", "간비대(hepatomegaly)", "복수(ascites)",
        "하지 함요부종(pitting edema of legs)"]),
    _q("nurse", 2020, 1, 5, "신생아 아프가 점수(Apgar score)의 평가 항목이 아닌 것은?",
       "체온(body temperature)",
       ["심박동수(heart rate)", "호흡 노력(respiratory effort)", "근긴장도(muscle tone)", "피부색(skin color)"],
       "아프가 점수는 출생 후 1분과 5분에 심박동수, 호흡 노력, 근긴장도, 반사 반응, 피부색의 다섯 항목을 각각 "
       "0~2점으로 평가한다. 체온은 평가 항목에 들어가지 않는다. 따라서 정답은 {ans}이다."),
    _q("nurse", 2021, 1, 52, "정상 산욕기에 자궁저부는 하루 평균 얼마씩 하강하는가?",
       "약 1cm", ["약 0.1cm", "약 3cm", "약 5cm", "하강하지 않는다"]),
    # pharm
    _q("pharm", 2012, 1, 101, "아세트아미노펜(acetaminophen) 과량 복용 시 사용하는 해독제는?",
       "N-아세틸시스테인(N-acetylcysteine)",
       ["날록손(naloxone)", "플루마제닐(flumazenil)", "아트로핀(atropine)", "데페록사민(deferoxamine)"],
       "아세트아미노펜이 과량이면 독성 대사산물인 NAPQI가 간에 쌓인다. N-아세틸시스테인은 글루타티온을 "
       "보충하여 이를 해독한다. 날록손은 아편유사제, 데페록사민은 철 중독의 해독제이다. 따라서 정답은 {ans}이다."),
    _q("pharm", 2013, 1, 86, "와파린(warfarin)의 작용 기전은?",
       "비타민 K 에폭사이드 환원효소 억제로 응고인자 II, VII, IX, X 합성 감소",
       ["트롬빈 직접 억제", "Xa 인자 직접 억제", "안티트롬빈 III 활성화", "혈소판 P2Y12 수용체 차단"],
       "와파린은 비타민 K 에폭사이드 환원효소를 억제하여 활성형 비타민 K의 재생을 막고, 그 결과 간에서 응고인자 "
       "II, VII, IX, X의 기능적 합성이 줄어든다. 트롬빈 직접 억제는 다비가트란, Xa 직접 억제는 리바록사반, "
       "안티트롬빈 활성화는 헤파린의 기전이다. 따라서 정답은 {ans}이다."),
    _q("pharm", 2014, 1, 77, "스타틴(statin) 계열 약물의 작용 기전은?",
       "HMG-CoA 환원효소 억제(HMG-CoA reductase inhibition)",
       ["담즙산 결합(bile acid sequestration)", "NPC1L1 매개 콜레스테롤 흡수 억제(NPC1L1 inhibition)",
        "PPAR-α 활성화(PPAR-alpha activation)", "PCSK9 억제(PCSK9 inhibition)"]),
    _q("pharm", 2015, 1, 93, "안지오텐신전환효소 억제제(ACE inhibitor)의 마른기침과 관련된 기전은?",
       "브라디키닌 축적(bradykinin accumulation)",
       ["히스타민 유리(histamine release)", "베타2 수용체 차단(beta2 receptor blockade)",
        "알도스테론 증가(increased aldosterone)", "칼슘 통로 차단(calcium channel blockade)"],
       "ACE는 브라디키닌을 분해하는 효소이기도 하다. ACE를 억제하면 기도에 브라디키닌이 쌓여 마른기침이 "
       "생긴다. 안지오텐신 수용체 차단제에서 기침이 드문 이유도 이 때문이다. 따라서 정답은 {ans}이다."),
    _q("pharm", 2016, 1, 68, "페니실린(penicillin) 계열 항생제의 작용 기전은?",
       "세포벽 펩티도글리칸 교차결합 억제(inhibition of cell wall synthesis)",
       ["30S 리보솜 소단위 억제", "50S 리보솜 소단위 억제", "DNA 자이레이스 억제(DNA gyrase inhibition)",
        "엽산 합성 억제(folate synthesis inhibition)"]),
    _q("pharm", 2017, 1, 112, "메트포르민(metformin)의 드물지만 심각한 부작용은?",
       "젖산산증(lactic acidosis)",
       ["저칼슘혈증(hypocalcemia)", "체중 증가(weight gain)", "대사성 알칼리증(metabolic alkalosis)",
        "무과립구증(agranulocytosis)"]),
    _q("pharm", 2018, 1, 59, "아미노글리코사이드(aminoglycoside) 계열 항생제의 대표적인 부작용은?",
       "신독성과 이독성(nephrotoxicity and ototoxicity)",
       ["회색아기증후군(gray baby syndrome)", "치아 변색(tooth discoloration)",
        "적색인간증후군(red man syndrome)", "건염과 힘줄 파열(tendinitis and tendon rupture)"],
       "아미노글리코사이드는 콩팥 세뇨관과 내이의 유모세포에 쌓여 신독성과 이독성을 일으키므로 혈중 농도와 콩팥 "
       "기능을 확인하며 쓴다. 회색아기증후군은 클로람페니콜, 치아 변색은 테트라사이클린, 적색인간증후군은 "
       "반코마이신, 힘줄 파열은 퀴놀론의 부작용이다. 따라서 정답은 {ans}이다."),
    _q("pharm", 2019, 1, 104, "모르핀(morphine) 과량 투여로 호흡억제가 생겼을 때 사용하는 길항제는?",
       "날록손(naloxone)",
       ["플루마제닐(flumazenil)", "피소스티그민(physostigmine)", "프로타민(protamine)", "글루카곤(glucagon)"]),
    _q("pharm", 2020, 1, 81, "CYP3A4를 강하게 억제하여 약물상호작용을 일으키는 약물은?",
       "케토코나졸(ketoconazole)",
       ["리팜핀(rifampin)", "카르바마제핀(carbamazepine)", "페니토인(phenytoin)", "성요한풀(St. John's wort)"],
       "리팜핀, 카르바마제핀, 페니토인, 성요한풀은 모두 CYP3A4를 유도하여 다른 약의 농도를 낮춘다. 아졸계 "
       "항진균제인 케토코나졸은 CYP3A4를 강하게 억제한다. 따라서 정답은 {ans}이다."),
    _q("pharm", 2021, 1, 96, "레보티록신(levothyroxine) 복약지도로 옳은 것은?",
       "아침 공복에 복용한다.",
       ["칼슘제와 함께 복용한다.", "식사 직후에 복용한다.", "철분제와 동시에 복용한다.",
        "증상이 좋아지면 임의로 중단한다."],
       "레보티록신은 음식, 칼슘제, 철분제와 함께 먹으면 흡수가 줄어든다. 그래서 아침 공복에 물과 함께 먹고, 칼슘제나 "
       "철분제와는 시간 간격을 둔다. 갑상선기능저하증은 대개 평생 호르몬 보충이 필요하므로 임의로 끊지 않는다. "
       "따라서 정답은 {ans}이다."),
    # dentist
    _q("dentist", 2012, 1, 14, "치아우식증(dental caries)의 주요 원인균은?",
       "뮤탄스연쇄상구균(Streptococcus mutans)",
       ["포르피로모나스 진지발리스(Porphyromonas gingivalis)", "칸디다 알비칸스(Candida albicans)",
        "황색포도알균(Staphylococcus aureus)", "트레포네마 팔리둠(Treponema pallidum)"],
       "뮤탄스연쇄상구균은 설탕을 이용해 치아 표면에 달라붙는 끈적한 다당류를 만들고, 당을 분해해 산을 만들어 "
       "법랑질을 녹인다. 포르피로모나스 진지발리스는 치주염의 원인균이다. 따라서 정답은 {ans}이다."),
    _q("dentist", 2013, 1, 29, "영구치 중 일반적으로 가장 먼저 맹출하는 치아는?",
       "하악 제1대구치(mandibular first molar)",
       ["상악 중절치(maxillary central incisor)", "하악 견치(mandibular canine)",
        "상악 제2소구치(maxillary second premolar)", "하악 제3대구치(mandibular third molar)"]),
    _q("dentist", 2014, 1, 6, "정상 유치열의 치아 개수는?", "20개", ["16개", "24개", "28개", "32개"]),
    _q("dentist", 2015, 1, 41, "만성 치주염과 가장 관련이 깊은 세균은?",
       "포르피로모나스 진지발리스(Porphyromonas gingivalis)",
       ["뮤탄스연쇄상구균(Streptococcus mutans)", "락토바실러스(Lactobacillus)", "대장균(Escherichia coli)",
        "폐렴사슬알균(Streptococcus pneumoniae)"],
       "포르피로모나스 진지발리스는 그람음성 혐기성 세균으로 만성 치주염의 대표적인 원인균이다. 뮤탄스연쇄상구균과 "
       "락토바실러스는 치아우식증과 관련된다. 따라서 정답은 {ans}이다."),
    _q("dentist", 2016, 1, 53, "불소가 치아우식을 예방하는 주된 기전은?",
       "법랑질의 수산화인회석을 불화인회석으로 바꾸어 산에 대한 저항성을 높인다.",
       ["치은 출혈을 억제한다.", "타액 분비를 감소시킨다.", "상아질 세관을 넓힌다.", "치아를 미백한다."],
       "불소는 법랑질의 수산화인회석에 들어가 산에 덜 녹는 불화인회석을 만들고, 초기 우식 부위의 재광화를 돕는다. "
       "또 세균의 산 생성을 억제한다. 따라서 정답은 {ans}이다."),
    _q("dentist", 2017, 1, 72, "하치조신경 전달마취 시 함께 마취되어 혀 앞쪽의 감각이 소실되는 신경은?",
       "설신경(lingual nerve)",
       ["안면신경(facial nerve)", "설하신경(hypoglossal nerve)", "협신경(buccal nerve)",
        "후상치조신경(posterior superior alveolar nerve)"]),
    _q("dentist", 2018, 1, 19, "치아의 경조직 중 가장 단단한 것은?",
       "법랑질(enamel)", ["상아질(dentin)", "백악질(cementum)", "치수(dental pulp)", "치조골(alveolar bone)"],
       "법랑질은 약 96%가 수산화인회석 결정으로 이루어져 있어 사람 몸에서 가장 단단한 조직이다. 상아질과 백악질은 "
       "유기질과 수분이 더 많고, 치수는 신경과 혈관이 있는 연조직이다. 따라서 정답은 {ans}이다."),
    _q("dentist", 2019, 1, 88, "근관치료(root canal treatment)의 적응증은?",
       "비가역적 치수염(irreversible pulpitis)",
       ["가역적 치수염(reversible pulpitis)", "치은염(gingivitis)", "단순 치석 침착(calculus deposit)",
        "치아 외부 착색(extrinsic stain)"],
       "가역적 치수염은 자극원을 없애면 치수가 회복되므로 근관치료가 필요 없다. 비가역적 치수염은 치수가 회복될 수 "
       "없어 감염된 치수를 제거하는 근관치료가 필요하다. 따라서 정답은 {ans}이다."),
    _q("dentist", 2020, 1, 35, "구강암 중 가장 흔한 조직학적 유형은?",
       "편평세포암(squamous cell carcinoma)",
       ["선암(adenocarcinoma)", "흑색종(melanoma)", "기저세포암(basal cell carcinoma)", "림프종(lymphoma)"]),
    _q("dentist", 2021, 1, 47, "치과용 아말감(amalgam)에서 합금 분말과 혼합되는 액체 금속은?",
       "수은(mercury)", ["납(lead)", "카드뮴(cadmium)", "비소(arsenic)", "니켈(nickel)"]),
]

TEST: list[dict[str, Any]] = [
    # doctor
    _q("doctor", 2022, 1, 4, "신증후군(nephrotic syndrome)의 특징이 아닌 것은?",
       "적혈구 원주를 동반한 혈뇨(hematuria with RBC casts)",
       ["고도 단백뇨(heavy proteinuria)", "저알부민혈증(hypoalbuminemia)", "부종(edema)",
        "고지혈증(hyperlipidemia)"]),
    _q("doctor", 2022, 1, 23, "성인 아나필락시스(anaphylaxis)의 1차 치료로 옳은 것은?",
       "에피네프린 근육주사(intramuscular epinephrine)",
       ["항히스타민제 경구 투여(oral antihistamine)", "스테로이드 단독 정맥 투여(intravenous corticosteroid alone)",
        "살부타몰 흡입 단독(inhaled salbutamol alone)", "도파민 정맥 주입(intravenous dopamine)"]),
    _q("doctor", 2022, 2, 40, "급성 충수염에서 배꼽과 오른쪽 위앞엉덩뼈가시를 잇는 선의 바깥 1/3 지점에 나타나는 압통점은?",
       "맥버니점(McBurney point)",
       ["로브싱징후(Rovsing sign)", "컬렌징후(Cullen sign)", "그레이터너징후(Grey Turner sign)",
        "머피징후(Murphy sign)"]),
    _q("doctor", 2023, 1, 12, "와파린(warfarin) 치료 효과를 감시하는 데 사용하는 검사는?",
       "국제정상화비율(INR)",
       ["활성화부분트롬보플라스틴시간(aPTT)", "출혈시간(bleeding time)", "혈소판수(platelet count)",
        "D-이합체(D-dimer)"]),
    _q("doctor", 2023, 1, 35, "결핵 1차 치료제 중 시신경염에 의한 시력 저하와 적록 색각 이상으로 가장 잘 알려진 약물은?",
       "에탐부톨(ethambutol)",
       ["리팜핀(rifampin)", "피라진아미드(pyrazinamide)", "이소니아지드(isoniazid)", "스트렙토마이신(streptomycin)"]),
    _q("doctor", 2023, 2, 18, "쿠싱증후군(Cushing syndrome)에서 볼 수 있는 소견은?",
       "복부의 자색선조(purple striae)",
       ["체중 감소(weight loss)", "고칼륨혈증(hyperkalemia)", "저혈당(hypoglycemia)", "저혈압(hypotension)"]),
    _q("doctor", 2024, 1, 9, "고칼륨혈증 응급치료에서 심근세포막 안정화를 위해 가장 먼저 투여하는 것은?",
       "글루콘산칼슘(calcium gluconate)",
       ["인슐린과 포도당(insulin with glucose)", "폴리스티렌설폰산나트륨(sodium polystyrene sulfonate)",
        "푸로세미드(furosemide)", "탄산수소나트륨(sodium bicarbonate)"]),
    _q("doctor", 2024, 1, 27, "간경변증 환자의 복수 치료에 일차적으로 사용하는 이뇨제는?",
       "스피로노락톤(spironolactone)",
       ["아세타졸아마이드(acetazolamide)", "만니톨(mannitol)", "하이드로클로로티아지드(hydrochlorothiazide)",
        "인다파미드(indapamide)"]),
    _q("doctor", 2024, 2, 33, "검사 전 확률이 낮은 환자에서 폐색전증(pulmonary embolism)을 배제하는 데 유용한 검사는?",
       "D-이합체(D-dimer)",
       ["트로포닌(troponin)", "프로칼시토닌(procalcitonin)", "뇌나트륨이뇨펩티드(BNP)",
        "적혈구침강속도(ESR)"]),
    _q("doctor", 2024, 2, 51, "원발성 갑상선기능저하증(primary hypothyroidism)의 검사 소견은?",
       "TSH 증가, 유리 T4 감소",
       ["TSH 감소, 유리 T4 증가", "TSH 감소, 유리 T4 감소", "TSH 정상, 유리 T4 증가", "TSH 증가, 유리 T4 증가"]),
    # nurse
    _q("nurse", 2022, 1, 8, "성인 환자의 기관 내 흡인(suctioning) 시 1회 흡인 시간으로 적절한 것은?",
       "10~15초 이내", ["20~30초", "30~45초", "약 1분", "약 2분"]),
    _q("nurse", 2022, 1, 31, "항암화학요법 후 호중구감소증 환자의 간호중재로 옳은 것은?",
       "생화나 화분을 병실에 두지 않는다.",
       ["직장으로 체온을 측정한다.", "생과일을 껍질째 먹도록 권한다.", "방문객 면회를 제한 없이 허용한다.",
        "근육주사를 자주 시행한다."]),
    _q("nurse", 2022, 1, 56, "유치도뇨관을 가진 환자의 소변주머니 관리로 옳은 것은?",
       "소변주머니를 방광보다 낮게 유지한다.",
       ["소변주머니를 방광보다 높게 유지한다.", "소변주머니를 침대 난간 위에 걸쳐 둔다.",
        "소변주머니를 환자의 배 위에 올려 둔다.", "소변주머니가 바닥에 닿도록 둔다."]),
    _q("nurse", 2023, 1, 14, "고혈압 환자의 식이 교육 내용으로 옳은 것은?",
       "나트륨 섭취를 줄인다.",
       ["칼륨 섭취를 제한한다.", "포화지방 섭취를 늘린다.", "음주량을 늘린다.", "카페인 음료를 자주 마신다."]),
    _q("nurse", 2023, 1, 42, "디곡신(digoxin) 투여 전 간호사가 반드시 확인해야 하는 것은?",
       "심첨맥박(apical pulse)을 1분간 측정한다.",
       ["혈당을 측정한다.", "체온을 측정한다.", "동공반사를 확인한다.", "장음을 청진한다."]),
    _q("nurse", 2023, 1, 60, "경구 철분제 복용에 관한 교육으로 옳은 것은?",
       "비타민 C가 풍부한 주스와 함께 복용하면 흡수가 증가한다.",
       ["우유와 함께 복용한다.", "제산제와 동시에 복용한다.", "대변이 검게 변하면 즉시 복용을 중단한다.",
        "진한 녹차와 함께 복용한다."]),
    _q("nurse", 2024, 1, 3, "요추천자 후 두통을 예방하기 위한 간호중재로 옳은 것은?",
       "검사 후 일정 시간 편평하게 누워 있도록 한다.",
       ["검사 직후 보행하도록 한다.", "수분 섭취를 제한한다.", "침상 머리를 90도로 올린다.",
        "머리를 낮추고 다리를 올린 자세를 유지한다."]),
    _q("nurse", 2024, 1, 21, "당뇨병 환자의 발 관리 교육으로 옳은 것은?",
       "매일 발을 관찰하고 발가락 사이를 잘 말린다.",
       ["뜨거운 물에 발을 오래 담근다.", "집 안에서는 맨발로 걷는다.", "티눈은 스스로 칼로 제거한다.",
        "발톱은 둥글고 깊게 깎는다."]),
    _q("nurse", 2024, 1, 47, "정량흡입기(metered-dose inhaler) 사용 교육으로 옳은 것은?",
       "흡입한 후 약 10초간 숨을 참는다.",
       ["흡입 직전에 숨을 크게 들이쉰다.", "스테로이드 흡입 후 입을 헹구지 않는다.", "사용 전에 흡입기를 흔들지 않는다.",
        "한 번 들이쉬는 동안 여러 번 연속으로 분사한다."]),
    _q("nurse", 2024, 1, 66, "골다공증 예방 교육 내용으로 옳은 것은?",
       "체중부하운동(weight-bearing exercise)을 규칙적으로 한다.",
       ["카페인 섭취를 늘린다.", "흡연은 골밀도와 관계없다고 설명한다.", "칼슘 섭취를 제한한다.",
        "장기간 침상안정을 취한다."]),
    # pharm
    _q("pharm", 2022, 1, 78, "비선택적 베타차단제 프로프라놀롤(propranolol)의 사용을 피해야 하는 환자는?",
       "기관지 천식(bronchial asthma) 환자",
       ["본태떨림(essential tremor) 환자", "편두통 예방(migraine prophylaxis)이 필요한 환자", "고혈압(hypertension) 환자",
        "갑상선중독증의 빈맥(tachycardia in thyrotoxicosis) 환자"]),
    _q("pharm", 2022, 1, 90, "클로피도그렐(clopidogrel)의 작용 기전은?",
       "혈소판 P2Y12 ADP 수용체 차단",
       ["시클로옥시게네이스-1 억제(COX-1 inhibition)", "당단백 IIb/IIIa 수용체 차단",
        "포스포다이에스터레이스 III 억제", "트롬빈 직접 억제"]),
    _q("pharm", 2022, 1, 113, "반코마이신(vancomycin)을 빠르게 정맥 주입했을 때 나타날 수 있는 반응은?",
       "적색인간증후군(red man syndrome)",
       ["회색아기증후군(gray baby syndrome)", "디설피람 유사 반응(disulfiram-like reaction)",
        "광과민 반응(photosensitivity)", "치아 착색(tooth discoloration)"]),
    _q("pharm", 2023, 1, 82, "리튬(lithium)의 혈중 농도를 높여 독성 위험을 증가시키는 병용 약물은?",
       "티아지드 이뇨제(thiazide diuretic)",
       ["카페인(caffeine)", "테오필린(theophylline)", "아세타졸아마이드(acetazolamide)",
        "탄산수소나트륨(sodium bicarbonate)"]),
    _q("pharm", 2023, 1, 97, "레보도파(levodopa)와 함께 투여하여 말초에서 도파민으로의 전환을 억제하는 약물은?",
       "카르비도파(carbidopa)",
       ["할로페리돌(haloperidol)", "메토클로프라미드(metoclopramide)", "피리독신(pyridoxine)",
        "리스페리돈(risperidone)"]),
    _q("pharm", 2023, 1, 105, "퀴놀론계 항생제와 동시에 복용하면 항생제 흡수를 크게 떨어뜨리는 것은?",
       "마그네슘·알루미늄 함유 제산제(Mg/Al antacid)",
       ["물(water)", "아세트아미노펜(acetaminophen)", "로라타딘(loratadine)", "덱스트로메토르판(dextromethorphan)"]),
    _q("pharm", 2024, 1, 71, "다음 중 초속효성 인슐린(rapid-acting insulin)은?",
       "인슐린 리스프로(insulin lispro)",
       ["NPH 인슐린(NPH insulin)", "인슐린 글라진(insulin glargine)", "인슐린 데글루덱(insulin degludec)",
        "정규 인슐린(regular insulin)"]),
    _q("pharm", 2024, 1, 84, "알렌드로네이트(alendronate) 복약지도로 옳은 것은?",
       "아침 공복에 물 한 컵과 복용하고 30분 이상 눕지 않는다.",
       ["우유와 함께 복용한다.", "취침 직전에 복용한다.", "식사 직후에 복용한다.", "복용 후 바로 눕는다."]),
    _q("pharm", 2024, 1, 99, "디곡신(digoxin) 독성의 위험을 높이는 전해질 이상은?",
       "저칼륨혈증(hypokalemia)",
       ["고칼륨혈증(hyperkalemia)", "저칼슘혈증(hypocalcemia)", "고나트륨혈증(hypernatremia)",
        "저인산혈증(hypophosphatemia)"]),
    _q("pharm", 2024, 1, 118, "메트로니다졸(metronidazole) 복용 중 피해야 하는 것은?",
       "음주(alcohol)", ["녹색 채소(green vegetables)", "바나나(banana)", "물(water)", "쌀밥(cooked rice)"]),
    # dentist
    _q("dentist", 2022, 1, 10, "치주낭 깊이를 측정하는 기구는?",
       "치주탐침(periodontal probe)",
       ["익스플로러(explorer)", "엘리베이터(elevator)", "치경(mouth mirror)", "핀셋(cotton pliers)"]),
    _q("dentist", 2022, 1, 26, "국소마취제 리도카인(lidocaine)에 에피네프린(epinephrine)을 첨가하는 주된 이유는?",
       "마취 지속시간을 늘리고 전신 흡수를 줄인다.",
       ["마취 발현을 늦춘다.", "알레르기 반응을 예방한다.", "혈중 농도를 빠르게 높인다.", "주사 통증을 늘린다."]),
    _q("dentist", 2022, 1, 44, "유치 중 일반적으로 가장 먼저 맹출하는 치아는?",
       "하악 유중절치(mandibular primary central incisor)",
       ["상악 유견치(maxillary primary canine)", "하악 제1유구치(mandibular primary first molar)",
        "상악 제2유구치(maxillary primary second molar)", "하악 유견치(mandibular primary canine)"]),
    _q("dentist", 2023, 1, 15, "치은염과 치주염을 구별하는 가장 중요한 소견은?",
       "부착 상실(attachment loss)과 치조골 흡수",
       ["치은 출혈 여부", "치은 발적 여부", "구취 여부", "치태 존재 여부"]),
    _q("dentist", 2023, 1, 38, "재발성 아프타궤양(recurrent aphthous ulcer)에 관한 설명으로 옳은 것은?",
       "각화되지 않은 가동성 점막에 잘 생긴다.",
       ["경구개와 부착치은에 주로 생긴다.", "단순포진바이러스가 원인이다.", "전염성이 강하다.",
        "작은 수포가 먼저 생긴 뒤 터진다."]),
    _q("dentist", 2023, 1, 59, "발치 후 건성발치와(dry socket)의 위험 요인은?",
       "흡연(smoking)",
       ["발치 후 거즈 물기", "발치 직후 냉찜질", "부드러운 음식 섭취", "충분한 휴식"]),
    _q("dentist", 2024, 1, 12, "치아 착색을 일으킬 수 있어 소아와 임산부에게 사용을 피하는 항생제는?",
       "테트라사이클린(tetracycline)",
       ["아목시실린(amoxicillin)", "클린다마이신(clindamycin)", "세팔렉신(cephalexin)", "아지트로마이신(azithromycin)"]),
    _q("dentist", 2024, 1, 30, "골격성 3급 부정교합(skeletal Class III malocclusion)의 특징은?",
       "하악이 상악보다 상대적으로 전방에 위치한다.",
       ["상악이 하악보다 상대적으로 전방에 위치한다.", "상하악의 전후방 관계는 정상이다.",
        "전치부가 수직적으로 맞물리지 않는다.", "상악 전치가 하악 전치를 깊게 덮는다."]),
    _q("dentist", 2024, 1, 49, "구강 칸디다증(oral candidiasis)의 치료에 사용하는 약물은?",
       "니스타틴(nystatin)",
       ["아목시실린(amoxicillin)", "아시클로버(acyclovir)", "메트로니다졸(metronidazole)", "이부프로펜(ibuprofen)"]),
    _q("dentist", 2024, 1, 63, "치면열구전색(pit and fissure sealant)의 주된 적용 부위는?",
       "구치부 교합면의 소와와 열구",
       ["전치 순면", "치근면", "치은연하 치면", "인접면 접촉점"]),
]

FEWSHOT: list[dict[str, Any]] = [
    # doctor
    _q("doctor", 2021, 2, 14, "대동맥판 협착증(aortic stenosis)에서 청진되는 심잡음의 특징은?",
       "우측 제2늑간 흉골연의 수축기 박출성 잡음(systolic ejection murmur)",
       ["심첨부의 이완기 중기 잡음(mid-diastolic rumble at apex)", "심첨부의 범수축기 잡음(holosystolic murmur at apex)",
        "좌측 흉골연의 이완기 초기 감소성 잡음(early diastolic decrescendo murmur)",
        "연속성 기계성 잡음(continuous machinery murmur)"],
       "대동맥판이 좁아지면 수축기에 좌심실에서 대동맥으로 혈액이 빠져나갈 때 난류가 생긴다. 이 잡음은 수축기 "
       "박출성 잡음으로 우측 제2늑간 흉골연에서 가장 잘 들리고 목동맥으로 전파된다. 심첨부 이완기 잡음은 승모판 "
       "협착증, 범수축기 잡음은 승모판 역류증, 이완기 초기 감소성 잡음은 대동맥판 역류증, 연속성 잡음은 동맥관 "
       "개존증의 특징이다. 따라서 정답은 {ans}이다."),
    _q("doctor", 2021, 1, 30, "당뇨병케토산증(diabetic ketoacidosis) 환자에게 인슐린을 투여하기 전에 반드시 확인해야 하는 것은?",
       "혈청 칼륨 농도(serum potassium)",
       ["혈청 아밀레이스(serum amylase)", "당화혈색소(HbA1c)", "C-펩티드(C-peptide)", "혈청 지질(serum lipid)"],
       "인슐린은 칼륨을 세포 안으로 이동시켜 혈청 칼륨을 떨어뜨린다. 당뇨병케토산증 환자는 몸 전체의 칼륨이 "
       "부족한 경우가 많아, 혈청 칼륨이 낮은 상태에서 인슐린을 주면 치명적인 저칼륨혈증과 부정맥이 생길 수 있다. "
       "그래서 칼륨이 3.3 mEq/L 미만이면 칼륨을 먼저 보충한다. 따라서 정답은 {ans}이다."),
    _q("doctor", 2020, 1, 47, "세균성 뇌수막염(bacterial meningitis)에서 전형적인 뇌척수액 소견은?",
       "호중구 증가, 포도당 감소, 단백질 증가",
       ["림프구 증가, 포도당 정상, 단백질 약간 증가", "림프구 증가, 포도당 감소, 단백질 증가",
        "세포 수 정상, 포도당 정상, 단백질 정상", "세포 수 정상, 단백질만 현저히 증가"],
       "세균이 뇌척수액의 포도당을 소비하고 호중구가 몰려들기 때문에 세균성 뇌수막염에서는 호중구 증가, 포도당 "
       "감소, 단백질 증가가 나타난다. 림프구 증가와 정상 포도당은 바이러스성, 림프구 증가와 포도당 감소는 결핵성이나 "
       "진균성, 단백질만 증가하는 세포-단백 해리는 길랭-바레 증후군의 소견이다. 따라서 정답은 {ans}이다."),
    _q("doctor", 2019, 2, 22, "성인에서 급성 췌장염(acute pancreatitis)의 가장 흔한 원인 중 하나는?",
       "담석(gallstone)",
       ["고칼슘혈증(hypercalcemia)", "유행성이하선염 바이러스(mumps virus)", "전갈 독(scorpion venom)",
        "췌장 분할증(pancreas divisum)"],
       "급성 췌장염의 가장 흔한 원인은 담석과 알코올이다. 고칼슘혈증, 유행성이하선염, 전갈 독, 췌장 분할증도 "
       "원인이 될 수 있지만 드물다. 따라서 정답은 {ans}이다."),
    _q("doctor", 2020, 2, 9, "심방세동(atrial fibrillation) 환자의 뇌졸중 위험을 평가하는 데 사용하는 점수는?",
       "CHA2DS2-VASc 점수",
       ["글래스고 혼수척도(Glasgow Coma Scale)", "아프가 점수(Apgar score)", "차일드-퓨 점수(Child-Pugh score)",
        "CURB-65 점수"],
       "CHA2DS2-VASc 점수는 심부전, 고혈압, 나이, 당뇨병, 뇌졸중 병력, 혈관 질환, 성별을 합산하여 심방세동 "
       "환자의 뇌졸중 위험과 항응고 치료 필요성을 판단한다. 글래스고 혼수척도는 의식 수준, 아프가 점수는 신생아 "
       "상태, 차일드-퓨 점수는 간경변 중증도, CURB-65는 폐렴 중증도를 평가한다. 따라서 정답은 {ans}이다."),
    # nurse
    _q("nurse", 2021, 1, 18, "왼쪽 편마비 환자에게 지팡이 사용법을 교육할 때 옳은 것은?",
       "오른손으로 지팡이를 잡는다.",
       ["왼손으로 지팡이를 잡는다.", "지팡이와 건강한 다리를 동시에 먼저 내딛는다.",
        "계단을 오를 때 마비된 다리를 먼저 올린다.", "지팡이 손잡이를 어깨 높이에 맞춘다."],
       "지팡이는 체중을 분산하여 약한 쪽을 지지하도록 건강한 쪽 손으로 잡는다. 왼쪽이 마비되었으므로 오른손으로 "
       "잡는다. 걸을 때는 지팡이, 마비된 다리, 건강한 다리 순으로 움직이고, 계단을 오를 때는 건강한 다리를 먼저 "
       "올린다. 손잡이 높이는 대퇴골 대전자 높이에 맞춘다. 따라서 정답은 {ans}이다."),
    _q("nurse", 2020, 1, 34, "둔부 배면(dorsogluteal) 부위에 근육주사할 때 손상 위험이 가장 큰 신경은?",
       "좌골신경(sciatic nerve)",
       ["대퇴신경(femoral nerve)", "요골신경(radial nerve)", "정중신경(median nerve)", "척골신경(ulnar nerve)"],
       "둔부 배면 부위 바로 아래로 좌골신경이 지나가므로 주사 부위를 잘못 잡으면 좌골신경이 손상될 수 있다. "
       "이런 이유로 성인 근육주사에는 둔부 복면(ventrogluteal) 부위가 더 안전하다고 권장된다. 요골신경은 상완, "
       "정중신경과 척골신경은 팔, 대퇴신경은 허벅지 앞쪽에 있다. 따라서 정답은 {ans}이다."),
    _q("nurse", 2019, 1, 57, "만성폐쇄성폐질환 환자에게 저유량 산소를 투여하는 주된 이유는?",
       "고농도 산소가 호흡 자극을 줄여 이산화탄소 정체를 악화시킬 수 있기 때문이다.",
       ["미숙아 망막병증을 예방하기 위해서이다.", "폐렴을 예방하기 위해서이다.", "산소 비용을 줄이기 위해서이다.",
        "비강 점막 건조를 막기 위해서이다."],
       "만성 고탄산혈증이 있는 만성폐쇄성폐질환 환자에게 고농도 산소를 주면 환기-관류 불균형이 악화되고 호흡 "
       "자극이 줄어 이산화탄소가 더 쌓일 수 있다. 그래서 목표 산소포화도 88~92% 정도로 저유량 산소를 준다. 미숙아 "
       "망막병증은 신생아에서 문제가 된다. 따라서 정답은 {ans}이다."),
    _q("nurse", 2021, 1, 41, "알코올 손소독제 대신 물과 비누로 손을 씻어야 하는 경우는?",
       "클로스트리디오이데스 디피실리(Clostridioides difficile) 감염 환자를 접촉한 후",
       ["눈에 보이는 오염이 없는 상태에서 환자를 접촉하기 전", "혈압을 측정한 후",
        "메티실린내성황색포도알균(MRSA) 보균 환자를 접촉한 후", "무균 물품을 준비하기 전"],
       "클로스트리디오이데스 디피실리는 아포를 만들고, 아포는 알코올에 잘 죽지 않는다. 그래서 이 환자를 접촉한 "
       "뒤에는 물과 비누로 손을 씻어 아포를 물리적으로 제거해야 한다. 눈에 보이는 오염이 없는 일반적인 상황과 "
       "MRSA 접촉 후에는 알코올 손소독제로 충분하다. 따라서 정답은 {ans}이다."),
    _q("nurse", 2020, 1, 62, "복부 수술 후 폐합병증을 예방하기 위한 간호중재로 옳은 것은?",
       "강화폐활량계(incentive spirometer) 사용을 격려한다.",
       ["기침을 억제한다.", "절대 침상안정을 유지한다.", "수분 섭취를 제한한다.", "통증이 있어도 진통제를 보류한다."],
       "수술 후에는 통증과 마취 때문에 얕은 호흡을 하여 무기폐와 폐렴이 생기기 쉽다. 강화폐활량계로 깊게 숨쉬기를 "
       "하고, 기침과 조기 이상을 격려하며, 통증을 적절히 조절해야 깊은 호흡이 가능하다. 수분 제한은 분비물을 "
       "끈끈하게 만든다. 따라서 정답은 {ans}이다."),
    # pharm
    _q("pharm", 2021, 1, 88, "플루옥세틴(fluoxetine)과 병용할 때 세로토닌증후군(serotonin syndrome) 위험이 가장 큰 약물은?",
       "페넬진(phenelzine)",
       ["아목시실린(amoxicillin)", "아세트아미노펜(acetaminophen)", "로라타딘(loratadine)", "판토프라졸(pantoprazole)"],
       "플루옥세틴은 선택적 세로토닌 재흡수 억제제이다. 페넬진은 모노아민 산화효소 억제제로 세로토닌 분해를 "
       "막는다. 두 약을 함께 쓰면 시냅스의 세로토닌이 과도하게 늘어 세로토닌증후군이 생길 수 있어 병용 금기이다. "
       "따라서 정답은 {ans}이다."),
    _q("pharm", 2020, 1, 74, "아스피린(aspirin)의 항혈소판 작용 기전은?",
       "시클로옥시게네이스-1의 비가역적 아세틸화로 트롬복산 A2 생성 억제",
       ["혈소판 P2Y12 수용체 차단", "당단백 IIb/IIIa 수용체 차단", "포스포다이에스터레이스 III 억제",
        "Xa 인자 직접 억제"],
       "아스피린은 혈소판의 시클로옥시게네이스-1을 비가역적으로 아세틸화하여 트롬복산 A2 합성을 막는다. 혈소판은 "
       "핵이 없어 효소를 새로 만들지 못하므로 효과가 혈소판 수명 동안 지속된다. P2Y12 차단은 클로피도그렐, "
       "포스포다이에스터레이스 III 억제는 실로스타졸, Xa 직접 억제는 리바록사반의 기전이다. 따라서 정답은 {ans}이다."),
    _q("pharm", 2019, 1, 95, "고령자에서 항콜린 부작용(혼돈, 요저류, 변비)이 커서 특히 주의해야 하는 항히스타민제는?",
       "디펜히드라민(diphenhydramine)",
       ["로라타딘(loratadine)", "펙소페나딘(fexofenadine)", "세티리진(cetirizine)", "데스로라타딘(desloratadine)"],
       "디펜히드라민은 1세대 항히스타민제로 혈액-뇌 장벽을 잘 통과하고 무스카린 수용체 차단 작용이 강하다. "
       "그래서 고령자에서 혼돈, 요저류, 변비, 낙상 위험을 높인다. 나머지는 2세대 항히스타민제로 항콜린 작용이 "
       "약하다. 따라서 정답은 {ans}이다."),
    _q("pharm", 2021, 1, 106, "테오필린(theophylline)의 혈중 농도를 높여 독성 위험을 증가시키는 것은?",
       "시프로플록사신(ciprofloxacin)",
       ["흡연(smoking)", "리팜핀(rifampin)", "페니토인(phenytoin)", "카르바마제핀(carbamazepine)"],
       "테오필린은 주로 CYP1A2로 대사되며 치료 범위가 좁다. 시프로플록사신은 CYP1A2를 억제하여 테오필린 농도를 "
       "높인다. 흡연, 리팜핀, 페니토인, 카르바마제핀은 대사 효소를 유도하여 오히려 농도를 낮춘다. "
       "따라서 정답은 {ans}이다."),
    _q("pharm", 2020, 1, 63, "약물을 정맥으로 투여했을 때의 생체이용률(bioavailability)은?",
       "100%", ["0%", "25%", "50%", "75%"],
       "생체이용률은 투여한 약물 중 변하지 않은 형태로 전신 순환에 도달하는 비율이다. 정맥 투여는 흡수 과정과 "
       "초회 통과 효과 없이 약물 전량이 곧바로 전신 순환에 들어가므로 정의상 100%이다. 따라서 정답은 {ans}이다."),
    # dentist
    _q("dentist", 2021, 1, 33, "발치 시 구강상악동 천공(oroantral perforation)의 위험이 가장 큰 치아는?",
       "상악 제1대구치(maxillary first molar)",
       ["하악 제1대구치(mandibular first molar)", "상악 중절치(maxillary central incisor)",
        "하악 견치(mandibular canine)", "하악 제2소구치(mandibular second premolar)"],
       "상악동 바닥은 상악 소구치와 대구치의 치근에 가깝고, 특히 상악 제1대구치의 치근은 상악동에 매우 가까워 "
       "발치 시 천공될 수 있다. 하악 치아와 상악 전치는 상악동과 거리가 멀다. 따라서 정답은 {ans}이다."),
    _q("dentist", 2020, 1, 21, "치은열구 안의 치태 제거에 가장 효과적인 칫솔질 방법은?",
       "바스법(Bass method)",
       ["회전법(roll method)", "폰즈법(Fones method)", "차터스법(Charters method)", "횡마법(horizontal scrub method)"],
       "바스법은 칫솔모를 치아 장축에 45도로 치은열구를 향하게 대고 짧게 진동시켜 열구 안의 치태를 제거한다. "
       "폰즈법은 원을 그리는 방법으로 어린이에게, 차터스법은 치간 공간이 넓은 경우에 쓰인다. "
       "따라서 정답은 {ans}이다."),
    _q("dentist", 2019, 1, 50, "상아질 지각과민증(dentin hypersensitivity)의 기전으로 가장 널리 받아들여지는 이론은?",
       "유체역학설(hydrodynamic theory)",
       ["화학세균설(chemoparasitic theory)", "단백용해설(proteolytic theory)", "치수괴사설(pulp necrosis theory)",
        "교합외상설(occlusal trauma theory)"],
       "노출된 상아질 세관 안의 액체가 온도, 삼투압, 공기 같은 자극에 의해 움직이면 치수의 신경 말단이 자극되어 "
       "짧고 날카로운 통증이 생긴다는 것이 유체역학설이다. 화학세균설과 단백용해설은 치아우식증의 기전에 관한 "
       "이론이다. 따라서 정답은 {ans}이다."),
    _q("dentist", 2021, 1, 58, "치과 국소마취에 가장 널리 사용되는 아마이드형(amide) 국소마취제는?",
       "리도카인(lidocaine)",
       ["프로카인(procaine)", "테트라카인(tetracaine)", "벤조카인(benzocaine)", "코카인(cocaine)"],
       "국소마취제는 에스터형과 아마이드형으로 나뉜다. 리도카인은 아마이드형으로 치과에서 가장 널리 쓰인다. "
       "프로카인, 테트라카인, 벤조카인, 코카인은 모두 에스터형이다. 따라서 정답은 {ans}이다."),
    _q("dentist", 2020, 1, 66, "치주질환의 진행 위험을 높이는 전신 질환으로 가장 잘 알려진 것은?",
       "당뇨병(diabetes mellitus)",
       ["근시(myopia)", "알레르기 비염(allergic rhinitis)", "골관절염(osteoarthritis)", "편두통(migraine)"],
       "조절되지 않는 당뇨병은 호중구 기능 저하, 최종당화산물 증가, 상처 치유 지연을 일으켜 치주염의 발생과 진행 "
       "위험을 높인다. 반대로 치주염이 혈당 조절을 어렵게 하는 양방향 관계도 알려져 있다. 따라서 정답은 {ans}이다."),
]
