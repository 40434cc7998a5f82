#!/usr/bin/env node
// Compiles the x402 contracts the demo chain needs into JSON artifacts in gateway/demo/contracts:
//  - Permit2, Uniswap's published sources as the npm package @uniswap/v4-periphery ships them
//    (lib/permit2, MIT), with Permit2's own settings: solc 0.8.17, via-IR, 1,000,000 runs;
//  - this repository's stand-ins for the x402 Permit2 proxies, batch settlement and its deposit
//    collectors (gateway/demo/contracts/*.sol, see README.md there), and no upstream code.
// Deterministic (pinned compilers in package.json, fixed settings, no metadata hash), so
// `--check` proves the shipped artifacts are exactly what the sources compile to.
//   node scripts/compile_x402.js           write the artifacts
//   node scripts/compile_x402.js --check   exit 1 if a shipped artifact differs
//   node scripts/compile_x402.js --out DIR write the artifacts into DIR instead
'use strict';

const fs = require('fs');
const path = require('path');

const ROOT = path.resolve(__dirname, '..');
const CONTRACTS = path.join(ROOT, 'gateway', 'demo', 'contracts');
const NODE_MODULES = path.join(ROOT, 'node_modules');
const PERIPHERY = '@uniswap/v4-periphery';
const PERMIT2_ROOT = path.join(NODE_MODULES, PERIPHERY, 'lib', 'permit2');

const OUTPUT = ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object',
  'evm.deployedBytecode.immutableReferences'];

function packageVersion(name) {
  return JSON.parse(fs.readFileSync(path.join(NODE_MODULES, name, 'package.json'), 'utf8')).version;
}

function walk(dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(path.join(dir, e.name)) : [path.join(dir, e.name)]);
}

function importer(base) {
  // Only files under `base`: a contract cannot pull files from anywhere else on the disk.
  return (importPath) => {
    const resolved = path.resolve(base, importPath);
    if (!resolved.startsWith(base + path.sep)) return { error: `import outside ${base}: ${importPath}` };
    try {
      return { contents: fs.readFileSync(resolved, 'utf8') };
    } catch (err) {
      return { error: `cannot read ${importPath}: ${err.message} (run make setup)` };
    }
  };
}

// Each group is one compiler run: a compiler, its settings, its sources, the contracts to keep.
const GROUPS = [
  {
    solc: 'solc-0.8.17',
    base: PERMIT2_ROOT,
    sources: () => walk(path.join(PERMIT2_ROOT, 'src')).filter((f) => f.endsWith('.sol'))
      .map((f) => path.relative(PERMIT2_ROOT, f)),
    readSource: (name) => fs.readFileSync(path.join(PERMIT2_ROOT, name), 'utf8'),
    // Permit2's foundry.toml: solc 0.8.17, via_ir, optimizer_runs 1000000, bytecode_hash none.
    settings: {
      optimizer: { enabled: true, runs: 1000000 },
      viaIR: true,
      evmVersion: 'london',
      metadata: { bytecodeHash: 'none' },
      remappings: ['solmate/=lib/solmate/'],
    },
    contracts: [['src/Permit2.sol', 'Permit2']],
    origin: () => ({
      package: `${PERIPHERY}@${packageVersion(PERIPHERY)}`,
      path: 'lib/permit2/src/Permit2.sol',
      upstream: 'Uniswap/permit2 (src/)',
      license: 'MIT',
    }),
  },
  {
    solc: 'solc',
    base: NODE_MODULES,
    sources: () => ['Permit2Witness.sol', 'ExactPermit2Proxy.sol', 'UptoPermit2Proxy.sol',
      'BatchSettlement.sol', 'DepositCollectors.sol'],
    readSource: (name) => fs.readFileSync(path.join(CONTRACTS, name), 'utf8'),
    settings: {
      optimizer: { enabled: true, runs: 200 },
      viaIR: true,
      evmVersion: 'cancun',
      metadata: { bytecodeHash: 'none', appendCBOR: false },
    },
    contracts: [
      ['ExactPermit2Proxy.sol', 'ExactPermit2Proxy'],
      ['UptoPermit2Proxy.sol', 'UptoPermit2Proxy'],
      ['BatchSettlement.sol', 'BatchSettlement'],
      ['DepositCollectors.sol', 'ERC3009DepositCollector'],
      ['DepositCollectors.sol', 'Permit2DepositCollector'],
    ],
    origin: () => ({
      repository: 'this repository (stand-ins written from the x402 SDK interface)',
      path: 'gateway/demo/contracts',
      imports: [`${PERIPHERY}@${packageVersion(PERIPHERY)}`,
        `@openzeppelin/contracts@${packageVersion('@openzeppelin/contracts')}`],
      license: 'Apache-2.0',
    }),
  },
];

