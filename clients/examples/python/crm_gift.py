"""CRM integration example (Python): after a complaint, the agent sends flowers from their own Leeway budget,
and when the customer comes back happy, documents the win.

    python crm_gift.py send EMPLOYEE CUSTOMER CASE AMOUNT [CURRENCY]
    python crm_gift.py win ACTION_ID STORY [CUSTOMER_QUOTE]

The CRM calls Leeway as a service account (LEEWAY_API_KEY, role crm) on behalf of the employee; without a key
it calls a server running without authentication. LEEWAY_TARGET is HOST:PORT (default 127.0.0.1:50051).
Exit status: 0 done (sent, waiting for approval, or win documented), 3 refused (the reason is shown to the
employee), 1 other errors, 2 usage.
"""

from __future__ import annotations

import os
import sys
from decimal import Decimal

from leeway_client import FailedPreconditionError, GiftDetails, LeewayClient, LeewayError, from_money

#: What the employee sees for each refusal reason (ErrorInfo.reason); anything else shows the server's message.
MESSAGES = {
    "BUDGET_EXHAUSTED": "Your goodwill budget for this period is used up. Ask your supervisor, or try a smaller gesture.",
    "PER_ACTION_LIMIT_EXCEEDED": "This is above what you may decide alone.",
    "PER_CUSTOMER_LIMIT_EXCEEDED": "You have already given this customer as much as you may this period.",
    "CUSTOMER_CAP_EXCEEDED": "This customer has received the most goodwill the company allows this period.",
    "TEAM_CAP_EXCEEDED": "Your team's goodwill budget for this period is used up.",
    "KIND_NOT_ALLOWED": "Gifts are not part of your playing field.",
    "BUDGET_CLOSED": "Your Leeway budget is closed.",
}


def send_flowers(leeway: LeewayClient, employee: str, customer: str, case: str, amount: Decimal, currency: str) -> int:
    try:
        result = leeway.record_action(
            employee,
            customer,
            amount,
            currency,
            GiftDetails(gift_type="flowers", note="We are sorry - thank you for your patience."),
            reason=f"Complaint in case {case}",
            case_id=case,
            request_id=f"crm-{case}-flowers",  # one gift per case, however often the button is pressed
        )
    except FailedPreconditionError as refusal:
        print(f"Not sent: {MESSAGES.get(refusal.reason, refusal.message)} [{refusal.reason}]")
        return 3
    action, budget = result.action, result.budget
    if action.state == action.STATE_PENDING_APPROVAL:
        print(f"Waiting for approval by {', '.join(action.approver_ids) or action.approver_role}: {action.action_id}")
    else:
        print(f"Sent flowers ({from_money(action.amount)} {currency}); {from_money(budget.remaining)} {currency} left: {action.action_id}")
    return 0


def document_win(leeway: LeewayClient, action_id: str, story: str, quote: str) -> int:
    try:
        action = leeway.document_win(action_id, story, customer_quote=quote, outcome="customer came back happy")
    except FailedPreconditionError as refusal:
        print(f"Not documented: {refusal.message} [{refusal.reason}]")
        return 3
    print(f"Win documented for {action.employee_id}: {action.win.story}")
    return 0


def main(argv: list[str]) -> int:
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    if not ((command == "send" and len(args) in (4, 5)) or (command == "win" and len(args) in (2, 3))):
        print(__doc__, file=sys.stderr)
        return 2
    target = os.environ.get("LEEWAY_TARGET", "127.0.0.1:50051")
    try:
        with LeewayClient(target, api_key=os.environ.get("LEEWAY_API_KEY") or None) as leeway:
            if command == "win":
                return document_win(leeway, args[0], args[1], args[2] if len(args) == 3 else "")
            employee, customer, case, amount = args[:4]
            currency = args[4] if len(args) == 5 else "EUR"
            return send_flowers(leeway, employee, customer, case, Decimal(amount), currency)
    except LeewayError as error:
        print(f"Leeway could not be asked: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
