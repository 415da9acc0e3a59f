"""StreamEvents' event_types filter: every stored event type is known, anything else is refused by name."""

from __future__ import annotations

import pytest
from leeway.application.audit_log import check_event_types, event_types
from leeway.domain.errors import InvalidArgument


def test_every_stored_event_type_is_known_and_no_base_class_is() -> None:
    known = event_types()
    assert {"Budget.ActionRecorded", "Budget.PeriodRolledOver", "TeamLedger.CapSet", "CustomerLedger.ActionNoted",
            "OrgLimits.CustomerCapSet", "HoldBook.HoldOpened", "RequestRecord.Recorded", "Directory.BudgetListed",
            "TeamRoster.MemberAdded"} <= known
    assert not [name for name in known if name.endswith(".Event")]


@pytest.mark.parametrize(
    ("types", "bad"),
    [
        pytest.param((), [], id="no filter"),
        pytest.param(("Budget.ActionRecorded", "Budget.ActionApproved"), [], id="known types"),
        pytest.param(("ActionRecorded",), ["event_types[0]"], id="without the aggregate"),
        pytest.param(("budget.actionrecorded",), ["event_types[0]"], id="another case"),
        pytest.param(("Budget.ActionRecorded", "Budget.Nope", "Budget.Event"), ["event_types[1]", "event_types[2]"],
                     id="each unknown one, by index"),
    ],
)
def test_check_event_types(types: tuple[str, ...], bad: list[str]) -> None:
    if not bad:
        check_event_types(types)
        return
    with pytest.raises(InvalidArgument) as caught:
        check_event_types(types)
    assert [v.field for v in caught.value.violations] == bad
    assert all("unknown event type" in v.description for v in caught.value.violations)
