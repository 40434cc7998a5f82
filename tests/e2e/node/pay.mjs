// Pays one URL with the official TypeScript client (@x402/fetch + @x402/evm from npm), as a
// Node program would, and prints one JSON line: {status, body, settlement} or {error}.
//
//   X402_PAYER_KEY=0x... node pay.mjs <url> <CAIP-2 network> <token> <rpc url>
//
// The signer reads the chain (allowances, nonces, fees), so the client can sign the
// erc20ApprovalGasSponsoring approval for a payer that has never approved Permit2. The token
// is a local test token: the client's spend controls must be told to allow it.
import { wrapFetchWithPaymentFromConfig, decodePaymentResponseHeader } from "@x402/fetch";
import { ExactEvmScheme, toClientEvmSigner } from "@x402/evm";
import { UptoEvmScheme } from "@x402/evm/upto/client";
import { createPublicClient, http } from "viem";
import { privateKeyToAccount } from "viem/accounts";

const [url, network, asset, rpc] = process.argv.slice(2);
const key = process.env.X402_PAYER_KEY;

async function pay() {
  const account = privateKeyToAccount(key);
  const signer = toClientEvmSigner(account, createPublicClient({ transport: http(rpc) }));
  const fetchWithPayment = wrapFetchWithPaymentFromConfig(fetch, {
    schemes: [
      { network, client: new ExactEvmScheme(signer) },
      { network, client: new UptoEvmScheme(signer) },
    ],
    spendControls: { allowedAssets: [{ network, asset }] },
  });
  const response = await fetchWithPayment(url, { method: "GET" });
  const receipt = response.headers.get("PAYMENT-RESPONSE");
  return {
    status: response.status,
    body: await response.text(),
    settlement: receipt ? decodePaymentResponseHeader(receipt) : null,
  };
}

pay().then(
  (result) => console.log(JSON.stringify(result)),
  (error) => {
    console.log(JSON.stringify({ error: `${error && error.name}: ${error && error.message}` }));
    process.exitCode = 1;
  },
);
