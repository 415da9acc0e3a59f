"""leeway.domain.customers: how a customer id becomes its key, and which stored ids are older spellings of it."""

from __future__ import annotations

import pytest
from leeway.domain.customers import CustomerIdForm, customer_key, spellings_in

CASEFOLD, TRIM, EXACT = CustomerIdForm.CASEFOLD, CustomerIdForm.TRIM, CustomerIdForm.EXACT


@pytest.mark.parametrize(
    ("raw", "form", "key"),
    [
        pytest.param("guest-42", CASEFOLD, "guest-42", id="a key is its own key"),
        pytest.param("GUEST-42", CASEFOLD, "guest-42", id="case-folded"),
        pytest.param("  Guest-42\t", CASEFOLD, "guest-42", id="trimmed, then case-folded"),
        pytest.param("  GUEST-42 ", TRIM, "GUEST-42", id="trim only (case-sensitive CRM ids)"),
        pytest.param("001D000000IRFma", TRIM, "001D000000IRFma", id="a Salesforce id keeps its case"),
        pytest.param(" GUEST-42 ", EXACT, " GUEST-42 ", id="exact: as sent (validation refuses the spaces)"),
        pytest.param("stra\u00dfe", CASEFOLD, "stra\u00dfe", id="not an id: left for validation, not folded to ss"),
        pytest.param("\u212aelvin", CASEFOLD, "\u212aelvin", id="the Kelvin sign is not folded into a valid k"),
        pytest.param("", CASEFOLD, "", id="empty"),
        pytest.param("a b", CASEFOLD, "a b", id="inner spaces are not an id"),
        pytest.param("X@Y.COM", CASEFOLD, "x@y.com", id="e-mail-like ids"),
    ],
)
def test_customer_key(raw: str, form: CustomerIdForm, key: str) -> None:
    assert customer_key(raw, form) == key


def test_the_default_form_is_casefold() -> None:
    assert customer_key(" GUEST-42 ") == "guest-42"


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        (CASEFOLD, ("GUEST-42", "Guest-42")),
        (TRIM, ()),
        (EXACT, ()),
    ],
)
def test_spellings_in(form: CustomerIdForm, expected: tuple[str, ...]) -> None:
    stored = ["guest-42", "GUEST-42", "Guest-42", "guest-43", "GUEST-43"]
    assert spellings_in(stored, "guest-42", form) == expected
