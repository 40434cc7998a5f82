// The TypeScript SDK's own SIWX client (@x402/extensions `wrapFetchWithSIWx`, a viem account)
// signing in to a gateway route it has paid for: `node siwx_fetch.mjs URL COUNT` with the
// payer's key in X402_PAYER_KEY. Prints one JSON line: the statuses, the payers the origin saw,
// and whether any answer carried a payment receipt.
import { wrapFetchWithSIWx } from "@x402/extensions/sign-in-with-x";
import { privateKeyToAccount } from "viem/accounts";

const [url, countText] = process.argv.slice(2);
const account = privateKeyToAccount(process.env.X402_PAYER_KEY);
const signedFetch = wrapFetchWithSIWx(fetch, account);
const statuses = [];
const payers = [];
let receipts = 0;
for (let i = 0; i < Number(countText); i++) {
  const response = await signedFetch(url);
  statuses.push(response.status);
  if (response.headers.get("PAYMENT-RESPONSE")) receipts += 1;
  const body = await response.text();
  if (response.status === 200) payers.push(JSON.parse(body).payer);
}
console.log(JSON.stringify({ address: account.address, statuses, payers, receipts }));
