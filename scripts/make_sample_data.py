"""Generate small, realistic sample documents for the pipeline and an evaluation set for them.

Writes into ``data/inbox/``:

* ``acme_annual_report_2025.pdf``  - 4-page financial report (title, revenue table, bar chart, outlook).
* ``pump_maintenance_manual.pdf``  - 3-page technical manual (specs, numbered steps + warning, diagram).
* ``scanned_invoice.jpg``          - 1-page "scanned" invoice image (rotated, noisy, off-white paper).
* ``quarterly_memo.docx``          - 2-page board memo (headings, bullets, table).

and ``data/eval/queries.jsonl`` with one query per line, each answered by one specific page.

Output is deterministic: fixed seeds, ReportLab ``invariant=1`` and fixed DOCX metadata/zip timestamps,
so re-running produces byte-identical files.

Usage::

    .venv/bin/python scripts/make_sample_data.py [--inbox DIR] [--eval-file FILE]
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import zipfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import reportlab
from docx import Document
from docx.shared import Pt
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from reportlab import rl_config
from reportlab.graphics.charts.barcharts import VerticalBarChart
from reportlab.graphics.charts.legends import Legend
from reportlab.graphics.shapes import Circle, Drawing, Line, Polygon, Rect, String
from reportlab.lib import colors
from reportlab.lib.pagesizes import LETTER
from reportlab.lib.styles import ParagraphStyle, StyleSheet1, getSampleStyleSheet
from reportlab.lib.units import inch
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    Flowable,
    ListFlowable,
    ListItem,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

ROOT = Path(__file__).resolve().parents[1]
FIXED_DATETIME = datetime(2025, 7, 1, 9, 0, 0, tzinfo=UTC)
ZIP_DATE_TIME = (2025, 7, 1, 9, 0, 0)
SEED = 20251001

REPORT_PDF = "acme_annual_report_2025.pdf"
MANUAL_PDF = "pump_maintenance_manual.pdf"
INVOICE_IMG = "scanned_invoice.jpg"
MEMO_DOCX = "quarterly_memo.docx"

QUARTERS = ("Q1", "Q2", "Q3", "Q4")
REVENUE_2024 = (38.2, 41.5, 44.0, 49.3)  # USD millions
REVENUE_2025 = (46.8, 51.2, 55.9, 63.4)
GROSS_MARGIN_2025 = (0.412, 0.418, 0.425, 0.431)
OPERATING_MARGIN_2025 = (0.112, 0.126, 0.139, 0.151)

NAVY = colors.HexColor("#1F3A5F")
TEAL = colors.HexColor("#2A9D8F")
LIGHT = colors.HexColor("#EEF2F7")
RED = colors.HexColor("#C0392B")

QUERIES: tuple[tuple[str, str, int], ...] = (
    ("Acme Robotics company overview: employees, customers and 2025 highlights", REPORT_PDF, 1),
    ("table of Acme Robotics revenue by quarter with operating margin for each quarter", REPORT_PDF, 2),
    ("bar chart comparing quarterly revenue in 2024 and 2025", REPORT_PDF, 3),
    ("2026 outlook, revenue guidance and key business risks such as supply chain", REPORT_PDF, 4),
    ("hydraulic pump technical specifications: maximum pressure, flow rate and motor power", MANUAL_PDF, 1),
    ("step-by-step procedure to replace the filter cartridge of the hydraulic pump", MANUAL_PDF, 2),
    ("wiring and parts diagram showing motor, contactor, pressure switch and reservoir", MANUAL_PDF, 3),
    ("invoice from Northwind Industrial Supply: total amount due and payment terms", INVOICE_IMG, 1),
    ("board memo on the Q3 hiring plan: summary and hiring priorities", MEMO_DOCX, 1),
    ("table of planned Q3 new hires and cost by department", MEMO_DOCX, 2),
)


# --------------------------------------------------------------------------- PDF helpers


def pdf_styles() -> StyleSheet1:
    styles = getSampleStyleSheet()
    styles.add(ParagraphStyle("Cover", parent=styles["Title"], fontSize=34, leading=40, textColor=NAVY, alignment=0))
    styles.add(ParagraphStyle("CoverSub", parent=styles["Heading2"], fontSize=18, textColor=TEAL))
    styles.add(ParagraphStyle("Body", parent=styles["BodyText"], fontSize=10.5, leading=15, spaceAfter=6))
    styles.add(ParagraphStyle("Caption", parent=styles["Italic"], fontSize=9, textColor=colors.grey))
    styles["Heading1"].textColor = NAVY
    styles["Heading2"].textColor = NAVY
    return styles


def footer(text: str) -> Callable[[Canvas, SimpleDocTemplate], None]:
    def draw(canvas: Canvas, doc: SimpleDocTemplate) -> None:
        canvas.saveState()
        canvas.setStrokeColor(colors.lightgrey)
        canvas.line(doc.leftMargin, 0.6 * inch, LETTER[0] - doc.rightMargin, 0.6 * inch)
        canvas.setFont("Helvetica", 8)
        canvas.setFillColor(colors.grey)
        canvas.drawString(doc.leftMargin, 0.45 * inch, text)
        canvas.drawRightString(LETTER[0] - doc.rightMargin, 0.45 * inch, f"Page {doc.page}")
        canvas.restoreState()

    return draw


def build_pdf(path: Path, story: list[Flowable], title: str, author: str, footer_text: str) -> None:
    doc = SimpleDocTemplate(
        str(path),
        pagesize=LETTER,
        invariant=1,
        title=title,
        author=author,
        subject=title,
        creator="scripts/make_sample_data.py",
        leftMargin=0.9 * inch,
        rightMargin=0.9 * inch,
        topMargin=0.9 * inch,
        bottomMargin=0.9 * inch,
    )
    on_page = footer(footer_text)
    doc.build(story, onFirstPage=on_page, onLaterPages=on_page)


def bullets(items: Sequence[str], style: ParagraphStyle, numbered: bool = False) -> ListFlowable:
    flowables = [ListItem(Paragraph(item, style), leftIndent=22) for item in items]
    font = {"bulletFontName": style.fontName, "bulletFontSize": style.fontSize, "leftIndent": 22}
    if numbered:
        return ListFlowable(flowables, bulletType="1", bulletFormat="%s.", **font)
    return ListFlowable(flowables, bulletType="bullet", start="\u2022", **font)


def grid_table(rows: list[list[str]], col_widths: list[float], header_color: colors.Color = NAVY) -> Table:
    table = Table(rows, colWidths=col_widths, hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                ("BACKGROUND", (0, 0), (-1, 0), header_color),
                ("TEXTCOLOR", (0, 0), (-1, 0), colors.white),
                ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
                ("FONTSIZE", (0, 0), (-1, -1), 9.5),
                ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, LIGHT]),
                ("GRID", (0, 0), (-1, -1), 0.5, colors.HexColor("#9AA7B8")),
                ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                ("TOPPADDING", (0, 0), (-1, -1), 5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 5),
            ]
        )
    )
    return table


# --------------------------------------------------------------------------- annual report


def acme_logo() -> Drawing:
    logo = Drawing(80, 80)
    logo.add(Circle(40, 40, 36, fillColor=NAVY, strokeColor=None))
    logo.add(Circle(40, 40, 24, fillColor=TEAL, strokeColor=None))
    logo.add(String(40, 31, "A", fontName="Helvetica-Bold", fontSize=28, fillColor=colors.white, textAnchor="middle"))
    return logo


def highlights_strip() -> Table:
    big = ParagraphStyle("Kpi", fontName="Helvetica-Bold", fontSize=22, leading=26, textColor=colors.white)
    small = ParagraphStyle("KpiLabel", fontName="Helvetica", fontSize=9, leading=12, textColor=colors.white)
    kpis = [("$217.3M", "Revenue 2025"), ("+25.6%", "Revenue growth"), ("4,870", "Robots shipped")]
    strip = Table(
        [[[Paragraph(value, big), Paragraph(label, small)] for value, label in kpis]],
        colWidths=[2.2 * inch] * 3,
    )
    strip.setStyle(
        TableStyle(
            [
                ("BACKGROUND", (0, 0), (-1, -1), NAVY),
                ("BACKGROUND", (1, 0), (1, 0), TEAL),
                ("LEFTPADDING", (0, 0), (-1, -1), 12),
                ("TOPPADDING", (0, 0), (-1, -1), 10),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 10),
            ]
        )
    )
    return strip


def report_cover(styles: StyleSheet1) -> list[Flowable]:
    contents = [
        "Company overview and 2025 highlights",
        "Financial results: revenue by quarter",
        "Revenue chart: 2025 versus 2024",
        "Outlook for 2026 and principal risks",
    ]
    return [
        acme_logo(),
        Spacer(1, 0.4 * inch),
        Paragraph("Acme Robotics Inc.", styles["Cover"]),
        Paragraph("Annual Report 2025", styles["CoverSub"]),
        Paragraph("Fiscal year ended December 31, 2025", styles["Body"]),
        Spacer(1, 0.3 * inch),
        Paragraph(
            "Acme Robotics designs and builds autonomous mobile robots for warehouses and factories. "
            "Headquartered in Pittsburgh, Pennsylvania, the company employs 1,140 people and serves "
            "more than 320 customers in North America and Europe. In 2025 we shipped 4,870 robots, "
            "grew revenue 25.6% to $217.3 million and expanded operating margin for the fourth "
            "consecutive year.",
            styles["Body"],
        ),
        Spacer(1, 0.2 * inch),
        highlights_strip(),
        Spacer(1, 0.3 * inch),
        Paragraph("Contents", styles["Heading2"]),
        bullets(contents, styles["Body"], numbered=True),
    ]


def revenue_rows() -> list[list[str]]:
    header = [
        "Quarter",
        "Revenue\n2025",
        "Revenue\n2024",
        "YoY\ngrowth",
        "Gross\nprofit",
        "Operating\nincome",
    ]
    rows = [[*header, "Operating\nmargin"]]
    for i, quarter in enumerate(QUARTERS):
        rev, prev = REVENUE_2025[i], REVENUE_2024[i]
        rows.append(
            [
                quarter,
                f"${rev:.1f}M",
                f"${prev:.1f}M",
                f"{(rev / prev - 1) * 100:.1f}%",
                f"${rev * GROSS_MARGIN_2025[i]:.1f}M",
                f"${rev * OPERATING_MARGIN_2025[i]:.1f}M",
                f"{OPERATING_MARGIN_2025[i] * 100:.1f}%",
            ]
        )
    total, prev_total = sum(REVENUE_2025), sum(REVENUE_2024)
    op_income = sum(r * m for r, m in zip(REVENUE_2025, OPERATING_MARGIN_2025, strict=True))
    gross = sum(r * m for r, m in zip(REVENUE_2025, GROSS_MARGIN_2025, strict=True))
    rows.append(
        [
            "Full year",
            f"${total:.1f}M",
            f"${prev_total:.1f}M",
            f"{(total / prev_total - 1) * 100:.1f}%",
            f"${gross:.1f}M",
            f"${op_income:.1f}M",
            f"{op_income / total * 100:.1f}%",
        ]
    )
    return rows


def report_financials(styles: StyleSheet1) -> list[Flowable]:
    table = grid_table(revenue_rows(), [0.8 * inch] + [0.95 * inch] * 6)
    table.setStyle(
        TableStyle([("FONTNAME", (0, -1), (-1, -1), "Helvetica-Bold"), ("ALIGN", (1, 0), (-1, -1), "RIGHT")])
    )
    return [
        Paragraph("Financial results: revenue by quarter", styles["Heading1"]),
        Paragraph(
            "Revenue grew in every quarter of 2025, driven by the AMR-7 picking robot and recurring "
            "fleet software subscriptions. The table below shows revenue by quarter together with "
            "gross profit, operating income and operating margin. All figures are unaudited and in "
            "millions of US dollars.",
            styles["Body"],
        ),
        Spacer(1, 0.15 * inch),
        table,
        Paragraph("Table 1. Acme Robotics revenue by quarter, fiscal years 2025 and 2024.", styles["Caption"]),
        Spacer(1, 0.25 * inch),
        Paragraph("Margin commentary", styles["Heading2"]),
        Paragraph(
            "Operating margin improved from 11.2% in the first quarter to 15.1% in the fourth quarter "
            "as manufacturing moved to the new Columbus plant and software grew to 22% of revenue. "
            "Research and development spending rose to $31.4 million (14.4% of revenue).",
            styles["Body"],
        ),
    ]


def revenue_chart() -> Drawing:
    drawing = Drawing(6.5 * inch, 3.6 * inch)
    chart = VerticalBarChart()
    chart.x, chart.y, chart.width, chart.height = 50, 40, 5.6 * inch, 2.7 * inch
    chart.data = [REVENUE_2024, REVENUE_2025]
    chart.categoryAxis.categoryNames = list(QUARTERS)
    chart.valueAxis.valueMin, chart.valueAxis.valueMax, chart.valueAxis.valueStep = 0, 70, 10
    chart.valueAxis.labelTextFormat = "$%dM"
    chart.valueAxis.visibleGrid = True
    chart.valueAxis.gridStrokeColor = colors.HexColor("#DDDDDD")
    chart.bars[0].fillColor, chart.bars[1].fillColor = colors.HexColor("#A8B8CC"), NAVY
    chart.barLabelFormat = "%.1f"
    chart.barLabels.nudge = 7
    chart.barLabels.fontSize = 7.5
    chart.barLabels.boxAnchor = "s"
    chart.groupSpacing, chart.barSpacing = 14, 2
    drawing.add(chart)
    drawing.add(revenue_legend())
    return drawing


def revenue_legend() -> Legend:
    legend = Legend()
    legend.x, legend.y = 70, 3.45 * inch
    legend.alignment = "right"
    legend.columnMaximum = 1
    legend.deltax = 70
    legend.colorNamePairs = [(colors.HexColor("#A8B8CC"), "2024"), (NAVY, "2025")]
    legend.fontSize = 9
    return legend


def report_chart(styles: StyleSheet1) -> list[Flowable]:
    return [
        Paragraph("Revenue chart: 2025 versus 2024", styles["Heading1"]),
        Paragraph(
            "The bar chart compares quarterly revenue in 2025 with the prior year. Fourth-quarter "
            "revenue of $63.4 million was a record, up 28.6% on the fourth quarter of 2024.",
            styles["Body"],
        ),
        Spacer(1, 0.2 * inch),
        revenue_chart(),
        Paragraph("Figure 1. Quarterly revenue in millions of US dollars, 2024 and 2025.", styles["Caption"]),
        Spacer(1, 0.25 * inch),
        Paragraph("Revenue mix by segment", styles["Heading2"]),
        bullets(
            [
                "Robot hardware: $142.6 million (66%), 4,870 units shipped.",
                "Fleet software subscriptions: $47.8 million (22%), 91% net revenue retention.",
                "Service and spare parts: $26.9 million (12%).",
            ],
            styles["Body"],
        ),
    ]


def report_outlook(styles: StyleSheet1) -> list[Flowable]:
    risks = [
        (
            "<b>Component supply.</b> Servo motors and embedded GPUs come from a small number of "
            "suppliers; a shortage could delay deliveries."
        ),
        "<b>Customer concentration.</b> Our three largest customers represented 38% of 2025 revenue.",
        (
            "<b>Tariffs and trade policy.</b> New tariffs on imported electronic components could "
            "raise unit costs by up to 4%."
        ),
        "<b>Cybersecurity.</b> Robots connected to customer networks are an attractive target for attacks.",
        "<b>Currency.</b> About 27% of revenue is invoiced in euros and pounds sterling.",
    ]
    return [
        Paragraph("Outlook for 2026 and principal risks", styles["Heading1"]),
        Paragraph("Outlook", styles["Heading2"]),
        Paragraph(
            "For fiscal year 2026 we expect revenue of $255 million to $265 million and an operating "
            "margin of 15% to 16%. Growth will come from the launch of the Forklift-X autonomous "
            "forklift in the second quarter, expansion into Germany and the Netherlands, and higher "
            "software attach rates. Capital expenditure is planned at $18 million.",
            styles["Body"],
        ),
        Paragraph("Principal risks", styles["Heading2"]),
        bullets(risks, styles["Body"]),
        Spacer(1, 0.2 * inch),
        Paragraph(
            "<i>Forward-looking statements: this outlook reflects management's current expectations and "
            "is subject to the risks above. Actual results may differ materially.</i>",
            styles["Caption"],
        ),
    ]


def make_annual_report(path: Path) -> None:
    styles = pdf_styles()
    story = (
        report_cover(styles)
        + [PageBreak()]
        + report_financials(styles)
        + [PageBreak()]
        + report_chart(styles)
        + [PageBreak()]
        + report_outlook(styles)
    )
    title = "Acme Robotics Annual Report 2025"
    build_pdf(path, story, title, "Acme Robotics Inc.", "Acme Robotics Inc. \u2014 Annual Report 2025")


# --------------------------------------------------------------------------- maintenance manual


def warning_box(text: str, styles: StyleSheet1) -> Table:
    label = ParagraphStyle("WarnLabel", parent=styles["Body"], fontName="Helvetica-Bold", fontSize=13)
    box = Table(
        [[Paragraph("WARNING", label)], [Paragraph(text, styles["Body"])]],
        colWidths=[6.5 * inch],
    )
    box.setStyle(
        TableStyle(
            [
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#F4C430")),
                ("BACKGROUND", (0, 1), (-1, 1), colors.HexColor("#FFF8DC")),
                ("BOX", (0, 0), (-1, -1), 2, colors.black),
                ("LEFTPADDING", (0, 0), (-1, -1), 10),
                ("TOPPADDING", (0, 0), (-1, -1), 6),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 6),
            ]
        )
    )
    return box


def manual_overview(styles: StyleSheet1) -> list[Flowable]:
    specs = [
        ["Parameter", "Value"],
        ["Maximum operating pressure", "210 bar (3,045 psi)"],
        ["Rated flow rate", "40 L/min at 1,450 rpm"],
        ["Electric motor", "7.5 kW, 400 V, 3-phase, 50 Hz"],
        ["Reservoir capacity", "60 L"],
        ["Hydraulic oil", "ISO VG 46 mineral oil"],
        ["Return filter", "10 \u00b5m cartridge, part no. FC-10-400"],
        ["Weight (dry)", "118 kg"],
    ]
    schedule = [
        ["Interval", "Task"],
        ["Daily", "Check oil level and look for leaks at fittings and hoses"],
        ["Every 500 hours", "Replace the filter cartridge (section 4)"],
        ["Every 2,000 hours", "Drain and change the hydraulic oil; clean the suction strainer"],
        ["Annually", "Inspect hoses, check relief valve setting, test pressure switch"],
    ]
    return [
        Paragraph("HP-400 Hydraulic Pump Unit", styles["Cover"]),
        Paragraph("Maintenance Manual MM-HP400, Revision C", styles["CoverSub"]),
        Paragraph("1. Introduction", styles["Heading2"]),
        Paragraph(
            "This manual describes routine maintenance of the Hydra-Flow HP-400 hydraulic pump unit. "
            "Only trained personnel should service the unit. Read the whole procedure before starting.",
            styles["Body"],
        ),
        Paragraph("2. Technical specifications", styles["Heading2"]),
        grid_table(specs, [2.6 * inch, 3.4 * inch]),
        Paragraph("3. Maintenance schedule", styles["Heading2"]),
        grid_table(schedule, [1.5 * inch, 4.9 * inch], header_color=TEAL),
    ]


def manual_procedure(styles: StyleSheet1) -> list[Flowable]:
    steps = [
        "Stop the pump and switch the main isolator Q1 to OFF. Lock and tag the isolator.",
        "Open the pressure relief valve and wait until the gauge reads 0 bar.",
        "Let the oil cool below 40 \u00b0C. Place a drip tray under the filter housing.",
        "Unscrew the filter bowl anticlockwise using a 32 mm spanner.",
        "Remove the used filter cartridge and dispose of it as hazardous waste.",
        "Check the bowl O-ring; replace it if it is cracked or flattened (part no. OR-52).",
        "Lightly oil the new O-ring and fit a new FC-10-400 filter cartridge.",
        "Refit the filter bowl and tighten it to 45 N\u00b7m.",
        "Close the relief valve, remove the lock, start the pump and check for leaks.",
        "Record the date and operating hours in the maintenance log.",
    ]
    return [
        Paragraph("4. Replacing the filter cartridge", styles["Heading1"]),
        Paragraph(
            "Replace the filter cartridge every 500 operating hours, or earlier if the clogging "
            "indicator on the filter head shows red. Tools required: 32 mm spanner, drip tray, gloves.",
            styles["Body"],
        ),
        Spacer(1, 0.1 * inch),
        warning_box(
            "Stop the pump, lock out the electrical supply and relieve system pressure before opening "
            "the filter housing. Hot oil under pressure can cause serious injury or burns.",
            styles,
        ),
        Spacer(1, 0.2 * inch),
        Paragraph("Procedure", styles["Heading2"]),
        bullets(steps, styles["Body"], numbered=True),
    ]


def diagram_box(d: Drawing, x: float, y: float, w: float, h: float, label: str, tag: str) -> None:
    d.add(Rect(x, y, w, h, fillColor=LIGHT, strokeColor=NAVY, strokeWidth=1.5))
    d.add(String(x + w / 2, y + h / 2 + 2, label, fontName="Helvetica-Bold", fontSize=9, textAnchor="middle"))
    d.add(String(x + w / 2, y + h / 2 - 10, tag, fontName="Helvetica", fontSize=8, textAnchor="middle"))


def diagram_line(d: Drawing, points: Sequence[tuple[float, float]], kind: str) -> None:
    color, width, dash = {
        "hydraulic": (NAVY, 2.5, None),
        "electrical": (RED, 1.2, [4, 3]),
        "shaft": (colors.grey, 5, None),
    }[kind]
    for (x1, y1), (x2, y2) in itertools.pairwise(points):
        d.add(Line(x1, y1, x2, y2, strokeColor=color, strokeWidth=width, strokeDashArray=dash))


def arrow_up(d: Drawing, x: float, y: float) -> None:
    d.add(Polygon([x, y, x - 4, y - 8, x + 4, y - 8], fillColor=NAVY, strokeColor=NAVY))


def callout(d: Drawing, x: float, y: float, number: int) -> None:
    d.add(Circle(x, y, 8, fillColor=colors.white, strokeColor=colors.black, strokeWidth=1))
    d.add(String(x, y - 3, str(number), fontName="Helvetica-Bold", fontSize=8, textAnchor="middle"))


DIAGRAM_BOXES = (
    (15, 220, 90, 40, "MAINS", "L1 L2 L3 400 V", 0),
    (130, 220, 90, 40, "CONTACTOR", "K1", 6),
    (250, 220, 90, 40, "MOTOR", "M1 7.5 kW", 1),
    (250, 120, 90, 40, "PUMP", "P1 HP-400", 2),
    (250, 20, 90, 40, "RESERVOIR", "T1 60 L", 5),
    (365, 120, 70, 40, "FILTER", "F1 FC-10-400", 3),
    (365, 220, 70, 40, "PRESS. SW", "S1 180 bar", 4),
    (375, 70, 80, 30, "ACTUATORS", "", 0),
)


def pump_diagram() -> Drawing:
    d = Drawing(6.5 * inch, 3.9 * inch)
    d.add(Rect(0, 0, 6.5 * inch, 3.9 * inch, fillColor=None, strokeColor=colors.grey, strokeWidth=0.5))
    for x, y, w, h, label, tag, number in DIAGRAM_BOXES:
        diagram_box(d, x, y, w, h, label, tag)
        if number:
            callout(d, x + w - 2, y + h + 2, number)
    diagram_line(d, [(105, 240), (130, 240)], "electrical")
    diagram_line(d, [(220, 240), (250, 240)], "electrical")
    diagram_line(d, [(400, 260), (400, 275), (175, 275), (175, 260)], "electrical")
    diagram_line(d, [(295, 220), (295, 160)], "shaft")
    diagram_line(d, [(295, 60), (295, 120)], "hydraulic")  # suction
    diagram_line(d, [(340, 140), (365, 140)], "hydraulic")  # pressure line
    diagram_line(d, [(400, 160), (400, 220)], "hydraulic")  # pressure sense line
    diagram_line(d, [(435, 140), (445, 140), (445, 100)], "hydraulic")  # to actuators
    diagram_line(d, [(415, 70), (415, 40), (340, 40)], "hydraulic")  # return to tank
    arrow_up(d, 295, 120)
    diagram_legend(d)
    return d


def diagram_legend(d: Drawing) -> None:
    samples = [("hydraulic", "Hydraulic line"), ("electrical", "Electrical wiring"), ("shaft", "Drive shaft")]
    for i, (kind, label) in enumerate(samples):
        y = 180 - 18 * i
        diagram_line(d, [(20, y), (60, y)], kind)
        d.add(String(68, y - 3, label, fontName="Helvetica", fontSize=8))
    d.add(String(20, 110, "Relief valve V1 (7) set to 210 bar,", fontName="Helvetica", fontSize=8))
    d.add(String(20, 99, "mounted on the pump outlet block.", fontName="Helvetica", fontSize=8))


def manual_diagram(styles: StyleSheet1) -> list[Flowable]:
    parts = [
        ["No.", "Part", "Part number", "Notes"],
        ["1", "Electric motor M1", "EM-75-4P", "7.5 kW, 1,450 rpm"],
        ["2", "Hydraulic pump P1", "HP-400-G", "Gear pump, 40 L/min"],
        ["3", "Filter housing and cartridge F1", "FC-10-400", "10 \u00b5m, replace every 500 h"],
        ["4", "Pressure switch S1", "PS-180", "Opens contactor at 180 bar"],
        ["5", "Reservoir T1", "RT-60", "60 L with sight glass"],
        ["6", "Contactor K1", "KC-16", "Coil 24 V DC"],
        ["7", "Relief valve V1", "RV-210", "Factory set 210 bar"],
    ]
    return [
        Paragraph("5. Wiring and parts diagram", styles["Heading1"]),
        Paragraph(
            "The diagram shows the hydraulic circuit (solid lines) and the motor control wiring "
            "(dashed lines). Numbers in circles refer to the parts list below.",
            styles["Body"],
        ),
        Spacer(1, 0.1 * inch),
        pump_diagram(),
        Paragraph("Figure 2. HP-400 wiring and hydraulic schematic.", styles["Caption"]),
        Spacer(1, 0.2 * inch),
        grid_table(parts, [0.45 * inch, 2.2 * inch, 1.25 * inch, 2.2 * inch]),
    ]


def make_pump_manual(path: Path) -> None:
    styles = pdf_styles()
    styles["Cover"].fontSize, styles["Cover"].leading = 26, 32
    story = manual_overview(styles) + [PageBreak()] + manual_procedure(styles) + [PageBreak()] + manual_diagram(styles)
    title = "HP-400 Hydraulic Pump Maintenance Manual"
    build_pdf(path, story, title, "Hydra-Flow GmbH", "Hydra-Flow HP-400 \u2014 Maintenance Manual MM-HP400 Rev. C")


# --------------------------------------------------------------------------- scanned invoice

INVOICE_DPI = 150
INVOICE_SIZE = (int(8.5 * INVOICE_DPI), int(11 * INVOICE_DPI))
INK = (35, 35, 40)


def vera_font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """Bitstream Vera ships with ReportLab, so text rendering does not depend on system fonts."""
    name = "VeraBd.ttf" if bold else "Vera.ttf"
    return ImageFont.truetype(str(Path(reportlab.__file__).parent / "fonts" / name), size)


def invoice_items() -> list[tuple[str, int, float]]:
    return [
        ("Hydraulic hose assembly 1/2in x 2m", 12, 38.50),
        ("Filter cartridge FC-10-400 (10 um)", 24, 21.75),
        ("ISO VG 46 hydraulic oil, 20 L drum", 6, 94.00),
        ("Pressure gauge 0-250 bar, 63 mm", 4, 27.90),
        ("O-ring kit OR-52 (pack of 50)", 2, 18.40),
        ("Technician call-out, 3 hours", 1, 255.00),
    ]


def draw_invoice_header(draw: ImageDraw.ImageDraw) -> None:
    draw.text((110, 110), "NORTHWIND INDUSTRIAL SUPPLY", font=vera_font(34, bold=True), fill=INK)
    small = vera_font(18)
    for i, line in enumerate(
        ["1220 Harbor Road, Cleveland, OH 44114", "Tel (216) 555-0148  |  billing@northwind.example"]
    ):
        draw.text((110, 158 + 26 * i), line, font=small, fill=INK)
    draw.text((880, 110), "INVOICE", font=vera_font(44, bold=True), fill=INK)
    meta = ["Invoice no.: INV-2025-0417", "Date: 14 Aug 2025", "Due date: 13 Sep 2025", "PO: ACME-PO-88213"]
    for i, line in enumerate(meta):
        draw.text((880, 170 + 26 * i), line, font=small, fill=INK)
    draw.line((110, 300, 1165, 300), fill=INK, width=3)
    draw.text((110, 325), "BILL TO", font=vera_font(18, bold=True), fill=INK)
    for i, line in enumerate(["Acme Robotics Inc. - Accounts Payable", "400 Liberty Avenue", "Pittsburgh, PA 15222"]):
        draw.text((110, 355 + 26 * i), line, font=small, fill=INK)


def draw_invoice_items(draw: ImageDraw.ImageDraw) -> float:
    font, bold = vera_font(18), vera_font(18, bold=True)
    columns = (110, 700, 820, 1000)
    top = 480
    draw.rectangle((105, top - 8, 1170, top + 28), outline=INK, width=2)
    for x, head in zip(columns, ("Description", "Qty", "Unit price", "Amount"), strict=True):
        draw.text((x, top), head, font=bold, fill=INK)
    subtotal = 0.0
    for i, (desc, qty, price) in enumerate(invoice_items()):
        y = top + 50 + 40 * i
        amount = qty * price
        subtotal += amount
        for x, text in zip(columns, (desc, str(qty), f"${price:,.2f}", f"${amount:,.2f}"), strict=True):
            draw.text((x, y), text, font=font, fill=INK)
        draw.line((110, y + 30, 1165, y + 30), fill=(150, 150, 150), width=1)
    return subtotal


def draw_invoice_totals(draw: ImageDraw.ImageDraw, subtotal: float) -> None:
    font, bold = vera_font(20), vera_font(24, bold=True)
    tax = round(subtotal * 0.08, 2)
    rows = [("Subtotal", f"${subtotal:,.2f}"), ("Sales tax 8%", f"${tax:,.2f}"), ("Shipping", "$45.00")]
    for i, (label, value) in enumerate(rows):
        draw.text((780, 840 + 34 * i), label, font=font, fill=INK)
        draw.text((1000, 840 + 34 * i), value, font=font, fill=INK)
    draw.line((780, 948, 1165, 948), fill=INK, width=2)
    draw.text((780, 962), "TOTAL DUE", font=bold, fill=INK)
    draw.text((1000, 962), f"${subtotal + tax + 45:,.2f}", font=bold, fill=INK)
    notes = [
        "Payment terms: Net 30. Please quote the invoice number with your payment.",
        "Bank transfer: First Lakes Bank, ABA 041000124, Account 7720 1184 09",
        "Late payments are subject to a 1.5% monthly service charge.",
    ]
    for i, line in enumerate(notes):
        draw.text((110, 1100 + 30 * i), line, font=vera_font(17), fill=INK)
    draw.text((110, 1450), "Thank you for your business!", font=vera_font(22, bold=True), fill=INK)


def draw_paid_stamp(page: Image.Image) -> Image.Image:
    stamp = Image.new("L", (360, 130), 0)
    sd = ImageDraw.Draw(stamp)
    sd.rounded_rectangle((4, 4, 355, 125), radius=14, outline=255, width=8)
    sd.text((180, 66), "RECEIVED", font=vera_font(54, bold=True), fill=255, anchor="mm")
    stamp = stamp.rotate(12, expand=True, resample=Image.Resampling.BICUBIC)
    ink = Image.new("RGB", stamp.size, (170, 45, 50))
    page.paste(ink, (640, 1230), stamp.point(lambda v: int(v * 0.75)))
    return page


def scan_effects(page: Image.Image, rng: np.random.Generator) -> Image.Image:
    page = page.rotate(-0.9, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=(205, 203, 198))
    page = page.filter(ImageFilter.GaussianBlur(0.7))
    pixels = np.asarray(page, dtype=np.float32)
    noise = rng.normal(0.0, 6.0, size=pixels.shape[:2])[..., None]
    shade = np.linspace(1.0, 0.95, pixels.shape[1], dtype=np.float32)[None, :, None]  # uneven lighting
    pixels = (pixels + noise) * shade
    for y, x in rng.integers(0, [pixels.shape[0], pixels.shape[1]], size=(60, 2)):  # dust specks
        pixels[y : y + 2, x : x + 2] = 90
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def make_scanned_invoice(path: Path) -> None:
    page = Image.new("RGB", INVOICE_SIZE, (246, 243, 234))
    draw = ImageDraw.Draw(page)
    draw_invoice_header(draw)
    draw_invoice_totals(draw, draw_invoice_items(draw))
    page = draw_paid_stamp(page)
    page = scan_effects(page, np.random.default_rng(SEED))
    page.save(path, "JPEG", quality=55, dpi=(INVOICE_DPI, INVOICE_DPI), optimize=True)


# --------------------------------------------------------------------------- DOCX memo


def memo_page_one(doc: Document) -> None:
    doc.add_heading("Board memo: Q3 hiring plan", level=0)
    for label, value in [
        ("To", "Board of Directors, Acme Robotics Inc."),
        ("From", "Dana Whitfield, Chief People Officer"),
        ("Date", "1 July 2025"),
        ("Subject", "Q3 2025 hiring plan for approval"),
    ]:
        para = doc.add_paragraph()
        para.add_run(f"{label}: ").bold = True
        para.add_run(value)
    doc.add_heading("Summary", level=1)
    doc.add_paragraph(
        "Management requests approval to hire 46 new employees in the third quarter of 2025. The plan "
        "supports the Forklift-X launch, the opening of the Rotterdam service hub and the growth of "
        "fleet software subscriptions. The fully loaded cost for the remainder of 2025 is $2.9 million, "
        "which is within the budget approved in February."
    )
    doc.add_heading("Hiring priorities", level=1)
    for item in [
        "Robotics engineering: 14 roles for Forklift-X perception and safety certification.",
        "Field service: 12 technicians for the Rotterdam and Columbus service hubs.",
        "Software: 9 engineers for the fleet management platform and customer dashboards.",
        "Manufacturing: 8 assembly and quality roles at the Columbus plant.",
        "Sales: 3 account executives for Germany and the Netherlands.",
    ]:
        doc.add_paragraph(item, style="List Bullet")
    doc.add_paragraph(
        "Recruiting will use two external agencies for the engineering roles; all other roles will be "
        "filled by the internal talent team. Offers are expected to close by mid-September."
    )


def memo_page_two(doc: Document) -> None:
    heading = doc.add_heading("Headcount plan by department", level=1)
    heading.paragraph_format.page_break_before = True  # the memo's second page starts here
    rows = [
        ("Department", "Current", "Q3 hires", "Q3 cost ($k)"),
        ("Robotics engineering", "212", "14", "1,050"),
        ("Field service", "168", "12", "610"),
        ("Software", "134", "9", "720"),
        ("Manufacturing", "391", "8", "330"),
        ("Sales", "57", "3", "190"),
        ("Total", "962", "46", "2,900"),
    ]
    table = doc.add_table(rows=len(rows), cols=len(rows[0]))
    table.style = "Light Grid Accent 1"
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    doc.add_heading("Decision requested", level=1)
    doc.add_paragraph(
        "The board is asked to approve the Q3 hiring plan and the associated budget of $2.9 million. "
        "A progress report on offers accepted and time-to-hire will be presented at the October meeting."
    )
    for step in ["Board approval (15 July)", "Job postings live (22 July)", "Offers closed (15 September)"]:
        doc.add_paragraph(step, style="List Number")


def fix_docx_metadata(doc: Document) -> None:
    props = doc.core_properties
    props.author = props.last_modified_by = "Dana Whitfield"
    props.title = "Board memo: Q3 hiring plan"
    props.subject = "Q3 2025 hiring plan"
    props.created = props.modified = props.last_printed = FIXED_DATETIME
    props.revision = 1
    props.comments = "Sample document generated by scripts/make_sample_data.py"


def write_deterministic_zip(data: bytes, path: Path) -> None:
    """python-docx stamps zip members with the current time; rewrite them with a fixed timestamp."""
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            info = zipfile.ZipInfo(item.filename, date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            dst.writestr(info, src.read(item.filename))


def make_memo(path: Path) -> None:
    doc = Document()
    doc.styles["Normal"].font.name = "Calibri"
    doc.styles["Normal"].font.size = Pt(11)
    memo_page_one(doc)
    memo_page_two(doc)
    fix_docx_metadata(doc)
    buffer = io.BytesIO()
    doc.save(buffer)
    write_deterministic_zip(buffer.getvalue(), path)


# --------------------------------------------------------------------------- eval set


def write_queries(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"query_id": f"q{i}", "query": query, "relevant": [{"document": doc, "page": page}]})
        for i, (query, doc, page) in enumerate(QUERIES, start=1)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inbox", type=Path, default=ROOT / "data" / "inbox", help="Output folder for documents.")
    parser.add_argument(
        "--eval-file",
        type=Path,
        default=ROOT / "data" / "eval" / "queries.jsonl",
        help="Output eval queries file.",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    rl_config.invariant = 1
    args.inbox.mkdir(parents=True, exist_ok=True)
    builders: dict[str, Callable[[Path], None]] = {
        REPORT_PDF: make_annual_report,
        MANUAL_PDF: make_pump_manual,
        INVOICE_IMG: make_scanned_invoice,
        MEMO_DOCX: make_memo,
    }
    for name, build in builders.items():
        build(args.inbox / name)
        print(f"wrote {args.inbox / name} ({(args.inbox / name).stat().st_size / 1024:.1f} KiB)")
    write_queries(args.eval_file)
    print(f"wrote {args.eval_file} ({len(QUERIES)} queries)")


if __name__ == "__main__":
    main()
