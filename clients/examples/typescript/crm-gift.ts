// CRM integration example (TypeScript): after a complaint, the agent sends flowers from their own Leeway budget.
//
//   node crm-gift.js EMPLOYEE CUSTOMER CASE AMOUNT [CURRENCY]
//
// The CRM calls Leeway as a service account (LEEWAY_API_KEY, role crm) on behalf of the employee; without a
// key it calls a server running without authentication. LEEWAY_TARGET is HOST:PORT (default 127.0.0.1:50051).
// Exit status: 0 sent (or waiting for approval), 3 refused (the reason is shown to the employee), 1 other errors.
import { Action_State, fromMoney, LeewayClient, LeewayError } from "../../typescript/dist/index.js";

// What the employee sees for each refusal reason (ErrorInfo.reason); anything else shows the server's message.
const MESSAGES: Record<string, string> = {
  BUDGET_EXHAUSTED: "Your goodwill budget for this period is used up. Ask your supervisor, or try a smaller gesture.",
  PER_ACTION_LIMIT_EXCEEDED: "This is above what you may decide alone.",
  PER_CUSTOMER_LIMIT_EXCEEDED: "You have already given this customer as much as you may this period.",
  CUSTOMER_CAP_EXCEEDED: "This customer has received the most goodwill the company allows this period.",
  TEAM_CAP_EXCEEDED: "Your team's goodwill budget for this period is used up.",
  KIND_NOT_ALLOWED: "Gifts are not part of your playing field.",
  BUDGET_CLOSED: "Your Leeway budget is closed.",
};

export async function sendFlowers(
  leeway: LeewayClient,
  employee: string,
  customer: string,
  caseId: string,
  amount: string,
  currency: string,
): Promise<number> {
  try {
    const { action, budget } = await leeway.recordAction(
      employee,
      customer,
      amount,
      currency,
      { gift: { giftType: "flowers", note: "We are sorry - thank you for your patience." } },
      // One gift per case, however often the button is pressed.
      { reason: `Complaint in case ${caseId}`, caseId, requestId: `crm-${caseId}-flowers` },
    );
    if (action!.state === Action_State.PENDING_APPROVAL) {
      console.log(`Waiting for approval by ${action!.approverIds.join(", ") || action!.approverRole}: ${action!.actionId}`);
    } else {
      console.log(`Sent flowers (${fromMoney(action!.amount)} ${currency}); ${fromMoney(budget!.remaining)} ${currency} left: ${action!.actionId}`);
    }
    return 0;
  } catch (error) {
    if (error instanceof LeewayError && error.code === "FAILED_PRECONDITION") {
      console.log(`Not sent: ${MESSAGES[error.reason] ?? error.message} [${error.reason}]`);
      return 3;
    }
    throw error;
  }
}

async function main(args: string[]): Promise<number> {
  if (args.length !== 4 && args.length !== 5) {
    console.error("usage: crm-gift EMPLOYEE CUSTOMER CASE AMOUNT [CURRENCY]");
    return 2;
  }
  const [employee, customer, caseId, amount, currency = "EUR"] = args;
  const leeway = new LeewayClient(process.env.LEEWAY_TARGET ?? "127.0.0.1:50051", {
    apiKey: process.env.LEEWAY_API_KEY || undefined,
  });
  try {
    return await sendFlowers(leeway, employee, customer, caseId, amount, currency);
  } catch (error) {
    console.error(`Leeway could not be asked: ${error}`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