function immutableNames(ast, ids) {
  // immutableReferences are keyed by AST node id: name them, so the loader can fill them in.
  const names = {};
  const visit = (node) => {
    if (!node || typeof node !== 'object') return;
    if (node.nodeType === 'VariableDeclaration' && ids.has(String(node.id))) names[node.id] = node.name;
    for (const value of Object.values(node)) {
      if (Array.isArray(value)) value.forEach(visit);
      else if (value && typeof value === 'object') visit(value);
    }
  };
  visit(ast);
  return names;
}

function compileGroup(group) {
  const solc = require(group.solc);
  const sources = {};
  for (const name of group.sources()) sources[name] = { content: group.readSource(name) };
  const selection = { '*': { '': ['ast'] } };
  for (const [file, name] of group.contracts) {
    selection[file] = selection[file] || { '': ['ast'] };
    selection[file][name] = OUTPUT;
  }
  const input = { language: 'Solidity', sources, settings: { ...group.settings, outputSelection: selection } };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: importer(group.base) }));
  const errors = (output.errors || []).filter((e) => e.severity === 'error');
  for (const e of errors) process.stderr.write(e.formattedMessage + '\n');
  if (errors.length) throw new Error(`${group.solc} failed with ${errors.length} error(s)`);
  const compiler = { name: 'solc-js', npm: group.solc, version: solc.version(), settings: group.settings };
  const artifacts = {};
  for (const [file, name] of group.contracts) {
    const c = output.contracts[file][name];
    const refs = c.evm.deployedBytecode.immutableReferences || {};
    artifacts[name] = {
      contractName: name,
      source: { ...group.origin(), file },
      abi: c.abi,
      bytecode: '0x' + c.evm.bytecode.object,
      deployedBytecode: '0x' + c.evm.deployedBytecode.object,
      immutableReferences: refs,
      immutableNames: immutableNames(Object.values(output.sources).map((s) => s.ast), new Set(Object.keys(refs))),
      compiler,
    };
  }
  return artifacts;
}

function main(argv) {
  const check = argv.includes('--check');
  const outIdx = argv.indexOf('--out');
  const outDir = outIdx >= 0 ? path.resolve(argv[outIdx + 1]) : CONTRACTS;
  const stale = [];
  for (const group of GROUPS) {
    for (const [name, artifact] of Object.entries(compileGroup(group))) {
      const file = path.join(outDir, `${name}.json`);
      const text = JSON.stringify(artifact, null, 2) + '\n';
      if (check) {
        const shipped = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
        if (shipped !== text) stale.push(path.relative(ROOT, file));
      } else {
        fs.mkdirSync(outDir, { recursive: true });
        fs.writeFileSync(file, text);
        process.stdout.write(`wrote ${path.relative(ROOT, file)} (${(artifact.deployedBytecode.length - 2) / 2} bytes of code)\n`);
      }
    }
  }
  if (stale.length) {
    process.stderr.write(`stale artifacts (run node scripts/compile_x402.js): ${stale.join(', ')}\n`);
    return 1;
  }
  if (check) process.stdout.write('artifacts match the sources\n');
  return 0;
}

process.exitCode = main(process.argv.slice(2));
