// Makes N paid calls through one payment channel with the official TypeScript client
// (@x402/fetch + the batch-settlement client of @x402/evm from npm), as a Node program would,
// and prints one JSON line: {statuses, transactions, payers} or {error}.
//
//   X402_PAYER_KEY=0x... node channel.mjs <url prefix> <calls> <CAIP-2 network> <token> <rpc url>
//
// Only the batch-settlement scheme is registered, so the client pays the route's channel
// offer (one deposit, then a voucher per call). The signer reads the chain (channel recovery).
// The token is a local test token: the client's spend controls must be told to allow it.
import { wrapFetchWithPaymentFromConfig, decodePaymentResponseHeader } from "@x402/fetch";
import { toClientEvmSigner } from "@x402/evm";
import { BatchSettlementEvmScheme } from "@x402/evm/batch-settlement/client";
import { createPublicClient, http } from "viem";
import { privateKeyToAccount } from "viem/accounts";

const [prefix, calls, network, asset, rpc] = process.argv.slice(2);
const key = process.env.X402_PAYER_KEY;

async function run() {
  const account = privateKeyToAccount(key);
  const signer = toClientEvmSigner(account, createPublicClient({ transport: http(rpc) }));
  const fetchWithPayment = wrapFetchWithPaymentFromConfig(fetch, {
    schemes: [{ network, client: new BatchSettlementEvmScheme(signer) }],
    spendControls: { allowedAssets: [{ network, asset }] },
  });
  const statuses = [];
  const transactions = [];
  const payers = [];
  for (let i = 0; i < Number(calls); i++) {
    const response = await fetchWithPayment(`${prefix}${i}`, { method: "GET" });
    statuses.push(response.status);
    const receipt = response.headers.get("PAYMENT-RESPONSE");
    transactions.push(receipt ? decodePaymentResponseHeader(receipt).transaction : null);
    const body = await response.text();
    payers.push(response.status === 200 ? JSON.parse(body).payer : body.slice(0, 300));
  }
  return { statuses, transactions, payers };
}

run().then(
  (result) => console.log(JSON.stringify(result)),
  (error) => {
    console.log(JSON.stringify({ error: `${error && error.name}: ${error && error.message}` }));
    process.exitCode = 1;
  },
);
