"""Write the demo corpus: 24 fictional Japanese airport articles in SHINRA's layout.

The pages are written for this project (fictional airports, towns and facts) in the shape of
Japanese Wikipedia articles as SHINRA distributes them: MediaWiki's HTML structure with a title,
a lead, an infobox table, headings, lists, a route table, links and references. Gold annotations
(SHINRA's JSONL with exact html_offsets) cover seven attributes of the Airport ENE (1.6.5.3),
whose values sit in the infobox, the route table, the history list and the lead's running text
(so `make compare` has something to show), and an ENE definition file lists them (plus one with
extraction_task false).

    python demo/make_corpus.py demo/shinra     # what `demo/shinra/` in the repository holds
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ENE = "1.6.5.3"
PREFIXES = ["青葉", "白浜", "緑川", "朝霧", "桜台", "星野", "霞浦", "若松", "紅葉原",
            "鈴蘭", "鷹ノ巣", "花咲", "潮見", "月見野", "雪ヶ丘", "東雲", "柏木", "風早",
            "水無瀬", "藤ヶ谷", "千種", "琴平台", "浜名原", "明野"]  # fmt: skip
PREFECTURES = ["北海道", "宮城県", "新潟県", "長野県", "静岡県", "石川県", "岡山県", "高知県",
               "長崎県", "宮崎県", "秋田県", "福井県"]  # fmt: skip
OPERATORS = ["国土交通省", "{town}市", "{pref}", "{name}ビル株式会社"]
CITIES = ["東京", "大阪", "札幌", "福岡", "那覇", "名古屋", "仙台", "広島"]
LEADS = [
    '<b>{name}</b>（{kana}）は、{pref}<a href="/wiki/{town}市">{town}市</a>にある空港である。',
    "<b>{name}</b>は、{pref}{town}市の郊外に位置する地方空港である。",
    '<b>{name}</b>（{kana}）は、<a href="/wiki/{pref}">{pref}</a>{town}市に所在する空港。',
]
HISTORY = [
    "{year}に滑走路1本で開港した。その後、ターミナルビルが増築された。",
    "旧陸軍の飛行場を前身とし、{year}に民間空港として開港した。",
    "地元の誘致運動を経て{year}に開港し、{decade}年代にジェット化された。",
]


def article(i: int, rng: random.Random) -> tuple[list[str], list[tuple]]:
    """The HTML lines of one article and its annotations (attribute, line, value, marker)."""
    prefix = PREFIXES[i]
    name = f"{prefix}{'国際' if i % 4 == 0 else ''}空港"
    town, pref = prefix, PREFECTURES[i % len(PREFECTURES)]
    year = f"{rng.randint(1952, 2012)}年"
    iata = "".join(rng.choice("ABCDEFGHIKLMNOPRSTUVWYZ") for _ in range(3))
    operator = OPERATORS[i % len(OPERATORS)].format(town=town, pref=pref, name=name)
    length = f"{rng.choice([1500, 2000, 2500, 3000])}m"
    routes = rng.sample(CITIES, 3)
    kana = "くうこう"
    lines = [
        "<!DOCTYPE html>",
        '<html class="client-nojs" lang="ja" dir="ltr">',
        "<head>",
        '<meta charset="UTF-8"/>',
        f"<title>{name} - Wikipedia</title>",
        '<link rel="stylesheet" href="/load.php?modules=skins.vector.styles"/>',
        "</head>",
        '<body class="mediawiki ltr sitedir-ltr">',
        '<div id="content" class="mw-body" role="main">',
        f'<h1 id="firstHeading" class="firstHeading" lang="ja">{name}</h1>',
        '<div id="bodyContent" class="mw-body-content">',
        '<div id="siteSub">出典: フリー百科事典『ウィキペディア（Wikipedia）』</div>',
        '<div id="mw-content-text" lang="ja" dir="ltr" class="mw-content-ltr">',
        '<table class="infobox" style="width:22em">',
        f'<tr><th colspan="2" style="background:#6495ed">{name}</th></tr>',
        f"<tr><th>IATA</th><td>{iata}</td></tr>",
        f'<tr><th>所在地</th><td><a href="/wiki/{pref}">{pref}</a>{town}市</td></tr>',
        f"<tr><th>開港</th><td>{year}</td></tr>",
        f"<tr><th>運営者</th><td>{operator}</td></tr>",
        f"<tr><th>滑走路</th><td>{length}</td></tr>",
        "</table>",
        "<p>"
        + LEADS[i % len(LEADS)].format(name=name, kana=kana, pref=pref, town=town)
        + '<sup id="cite_ref-1" class="reference"><a href="#cite_note-1">[1]</a></sup></p>',
        '<div id="toc" class="toc"><div class="toctitle"><h2>目次</h2></div><ul>'
        '<li class="toclevel-1"><a href="#歴史">1 歴史</a></li>'
        '<li class="toclevel-1"><a href="#就航路線">2 就航路線</a></li></ul></div>',
        '<h2><span class="mw-headline" id="歴史">歴史</span></h2>',
        "<p>" + HISTORY[i % len(HISTORY)].format(year=year, decade=year[:3] + "0") + "</p>",
        "<ul>",
        f"<li>{year} - 開港。</li>",
        f"<li>滑走路を{length}に延長。</li>",
        "</ul>",
        '<h2><span class="mw-headline" id="就航路線">就航路線</span></h2>',
        '<table class="wikitable">',
        "<tr><th>航空会社</th><th>就航地</th></tr>",
        *(
            f'<tr><td>{a}航空</td><td><a href="/wiki/{c}">{c}</a></td></tr>'
            for a, c in zip(["日本", "青空", "南風"], routes)
        ),  # fmt: skip
        "</table>",
        '<h2><span class="mw-headline" id="脚注">脚注</span></h2>',
        '<ol class="references"><li id="cite_note-1"><span class="reference-text">'
        f"「{name}の概要」{pref}交通政策課、{year}。</span></li></ol>",
        "</div></div></div>",
        "</body>",
        "</html>",
    ]

    def at(text: str) -> int:
        return next(n for n, line in enumerate(lines) if text in line)

    # (attribute, line, value, what the value comes after on its line)
    annotations = [
        ("IATA（空港コード）", 15, iata, "<td>"),
        ("所在地", 16, f'<a href="/wiki/{pref}">{pref}</a>{town}市', "<td>"),
        ("開港年", 17, year, "<td>"),
        ("運営者", 18, operator, "<td>"),
        ("沿革", at(f"<li>滑走路を{length}"), f"滑走路を{length}に延長。", "<li>"),  # a list
        *(("就航路線", at(f'">{c}</a></td></tr>'), c, '">') for c in routes),  # a table
    ]
    if "（" in lines[21]:  # the lead gives the reading: running text
        annotations.append(("ふりがな", 21, kana, "（"))
    return lines, annotations


def write_corpus(root: Path, pages: int = 24) -> None:
    rng = random.Random(7)
    html_dir = root / "html" / ENE
    html_dir.mkdir(parents=True, exist_ok=True)
    (root / "annotation").mkdir(exist_ok=True)
    records = []
    for i in range(pages):
        page_id = str(100001 + i)
        lines, annotations = article(i, rng)
        (html_dir / f"{page_id}.html").write_text("\n".join(lines) + "\n", encoding="utf-8")
        title = lines[9].split(">")[1].split("<")[0]
        for attribute, line, value, after in annotations:
            start = lines[line].index(value, lines[line].index(after))
            end = {"line_id": line, "offset": start + len(value)}
            offset = {"start": {"line_id": line, "offset": start}, "end": end, "text": value}
            records.append({"page_id": page_id, "title": title, "ENE": ENE,
                            "attribute": attribute, "html_offset": offset})  # fmt: skip
    with open(root / "annotation" / f"{ENE}_dist.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    attributes = [
        "IATA（空港コード）",
        "所在地",
        "開港年",
        "運営者",
        "沿革",
        "就航路線",
        "ふりがな",
    ]
    definition = {"ENE_id": ENE, "title": "空港", "attributes": [
        *({"name": a, "extraction_task": True} for a in attributes),
        {"name": "画像", "extraction_task": False}]}  # fmt: skip
    (root / "ENE_definition.jsonl").write_text(
        json.dumps(definition, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (root / "target.csv").write_text(",".join(str(100001 + i) for i in range(pages)) + "\n")


if __name__ == "__main__":
    write_corpus(Path(sys.argv[1] if len(sys.argv) > 1 else "demo/shinra"))
