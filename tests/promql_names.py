"""The metric names a PromQL expression reads (for tests/deploy and tests/e2e: a dashboard or an alert rule that
names a metric nobody exports fails a test instead of showing an empty panel).

A small reading of PromQL, enough for the expressions we write: strings, label matchers ``{...}``, range and
offset durations ``[...]``, grouping lists (``by``/``without``/``on``/``ignoring``/``group_left``/``group_right``
``(...)``) and Grafana variables (``$job``, ``$__rate_interval``) are removed; what is left that looks like an
identifier, is not a keyword and is not called like a function, is a metric name."""

from __future__ import annotations

import re

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
            "inf", "nan", "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk",
            "quantile", "count_values", "limitk", "limit_ratio"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_OFFSET = re.compile(r"\boffset\s+-?\d+[smhdwy]\b")
_IDENTIFIER = re.compile(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_NUMBER_UNIT = re.compile(r"\b\d+(\.\d+)?(e[+-]?\d+)?\b")


def metric_names(expr: str) -> set[str]:
    text = _VARIABLE.sub(" ", _STRING.sub('""', expr))
    text = _BRACKETS.sub(" ", _BRACES.sub(" ", text))
    text = _OFFSET.sub(" ", _GROUPING.sub(" ", text))
    text = _NUMBER_UNIT.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names
