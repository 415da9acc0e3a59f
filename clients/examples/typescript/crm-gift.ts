// CRM integration example (TypeScript): after a complaint, the agent sends flowers from their own Leeway budget,
// and when the customer comes back happy, documents the win.
//
//   node crm-gift.js send EMPLOYEE CUSTOMER CASE AMOUNT [CURRENCY]
//   node crm-gift.js win ACTION_ID STORY [CUSTOMER_QUOTE]
//
// The CRM calls Leeway as a service account (LEEWAY_API_KEY, role crm) on behalf of the employee; without a
// key it calls a server running without authentication. LEEWAY_TARGET is HOST:PORT (default 127.0.0.1:50051).
// Exit status: 0 done (sent, waiting for approval, or win documented), 3 refused (the reason is shown to the
// employee), 1 other errors, 2 usage.
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

export async function documentWin(leeway: LeewayClient, actionId: string, story: string, quote: string): Promise<number> {
  try {
    const action = await leeway.documentWin(actionId, story, { customerQuote: quote, outcome: "customer came back happy" });
    console.log(`Win documented for ${action.employeeId}: ${action.win!.story}`);
    return 0;
  } catch (error) {
    if (error instanceof LeewayError && error.code === "FAILED_PRECONDITION") {
      console.log(`Not documented: ${error.message} [${error.reason}]`);
      return 3;
    }
    throw error;
  }
}

async function main(argv: string[]): Promise<number> {
  const [command, ...args] = argv;
  const sending = command === "send" && (args.length === 4 || args.length === 5);
  const winning = command === "win" && (args.length === 2 || args.length === 3);
  if (!sending && !winning) {
    console.error("usage: crm-gift send EMPLOYEE CUSTOMER CASE AMOUNT [CURRENCY] | crm-gift win ACTION_ID STORY [QUOTE]");
    return 2;
  }
  const leeway = new LeewayClient(process.env.LEEWAY_TARGET ?? "127.0.0.1:50051", {
    apiKey: process.env.LEEWAY_API_KEY || undefined,
  });
  try {
    if (winning) {
      return await documentWin(leeway, args[0], args[1], args[2] ?? "");
    }
    const [employee, customer, caseId, amount, currency = "EUR"] = args;
    return await sendFlowers(leeway, employee, customer, caseId, amount, currency);
  } catch (error) {
    console.error(`Leeway could not be asked: ${error}`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
