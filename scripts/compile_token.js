#!/usr/bin/env node
// Compiles the demo's contracts (gateway/demo/contracts/*.sol) with solc-js into the JSON
// artifacts the gateway ships, so the demo and the tests never need a compiler at run time.
// Deterministic: a pinned compiler (package.json), fixed settings and no metadata hash, so
// `--check` can prove the shipped artifacts are exactly what the sources compile to.
//   node scripts/compile_token.js           write the artifacts
//   node scripts/compile_token.js --check   exit 1 if a shipped artifact differs
//   node scripts/compile_token.js --out DIR write the artifacts into DIR instead
'use strict';

const fs = require('fs');
const path = require('path');
const solc = require('solc');

const ROOT = path.resolve(__dirname, '..');
const CONTRACTS = path.join(ROOT, 'gateway', 'demo', 'contracts');
const NODE_MODULES = path.join(ROOT, 'node_modules');
const TARGETS = ['TestUSDC', 'Multicall3', 'TestUSDT'];

const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: 'cancun',
  metadata: { bytecodeHash: 'none', appendCBOR: false },
  outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
};

function findImport(importPath) {
  // Only the npm packages: a contract cannot pull files from anywhere else on the disk.
  const resolved = path.resolve(NODE_MODULES, importPath);
  if (!resolved.startsWith(NODE_MODULES + path.sep)) {
    return { error: `import outside node_modules: ${importPath}` };
  }
  try {
    return { contents: fs.readFileSync(resolved, 'utf8') };
  } catch (err) {
    return { error: `cannot read ${importPath}: ${err.message} (run make setup)` };
  }
}

function compile() {
  const sources = {};
  for (const name of TARGETS) {
    sources[`${name}.sol`] = { content: fs.readFileSync(path.join(CONTRACTS, `${name}.sol`), 'utf8') };
  }
  const input = { language: 'Solidity', sources, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));
  const errors = (output.errors || []).filter((e) => e.severity === 'error');
  for (const e of output.errors || []) process.stderr.write(e.formattedMessage + '\n');
  if (errors.length) throw new Error(`solc failed with ${errors.length} error(s)`);

  const compiler = { name: 'solc-js', version: solc.version(), settings: {
    optimizer: SETTINGS.optimizer, evmVersion: SETTINGS.evmVersion, metadata: SETTINGS.metadata,
  } };
  const artifacts = {};
  for (const name of TARGETS) {
    const c = output.contracts[`${name}.sol`][name];
    artifacts[name] = {
      contractName: name,
      abi: c.abi,
      bytecode: '0x' + c.evm.bytecode.object,
      deployedBytecode: '0x' + c.evm.deployedBytecode.object,
      compiler,
    };
  }
  return artifacts;
}

function main(argv) {
  const check = argv.includes('--check');
  const outIdx = argv.indexOf('--out');
  const outDir = outIdx >= 0 ? path.resolve(argv[outIdx + 1]) : CONTRACTS;
  const artifacts = compile();
  let stale = [];
  for (const [name, artifact] of Object.entries(artifacts)) {
    const file = path.join(outDir, `${name}.json`);
    const text = JSON.stringify(artifact, null, 2) + '\n';
    if (check) {
      const shipped = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
      if (shipped !== text) stale.push(path.relative(ROOT, file));
    } else {
      fs.mkdirSync(outDir, { recursive: true });
      fs.writeFileSync(file, text);
      process.stdout.write(`wrote ${path.relative(ROOT, file)} (${(artifact.bytecode.length - 2) / 2} bytes)\n`);
    }
  }
  if (stale.length) {
    process.stderr.write(`stale artifacts (run node scripts/compile_token.js): ${stale.join(', ')}\n`);
    return 1;
  }
  if (check) process.stdout.write('artifacts match the sources\n');
  return 0;
}

process.exitCode = main(process.argv.slice(2));
