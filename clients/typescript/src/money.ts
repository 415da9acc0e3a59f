// Exact money: decimal strings in, google.type.Money on the wire, decimal strings out. Never a float.
import { create } from "@bufbuild/protobuf";
import { type Money, MoneySchema } from "./gen/google/type/money_pb.js";

const DECIMAL = /^([+-]?)(\d+)(?:\.(\d{1,9}))?$/;

/** "12.50" + "EUR" -> google.type.Money. Amounts are strings or bigints; numbers (floats) are refused. */
export function toMoney(amount: string | bigint, currencyCode: string): Money {
  if (typeof amount === "bigint") {
    return create(MoneySchema, { currencyCode, units: amount, nanos: 0 });
  }
  if (typeof amount !== "string") {
    throw new TypeError("amounts are decimal strings (e.g. \"12.50\") or bigints, never numbers");
  }
  const match = DECIMAL.exec(amount.trim());
  if (match === null) {
    throw new RangeError(`not a decimal amount with at most 9 decimal places: ${JSON.stringify(amount)}`);
  }
  const [, sign, whole, fraction = ""] = match;
  const negative = sign === "-";
  const units = BigInt(whole) * (negative ? -1n : 1n);
  const nanos = Number(fraction.padEnd(9, "0")) * (negative ? -1 : 1);
  return create(MoneySchema, { currencyCode, units, nanos });
}

/** google.type.Money -> "12.5" (no trailing zeros; "0" for zero). */
export function fromMoney(money: Pick<Money, "units" | "nanos"> | undefined): string {
  if (money === undefined) {
    return "0";
  }
  const negative = money.units < 0n || money.nanos < 0;
  const units = money.units < 0n ? -money.units : money.units;
  const nanos = Math.abs(money.nanos);
  const fraction = nanos === 0 ? "" : "." + String(nanos).padStart(9, "0").replace(/0+$/, "");
  const text = `${units}${fraction}`;
  return negative && text !== "0" ? `-${text}` : text;
}
