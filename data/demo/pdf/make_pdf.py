"""Regenerate service_pledge.pdf (the demo's PDF source): python data/demo/pdf/make_pdf.py

Needs reportlab (a dev dependency). The Chinese text uses the CID font MSung-Light, which
reportlab carries without font files, so pypdf can extract it again.
"""

from pathlib import Path

from reportlab.lib.pagesizes import A4
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen import canvas

PAGES = [
    ("MSung-Light", [
        "示範部門服務承諾（二〇二六年）",
        "本部門致力以專業、有效率及有禮的態度為市民提供服務。",
        "一、一般查詢：我們會在收到查詢後三個工作天內回覆。",
        "二、申請處理：資料齊備的申請，會在十個工作天內完成審批。",
        "三、投訴處理：我們會在十天內作初步回覆，並在三十天內給予詳細答覆。",
        "四、櫃位服務：市民在辦事處輪候的時間，一般不會超過二十分鐘。",
        "如對本部門的服務有任何意見，歡迎透過網上表格向我們反映。",
    ]),
    ("Helvetica", [
        "Demo Department Performance Pledge 2026",
        "We are committed to serving the public in a professional, efficient and courteous manner.",
        "1. General enquiries: we reply within three working days of receiving an enquiry.",
        "2. Applications: complete applications are processed within ten working days.",
        "3. Complaints: we give an interim reply within ten days and a full reply within thirty days.",
        "4. Counter services: the waiting time at our offices normally does not exceed twenty minutes.",
        "We welcome your comments on our services through the online feedback form.",
    ]),
]


def main() -> None:
    pdfmetrics.registerFont(UnicodeCIDFont("MSung-Light"))
    out = Path(__file__).with_name("service_pledge.pdf")
    c = canvas.Canvas(str(out), pagesize=A4, invariant=True)  # invariant: byte-identical rebuilds
    for font, lines in PAGES:
        c.setFont(font, 12)
        for i, line in enumerate(lines):
            c.drawString(50, 800 - 22 * i, line)
        c.showPage()
    c.save()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
