"""``leeway report``: one self-contained HTML file for managers (flower stats, spend, rates over time, budget
use, team caps, wins, goodwill spread), read through the application and its read models like the service reads
them (``data.py``), drawn as Vega-Lite charts rendered to inline SVG (``charts.py``) and put on one page
(``page.py``)."""
