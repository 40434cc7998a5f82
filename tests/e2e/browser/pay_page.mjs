// The paying page for tests/e2e/test_edge_browser.py, bundled for the browser by esbuild
// (tests/e2e/browser_parts.py). It pays with @x402/fetch + @x402/evm exactly as a web app
// would, from the page's own origin, and leaves what happened in `window.x402Result`.
//
// window.X402_TEST (set by the page) = {url, key, network, asset}: the paid URL, an anvil test
// account's key, and the test USDC, which the client's spend controls must be told to allow
// (it is no default asset of the SDK).
import { wrapFetchWithPaymentFromConfig, decodePaymentResponseHeader } from "@x402/fetch";
import { ExactEvmScheme } from "@x402/evm";
import { privateKeyToAccount } from "viem/accounts";

async function pay(config) {
  const account = privateKeyToAccount(config.key);
  const fetchWithPayment = wrapFetchWithPaymentFromConfig(fetch, {
    schemes: [{ network: config.network, client: new ExactEvmScheme(account) }],
    spendControls: { allowedAssets: [{ network: config.network, asset: config.asset }] },
  });
  const response = await fetchWithPayment(config.url, { method: "GET" });
  const receipt = response.headers.get("PAYMENT-RESPONSE");
  return {
    ok: true,
    payer: account.address,
    status: response.status,
    body: await response.text(),
    settlement: receipt ? decodePaymentResponseHeader(receipt) : null,
  };
}

function done(result) {
  window.x402Result = result;
  document.getElementById("result").textContent = JSON.stringify(result);
}

pay(window.X402_TEST).then(done, (error) =>
  done({ ok: false, error: `${error && error.name}: ${error && error.message}` }),
);
